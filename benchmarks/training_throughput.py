"""Training frames/s: our PPO in-process vs Stable-Baselines3 PPO vs our PPO through the ROS 2 graph.

    .venv/bin/python benchmarks/training_throughput.py --task MiniGrid-DoorKey-8x8-v0 --frames 40960

Plain PPO (no teacher) in all three, one after the other in one run, with the same network
(student_policy.networks: the SB3 policy gets our GridEncoder as features extractor and linear
heads), 16 environments, 128-step rollouts, 4 epochs of 256-sample minibatches, 1 torch thread.
Rates are steady state: frames/s over all updates after the first two (which also hold the
compile time of the compiled runs). The graph's rows say compile:=true or false: `auto` compiles this
budget once the same student compiled on the machine (ppo.COMPILE_PRELOADED_FROM_FRAMES).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from gymnasium import spaces

from habitat_bridge.minigrid.vector import MiniGridVecEnv, make_env
from student_policy.networks import GridEncoder
from student_policy.lockstep import train
from student_policy.ppo import PPOConfig, TeacherSchedule
from training_graph import run_training_graph, steady_fps

NUM_ENVS = 16
RECURRENT = 128  # the GRU size of the recurrent rows (student_node recurrent)
CONFIG = dict(num_steps=128, learning_rate=1e-3, gamma=0.99, gae_lambda=0.95, update_epochs=4,
              minibatch_size=256, clip_coef=0.2, ent_coef=0.001, vf_coef=0.5, max_grad_norm=0.5)


def in_process_fps(task: str, frames: int, compile: bool = False, recurrent: int = 0) -> float:
    rates = []
    config = PPOConfig(total_frames=frames, teacher=TeacherSchedule(0.0, 0.0), compile=compile, recurrent=recurrent, **CONFIG)
    train(config, MiniGridVecEnv(task, NUM_ENVS, perceive=False),
          callbacks=[lambda learner, metrics: rates.append(metrics['charts/SPS']) or True])
    return steady_fps(rates)


def sb3_fps(task: str, frames: int) -> float:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
    from stable_baselines3.common.vec_env import DummyVecEnv

    class GridFeatures(BaseFeaturesExtractor):
        """Our GridEncoder; SB3 hands image-like observations over channels-first (VecTransposeImage)."""

        def __init__(self, observation_space: spaces.Box, features: int = 256):
            super().__init__(observation_space, features)
            channels, width, height = observation_space.shape
            self.encoder = GridEncoder((width, height, channels), features)

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return self.encoder(obs.permute(0, 2, 3, 1))

    class Rates(BaseCallback):
        def __init__(self):
            super().__init__()
            self.starts = []

        def _on_rollout_start(self) -> None:
            self.starts.append(time.perf_counter())

        def _on_step(self) -> bool:
            return True

    torch.set_num_threads(1)
    envs = DummyVecEnv([lambda: make_env(task)] * NUM_ENVS)
    model = PPO('CnnPolicy', envs, n_steps=CONFIG['num_steps'], batch_size=CONFIG['minibatch_size'],
                n_epochs=CONFIG['update_epochs'], learning_rate=CONFIG['learning_rate'], gamma=CONFIG['gamma'],
                gae_lambda=CONFIG['gae_lambda'], clip_range=CONFIG['clip_coef'], ent_coef=CONFIG['ent_coef'],
                vf_coef=CONFIG['vf_coef'], max_grad_norm=CONFIG['max_grad_norm'], seed=0, device='cpu',
                policy_kwargs=dict(features_extractor_class=GridFeatures, net_arch=dict(pi=[], vf=[]),
                                   normalize_images=False))
    rates = Rates()
    model.learn(frames, callback=rates)
    rollout_frames = CONFIG['num_steps'] * NUM_ENVS
    return steady_fps([rollout_frames / (b - a) for a, b in zip(rates.starts, rates.starts[1:])])


def graph_fps(task: str, frames: int, num_groups: int = 1, recurrent: int = 0, compile: bool = False) -> float:
    rows = run_training_graph(frames, task, plain_ppo=True, num_groups=num_groups,
                              student_parameters={'recurrent': recurrent, 'compile': str(compile).lower()})
    return steady_fps([float(row['charts/SPS']) for row in rows])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--task', default='MiniGrid-DoorKey-8x8-v0')
    parser.add_argument('--frames', type=int, default=40_960)
    args = parser.parse_args()
    torch.manual_seed(0)
    np.random.seed(0)
    ours = in_process_fps(args.task, args.frames)
    compiled = in_process_fps(args.task, args.frames, compile=True)
    sb3 = sb3_fps(args.task, args.frames)
    graph = graph_fps(args.task, args.frames)
    double_buffered = graph_fps(args.task, args.frames, num_groups=2)
    graph_compiled = graph_fps(args.task, args.frames, compile=True)
    double_buffered_compiled = graph_fps(args.task, args.frames, num_groups=2, compile=True)
    recurrent = in_process_fps(args.task, args.frames, recurrent=RECURRENT)
    graph_recurrent = graph_fps(args.task, args.frames, recurrent=RECURRENT)
    print(f'{args.task}, plain PPO, {NUM_ENVS} envs x {CONFIG["num_steps"]} steps, {args.frames} frames each, 1 torch thread')
    print(f'Stable-Baselines3 PPO                   {sb3:7.0f} frames/s')
    print(f'in-process (lockstep.train)            {ours:7.0f} frames/s   / SB3: {ours / sb3:.2f}x')
    print(f'in-process, compile=True                {compiled:7.0f} frames/s   / SB3: {compiled / sb3:.2f}x (goal >= 1.2)')
    print(f'ROS 2 graph, compile:=false             {graph:7.0f} frames/s   / in-process: {graph / ours:.2f}x (goal >= 0.8)')
    print(f'ROS 2 graph, num_groups:=2 compile:=false {double_buffered:7.0f} frames/s   / in-process: '
          f'{double_buffered / ours:.2f}x (sim and student overlap)')
    print(f'ROS 2 graph, compile:=true             {graph_compiled:7.0f} frames/s   / SB3: {graph_compiled / sb3:.2f}x, '
          f'/ in-process compiled: {graph_compiled / compiled:.2f}x')
    print(f'ROS 2 graph, num_groups:=2 compile:=true {double_buffered_compiled:7.0f} frames/s   / SB3: '
          f'{double_buffered_compiled / sb3:.2f}x (goal >= 1.2), / in-process compiled: '
          f'{double_buffered_compiled / compiled:.2f}x (goal >= 1.0)')
    print(f'in-process, recurrent={RECURRENT}          {recurrent:7.0f} frames/s   / reactive: {recurrent / ours:.2f}x (goal >= 0.8)')
    print(f'ROS 2 graph, recurrent:={RECURRENT} compile:=false {graph_recurrent:7.0f} frames/s   / reactive graph: '
          f'{graph_recurrent / graph:.2f}x (goal >= 0.8)')


if __name__ == '__main__':
    main()
