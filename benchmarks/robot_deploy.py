"""The deployed student on a stand-in robot: closed-loop success through the topics vs in-process on
the same seeds, and the latency from a sensor stamp to the velocity command.

    .venv/bin/python benchmarks/robot_deploy.py --policy runs/gotoobject/policy.pt --episodes 50

robot_sim_node (the policy's task; MiniWorld-GoToObject-v0 for one trained here) is the robot: it
is driven only through cmd_vel, and episode k starts from seed SEED + k. robot_policy_node drives
it from camera/image_raw and camera/depth/image_raw (and, for a policy trained on rgbd_map, from
map, odom, /tf and targets; an option-level policy also from obstacles, its skills on the robot's
map). In-process, the same exported policy acts on the same seeds with the same rules
(student_deploy.robot_control.CameraPolicy: motion actions only, or the skills of the options from
what the robot's topics carry; greedy, or --sample from the node's seeded generator; memory reset
at each episode, as the sim's `reset` does). A --policy that does not exist is trained first (PPO
distilling the privileged scripted expert, --train-frames frames) and exported there.
Success is measured at --rate-hz (fast, so 50 episodes fit in minutes); latency at 10 Hz.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(100 + os.getpid() % 100))

import rclpy  # noqa: E402
from llm_teacher_msgs.msg import ActionBatch  # noqa: E402
from rclpy.time import Time  # noqa: E402

from habitat_bridge.embodied.vector import EmbodiedVecEnv  # noqa: E402
from llm_teacher_common.launch_runner import LaunchRunner, NodeSpec, executable_path  # noqa: E402
from llm_teacher_common.options import OPTION_HOLD  # noqa: E402
from llm_teacher_common.node import make_executor  # noqa: E402
from llm_teacher_common.stats import wilson_interval  # noqa: E402
from student_deploy.inference import load_policy  # noqa: E402
from student_deploy.robot_control import CameraPolicy, seen_through_topics  # noqa: E402

TASK = 'MiniWorld-GoToObject-v0'
SEED = 30_000  # not a training or evaluation seed of any run


def train_student(path: Path, frames: int, mission: bool) -> None:
    """PPO with the privileged expert as a one-hot teacher at a constant weight of 10 (the
    distillation term dominates: imitation on the student's own states, as DAgger): a quick camera
    policy for this benchmark, exported to `path`."""
    from habitat_bridge.embodied.expert import EmbodiedExpert
    from student_policy.checkpoints import export_policy
    from student_policy.lockstep import train
    from student_policy.ppo import PPOConfig, TeacherSchedule
    envs = EmbodiedVecEnv(TASK, 8, perceive=False)
    experts = [EmbodiedExpert() for _ in envs.envs]

    def teacher(step):
        probs = np.zeros((envs.num_envs, envs.num_actions), np.float32)
        for i, (expert, env) in enumerate(zip(experts, envs.envs)):
            probs[i, expert.act(env.world)] = 1.0
        return probs, np.ones(envs.num_envs, bool)

    def progress(learner, metrics):
        print(f'train: {learner.frames} frames, success {metrics["charts/success_rate"]:.2f}, '
              f'{metrics["charts/SPS"]:.0f} fps', flush=True)
        if learner.updates % 10 == 0:
            export_policy(path, learner.policy, TASK)
        return True
    config = PPOConfig(encoder='image', mission=mission, total_frames=frames, num_steps=64, minibatch_size=128,
                       learning_rate=5e-4,
                       teacher=TeacherSchedule(initial=10.0, final=10.0, decay_frames=1, off_frames=10**9))
    learner = train(config, envs, teacher=teacher, callbacks=[progress])
    export_policy(path, learner.policy, TASK)
    envs.close()


def deployed_as(info) -> tuple[str, str, int]:
    """(task, observation, camera pixels across) a policy was exported with (its PolicyInfo)."""
    observation = 'rgbd_map' if info.encoder == 'image_map' else 'rgb' if info.obs_shape[2] == 3 else 'rgbd'
    return info.task or TASK, observation, info.obs_shape[1]


def in_process(path: Path, episodes: int, greedy: bool) -> list[bool]:
    """Success of each seeded episode, acting as the robot node does (CameraPolicy: motion actions
    only, or an option's skill on what robot_sim_node publishes of the perception: map, pose,
    targets, obstacles; sampled actions come from one generator of the node's seed, episode after
    episode)."""
    policy = load_policy(path)
    task, observation, size = deployed_as(policy.info)
    controller = CameraPolicy(policy, observation=observation, greedy=greedy)
    envs = EmbodiedVecEnv(task, 1, observation=observation, width=size, height=size,
                          perceive=observation == 'rgbd_map')
    results = []
    for k in range(episodes):
        step = envs.reset(seed=SEED + k)
        controller.reset()  # robot_sim_node's `reset` at each new episode
        controller.set_mission(step.missions[0])  # as robot_sim_node's mission topic tells the node
        while True:
            seen = seen_through_topics(step.perceptions[0]) if controller.chooses_options else None
            action, _ = controller.act(step.observations[0], seen)
            step = envs.step(np.array([action]))
            if step.terminated[0] or step.truncated[0]:
                results.append(bool(step.success[0]))
                break
    envs.close()
    return results


def through_topics(path: Path, episodes: int, rate_hz: float, greedy: bool, seconds: float | None = None) -> dict:
    """Run sim + robot node; success per episode from the sim's log (reward > 0), and latencies."""
    ended, logs = [], []

    def log(line):
        logs.append(line)
        found = re.search(r'episode (\d+) ended \(reward (-?[\d.]+)\)', line)
        if found:
            ended.append(float(found.group(2)) > 0)
    task, observation, size = deployed_as(load_policy(path).info)
    sim = NodeSpec('habitat_bridge', 'robot_sim_node', 'robot_sim_node',
                   parameters=[{'env': task, 'rate_hz': rate_hz, 'seed': SEED, 'width': size, 'height': size}])
    robot = NodeSpec('student_deploy', 'robot_policy_node', 'robot_policy_node',
                     parameters=[{'policy_path': str(path), 'control_rate_hz': rate_hz, 'greedy': greedy,
                                  'observation': observation, 'max_linear': 100.0, 'max_angular': 100.0}])
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node('robot_deploy_benchmark', context=context)
    latencies = []
    node.create_subscription(ActionBatch, 'policy_action', lambda m: latencies.append(
        (node.get_clock().now().nanoseconds - Time.from_msg(m.header.stamp).nanoseconds) / 1e6), 100)
    executor = make_executor(context)
    executor.add_node(node)
    start = time.monotonic()
    with LaunchRunner([sim, robot], log=log):
        while len(ended) < episodes and (seconds is None or time.monotonic() - start < seconds):
            executor.spin_once(timeout_sec=0.1)
    node.destroy_node()
    rclpy.shutdown(context=context)
    return {'success': ended[:episodes], 'latency_ms': latencies[10:]}  # the first ones include discovery


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--policy', type=Path, default=Path('runs/robot_deploy/policy.pt'))
    parser.add_argument('--train-frames', type=int, default=100_000)
    parser.add_argument('--episodes', type=int, default=50)
    parser.add_argument('--rate-hz', type=float, default=20.0, help='sim and control rate of the success run')
    parser.add_argument('--latency-seconds', type=float, default=60.0)
    parser.add_argument('--sample', action='store_true', help='sampled actions (seeded) instead of greedy')
    parser.add_argument('--mission', action='store_true',
                        help='a policy trained here reads the mission (robot_sim_node publishes it on `mission`)')
    args = parser.parse_args()
    torch.set_num_threads(1)
    executable_path('student_deploy', 'robot_policy_node')  # fails early with a clear message if not built
    if not args.policy.exists():
        train_student(args.policy, args.train_frames, args.mission)
    greedy = not args.sample
    local = in_process(args.policy, args.episodes, greedy)
    print(f'in-process: {sum(local)}/{len(local)} episodes succeeded', flush=True)
    closed = through_topics(args.policy, args.episodes, args.rate_hz, greedy)['success']
    print(f'through the topics at {args.rate_hz:g} Hz: {sum(closed)}/{len(closed)} episodes succeeded', flush=True)
    latency = np.array(through_topics(args.policy, 10**9, 10.0, greedy, args.latency_seconds)['latency_ms'])
    agree = sum(a == b for a, b in zip(local, closed))
    task, observation, _ = deployed_as(load_policy(args.policy).info)
    result = {
        'task': task, 'observation': observation, 'policy': str(args.policy),
        'chooses_options': load_policy(args.policy).info.chooses_options, 'option_hold': OPTION_HOLD, 'actions': 'greedy' if greedy else 'sampled', 'episodes': len(closed), 'seeds': [SEED, SEED + args.episodes - 1],
        'in_process': {'success_rate': float(np.mean(local)), 'interval95': wilson_interval(sum(local), len(local))},
        'through_topics': {'success_rate': float(np.mean(closed)), 'interval95': wilson_interval(sum(closed), len(closed)),
                           'rate_hz': args.rate_hz},
        'same_outcome_episodes': agree,
        'latency_ms_at_10hz': {'samples': len(latency), 'p50': float(np.percentile(latency, 50)),
                               'p99': float(np.percentile(latency, 99)), 'max': float(latency.max())},
        'python': sys.version.split()[0], 'torch': torch.__version__,
        'cpu': subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip() + ' cores',
    }
    print(json.dumps(result, indent=2))


if __name__ == '__main__':
    main()
