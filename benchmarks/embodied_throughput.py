"""Frames/s of embodied (camera) training: the simulator alone, PPO in-process, and PPO through the
ROS 2 graph, for a few observation sizes, to choose what a study on this machine can afford.

    .venv/bin/python benchmarks/embodied_throughput.py --task MiniWorld-GoToObject-v0 --frames 8192

Each row is one short run, one after the other in one process (this machine's figures swing ~20%
between days: compare rows, not days). 8 robots, 64-step rollouts, 4 epochs of 128-sample
minibatches, 1 torch thread, plain PPO (no teacher: the teacher's cost is teacher_cost.py's).
- sim: random actions, steps/s of EmbodiedVecEnv with and without perception + map (a teacher
  needs them; PPO alone and evaluation do not);
- in-process: student_policy.lockstep.train on EmbodiedVecEnv (rendering, CNN forward and update);
- graph: train.launch.py with the same task (batch_sim_node + student_node).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from habitat_bridge.embodied.vector import EmbodiedVecEnv
from student_policy.lockstep import train
from student_policy.ppo import PPOConfig, TeacherSchedule
from training_graph import run_training_graph, steady_fps

NUM_ENVS = 8
CONFIG = dict(num_steps=64, minibatch_size=128, update_epochs=4, learning_rate=5e-4, encoder='image')


def sim_steps_per_second(task: str, size: int, perceive: bool, seconds: float = 10.0) -> float:
    envs = EmbodiedVecEnv(task, NUM_ENVS, width=size, height=size, perceive=perceive)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        envs.step(rng.integers(0, 3, NUM_ENVS))  # turns and forward: the moves a robot makes most
        steps += NUM_ENVS
    rate = steps / (time.perf_counter() - start)
    envs.close()
    return rate


def in_process_fps(task: str, frames: int, size: int, observation: str = 'rgbd', device: str = 'cpu') -> float:
    rates = []
    envs = EmbodiedVecEnv(task, NUM_ENVS, observation=observation, width=size, height=size, perceive=False)
    train(PPOConfig(total_frames=frames, teacher=TeacherSchedule(0.0, 0.0), device=device, **CONFIG), envs,
          callbacks=[lambda learner, metrics: rates.append(metrics['charts/SPS']) or True])
    envs.close()
    return steady_fps(rates, skip=1)


def graph_fps(task: str, frames: int) -> float:
    rows = run_training_graph(frames, task, plain_ppo=True, num_envs=NUM_ENVS, student_parameters={
        'num_steps': CONFIG['num_steps'], 'minibatch_size': CONFIG['minibatch_size'],
        'learning_rate': CONFIG['learning_rate']})
    return steady_fps([float(row['charts/SPS']) for row in rows], skip=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--task', default='MiniWorld-GoToObject-v0')
    parser.add_argument('--frames', type=int, default=8192)
    parser.add_argument('--sizes', type=int, nargs='+', default=[64, 48])
    parser.add_argument('--device', default='cpu', help='the student\'s torch device (cuda where there is one)')
    parser.add_argument('--no-graph', action='store_true')
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f'{args.task}, {NUM_ENVS} robots, {CONFIG["num_steps"]}-step rollouts, {args.frames} frames per '
          f'training row, 1 torch thread, student on {args.device}')
    for size in args.sizes:
        with_map = sim_steps_per_second(args.task, size, perceive=True)
        camera_only = sim_steps_per_second(args.task, size, perceive=False)
        print(f'{size}x{size} sim, perception + map (teacher)  {with_map:7.0f} steps/s', flush=True)
        print(f'{size}x{size} sim, camera only (PPO, eval)     {camera_only:7.0f} steps/s', flush=True)
        for observation in ('rgbd', 'rgb'):
            fps = in_process_fps(args.task, args.frames, size, observation, args.device)
            print(f'{size}x{size} {observation:4s} in-process PPO            {fps:7.0f} frames/s', flush=True)
    if not args.no_graph:
        print(f'64x64 rgbd ROS 2 graph PPO                {graph_fps(args.task, args.frames):7.0f} frames/s', flush=True)


if __name__ == '__main__':
    main()
