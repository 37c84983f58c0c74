"""Env-steps/s of minigrid_sim_node over DDS vs the same environments stepped in-process.

A driver node answers every step batch at once with random actions (as a policy would, minus
the network); the in-process loop steps a MiniGridVecEnv with the same random actions. One run,
all measured, ratios printed: the driver as the student (step batches only; the goal), and the
driver also subscribed to the perception batches, as the teacher is (the sim then computes and
sends them; in-process it computes them too).

    .venv/bin/python benchmarks/sim_node_throughput.py --num-envs 16 --seconds 20
"""
import argparse
import os
import sys
import time

import numpy as np

os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(10 + os.getpid() % 90))

import rclpy  # noqa: E402
from habitat_bridge.spin import make_executor  # noqa: E402
from llm_teacher_msgs.msg import ActionBatch, PerceptionBatch, StepBatch  # noqa: E402

from habitat_bridge.minigrid.vector import MiniGridVecEnv  # noqa: E402
from llm_teacher.launch_runner import LaunchRunner, NodeSpec  # noqa: E402


def in_process(task: str, num_envs: int, seconds: float, perceive: bool) -> float:
    envs = MiniGridVecEnv(task, num_envs, perceive=perceive)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        envs.step(rng.integers(0, envs.num_actions, num_envs))
        steps += 1
    return steps * num_envs / (time.perf_counter() - start)


def over_dds(task: str, num_envs: int, seconds: float, perceive: bool) -> float:
    spec = NodeSpec('habitat_bridge', 'minigrid_sim_node', 'minigrid_sim_node',
                    parameters=[{'task': task, 'num_envs': num_envs, 'render_hz': 0.0}])
    rng = np.random.default_rng(0)
    with LaunchRunner([spec], log=lambda line: None):
        rclpy.init()
        node = rclpy.create_node('benchmark_driver')
        publisher = node.create_publisher(ActionBatch, 'action_batch', 10)
        seen = {'count': 0, 'last': -1}

        def answer(batch: StepBatch):
            if batch.seq <= seen['last']:
                return
            seen['last'] = batch.seq
            seen['count'] += 1
            publisher.publish(ActionBatch(seq=batch.seq, actions=rng.integers(0, batch.num_actions, num_envs).tolist()))

        node.create_subscription(StepBatch, 'step_batch', answer, 10)
        if perceive:
            node.create_subscription(PerceptionBatch, 'perception_batch', lambda batch: None, 10)
        executor = make_executor(node.context)
        executor.add_node(node)
        deadline = time.monotonic() + 60
        while seen['count'] < 20:  # warm up: the sim is running and discovery done
            executor.spin_once(timeout_sec=0.1)
            if time.monotonic() > deadline:
                sys.exit('benchmark: minigrid_sim_node sent no step batches within 60 s')
        first, start = seen['count'], time.perf_counter()
        while time.perf_counter() - start < seconds:
            executor.spin_once(timeout_sec=0.1)
        rate = (seen['count'] - first) * num_envs / (time.perf_counter() - start)
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown()
    return rate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--task', default='MiniGrid-SimpleDoorKey-v0')
    parser.add_argument('--num-envs', type=int, default=16)
    parser.add_argument('--seconds', type=float, default=20.0)
    args = parser.parse_args()
    print(f'{args.task}, {args.num_envs} envs per batch, {args.seconds:.0f} s each')
    for perceive, consumer in ((False, 'a student (step batches)'), (True, 'a teacher too (+ perception batches)')):
        local = in_process(args.task, args.num_envs, args.seconds, perceive)
        graph = over_dds(args.task, args.num_envs, args.seconds, perceive)
        print(f'for {consumer}:')
        print(f'  in-process      {local:9.0f} env-steps/s')
        print(f'  sim node (DDS)  {graph:9.0f} env-steps/s')
        print(f'  ratio DDS/in-process {graph / local:.2f}  (node overhead {local / graph - 1:+.0%} time per step)'
              + ('' if perceive else ', goal >= 0.83 (at most +20%)'))


if __name__ == '__main__':
    main()
