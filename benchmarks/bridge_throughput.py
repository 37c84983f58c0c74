"""Simulator steps/s of robot_sim_node (rgb + depth over DDS) vs the same backend stepped in-process.

Closed loop, as a controller would drive it: a driver node subscribes to the rgb, depth and
odometry topics and answers every odometry message with the next action (a turn, which always
succeeds, so a stepped period is one whose odometry shows a turn rate; periods without a fresh
action republish the last frame and are not counted). The node runs with rate_hz far above what
it can reach, so it steps as fast as it can. One run per resolution, ratio printed.

    .venv/bin/python benchmarks/bridge_throughput.py --sizes 64 128 --seconds 15
"""
import argparse
import os
import sys
import time

os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(10 + os.getpid() % 90))

import rclpy  # noqa: E402
from llm_teacher_common.node import make_executor  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Int32  # noqa: E402

from habitat_bridge.embodied.miniworld_backend import MiniWorldBackend  # noqa: E402
from llm_teacher_common.launch_runner import LaunchRunner, NodeSpec  # noqa: E402

TURN_LEFT = 0


def in_process(env: str, size: int, seconds: float) -> float:
    sim = MiniWorldBackend(env, size, size)
    sim.reset(seed=0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sim.step(TURN_LEFT)
        steps += 1
    rate = steps / (time.perf_counter() - start)
    sim.close()
    return rate


def over_dds(env: str, size: int, seconds: float) -> float:
    spec = NodeSpec('habitat_bridge', 'robot_sim_node', 'robot_sim_node',
                    parameters=[{'env': env, 'width': size, 'height': size, 'rate_hz': 2000.0}])
    with LaunchRunner([spec], log=lambda line: None):
        rclpy.init()
        node = rclpy.create_node('benchmark_driver')
        action = node.create_publisher(Int32, 'action', 10)
        counts = {'stepped': 0, 'rgb': 0, 'depth': 0}

        def on_odom(msg: Odometry):
            counts['stepped'] += msg.twist.twist.angular.z != 0.0
            action.publish(Int32(data=TURN_LEFT))

        node.create_subscription(Odometry, 'odom', on_odom, 10)
        node.create_subscription(Image, 'camera/image_raw', lambda m: counts.__setitem__('rgb', counts['rgb'] + 1), 2)
        node.create_subscription(Image, 'camera/depth/image_raw',
                                 lambda m: counts.__setitem__('depth', counts['depth'] + 1), 2)
        executor = make_executor(node.context)
        executor.add_node(node)
        deadline = time.monotonic() + 60
        while counts['stepped'] < 20 or counts['depth'] < 20:  # warm up: discovery done, images flowing
            executor.spin_once(timeout_sec=0.1)
            if time.monotonic() > deadline:
                sys.exit('benchmark: robot_sim_node did not step within 60 s')
        first, start = dict(counts), time.perf_counter()
        while time.perf_counter() - start < seconds:
            executor.spin_once(timeout_sec=0.1)
        elapsed = time.perf_counter() - start
        rate = (counts['stepped'] - first['stepped']) / elapsed
        images = (counts['depth'] - first['depth']) / elapsed
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown()
    print(f'  ({images:.0f} depth images/s received by the driver)')
    return rate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--env', default='MiniWorld-GoToObject-v0')
    parser.add_argument('--sizes', type=int, nargs='+', default=[64, 128])
    parser.add_argument('--seconds', type=float, default=15.0)
    args = parser.parse_args()
    for size in args.sizes:
        local = in_process(args.env, size, args.seconds)
        bridge = over_dds(args.env, size, args.seconds)
        print(f'{args.env} {size}x{size} rgb+depth: in-process {local:6.0f} steps/s, '
              f'bridge node {bridge:6.0f} steps/s, ratio {bridge / local:.2f}', flush=True)


if __name__ == '__main__':
    main()
