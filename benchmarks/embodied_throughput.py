"""Frames/s of embodied (camera) training: the simulator alone, PPO in-process, and PPO through the
ROS 2 graph, for a few observation sizes, to choose what a study on this machine can afford; and how
both scale with the number of sim processes.

    .venv/bin/python benchmarks/embodied_throughput.py --task MiniWorld-GoToObject-v0 --frames 8192
    .venv/bin/python benchmarks/embodied_throughput.py --sizes 64 --sim-processes 1 2 4   # scaling only

Each row is one short run, one after the other in one process (this machine's figures swing ~20%
between days: compare rows, not days). 8 robots, 64-step rollouts, 4 epochs of 128-sample
minibatches, 1 torch thread, plain PPO (no teacher: the teacher's cost is teacher_cost.py's).
- sim: random actions, steps/s of EmbodiedVecEnv with and without perception + map (a teacher
  needs them; PPO alone and evaluation do not); with N sim processes, the 8 robots split over N
  processes stepping at once (each its own EmbodiedVecEnv), robot-steps/s summed;
- in-process: student_policy.lockstep.train on EmbodiedVecEnv (rendering, CNN forward and update);
- graph: train.launch.py with the same task (batch_sim_node + student_node) at 64x64 rgbd, for each
  N of --sim-processes (`sim_processes:=N`) with num_groups N and 2N, and the CPU each node took a
  frame (a node's CPU ms a frame bounds the graph at 1000 / that frames/s however many cores).
"""
from __future__ import annotations

import argparse
import multiprocessing
import time

import numpy as np
import torch

from habitat_bridge.embodied.vector import EmbodiedVecEnv
from student_policy.lockstep import train
from student_policy.ppo import PPOConfig, TeacherSchedule
from training_graph import run_training_graph, steady_fps

NUM_ENVS = 8
CONFIG = dict(num_steps=64, minibatch_size=128, update_epochs=4, learning_rate=5e-4, encoder='image')


def sim_steps_per_second(task: str, size: int, perceive: bool, seconds: float = 10.0,
                         processes: int = 1) -> tuple[float, float]:
    """Robot-steps/s of NUM_ENVS robots split over `processes` processes stepping at once, and
    robot-steps per CPU-second they used (what N free cores would give N times: on a loaded machine
    N processes also take a larger share of the cores, so the wall rate alone overstates scaling)."""
    # Fresh processes for every N, 1 too (this one has torch and threads of its own); spawn: each
    # makes its own GL context, as each batch_sim_node does.
    context = multiprocessing.get_context('spawn')
    with context.Manager() as manager, context.Pool(processes) as pool:
        barrier = manager.Barrier(processes)
        runs = pool.starmap(_step_robots, [(task, NUM_ENVS // processes, size, perceive, seconds, barrier)] * processes)
    return sum(steps / wall for steps, wall, _ in runs), sum(r[0] for r in runs) / sum(r[2] for r in runs)


def _step_robots(task: str, robots: int, size: int, perceive: bool, seconds: float,
                 barrier) -> tuple[int, float, float]:
    """(robot-steps, wall seconds, CPU seconds) of `robots` robots stepped for `seconds`."""
    envs = EmbodiedVecEnv(task, robots, width=size, height=size, perceive=perceive)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    barrier.wait()  # every process built its robots: they step together
    steps, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        envs.step(rng.integers(0, 3, robots))  # turns and forward: the moves a robot makes most
        steps += robots
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    envs.close()
    return steps, wall, cpu


def in_process_fps(task: str, frames: int, size: int, observation: str = 'rgbd', device: str = 'cpu') -> float:
    rates = []
    envs = EmbodiedVecEnv(task, NUM_ENVS, observation=observation, width=size, height=size, perceive=False)
    train(PPOConfig(total_frames=frames, teacher=TeacherSchedule(0.0, 0.0), device=device, **CONFIG), envs,
          callbacks=[lambda learner, metrics: rates.append(metrics['charts/SPS']) or True])
    envs.close()
    return steady_fps(rates, skip=1)


def graph_fps(task: str, frames: int, sim_processes: int = 1, num_groups: int = 1,
              cpu: dict | None = None) -> float:
    rows = run_training_graph(frames, task, plain_ppo=True, num_envs=NUM_ENVS, num_groups=num_groups,
                              sim_processes=sim_processes, cpu=cpu, student_parameters={
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
    parser.add_argument('--no-in-process', action='store_true')
    parser.add_argument('--sim-processes', type=int, nargs='+', default=[1],
                        help=f'sim processes to compare, side by side (each must split {NUM_ENVS} robots into 2N '
                        'groups)')
    parser.add_argument('--rounds', type=int, default=1, help='repeat every row, alternating (a loaded machine)')
    args = parser.parse_args()
    bad = [n for n in args.sim_processes if n < 1 or NUM_ENVS % (2 * n)]
    if bad:
        parser.error(f'--sim-processes {bad}: each N must split {NUM_ENVS} robots into 2N env groups (1, 2 or 4)')
    torch.manual_seed(0)
    print(f'{args.task}, {NUM_ENVS} robots, {CONFIG["num_steps"]}-step rollouts, {args.frames} frames per '
          f'training row, 1 torch thread, student on {args.device}')
    for round_ in range(args.rounds):
        if args.rounds > 1:
            print(f'round {round_ + 1} of {args.rounds}', flush=True)
        for size in args.sizes:
            for perceive, what in ((True, 'perception + map (teacher)'), (False, 'camera only (PPO, eval)   ')):
                first = None
                for processes in args.sim_processes:
                    rate, per_cpu = sim_steps_per_second(args.task, size, perceive, processes=processes)
                    first = first or rate
                    print(f'{size}x{size} sim, {processes} process(es), {what}  {rate:7.0f} steps/s '
                          f'({rate / first:.2f}x), {per_cpu:4.0f} per CPU-second', flush=True)
            for observation in () if args.no_in_process else ('rgbd', 'rgb'):
                fps = in_process_fps(args.task, args.frames, size, observation, args.device)
                print(f'{size}x{size} {observation:4s} in-process PPO            {fps:7.0f} frames/s', flush=True)
        first = None
        for processes in () if args.no_graph else args.sim_processes:
            for num_groups in sorted({processes, 2 * processes}):
                cpu = {}
                fps = graph_fps(args.task, args.frames, processes, num_groups, cpu)
                first = first or fps
                sims = sum(seconds for name, seconds in cpu.items() if name.startswith('batch_sim_node'))
                print(f'64x64 rgbd ROS 2 graph PPO, {processes} sim process(es), {num_groups} group(s)  {fps:7.0f} '
                      f'frames/s ({fps / first:.2f}x); CPU ms a frame: student {1e3 * cpu["student_node"]:.2f}, '
                      f'sims {1e3 * sims:.2f}, others {1e3 * (sum(cpu.values()) - cpu["student_node"] - sims):.2f}',
                      flush=True)


if __name__ == '__main__':
    main()
