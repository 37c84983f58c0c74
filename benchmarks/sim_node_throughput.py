"""Env-steps/s of batch_sim_node over DDS vs the same environments stepped in-process.

A driver node answers every step batch at once with random actions (as a policy would, minus
the network); the in-process loop steps a MiniGridVecEnv with the same kind of actions. Arms:

    in-process                 the baseline: N envs stepped per call
    sim node, lock-step        one step batch of all N envs per step (num_groups 1)
    2 groups of N/2            double-buffered: the sim steps one half while the other's actions travel
    2 groups of N              the same with 2N envs, so that each batch holds N envs as in-process
each for a student (step batches only; the goal) and for a teacher too (the driver also subscribes
to the perception batches, so the sim computes and sends them; in-process computes them too).

This machine is shared and its speed drifts: all sim nodes stay up and the arms take turns in
short windows, so each ratio compares windows measured moments apart; the figures are medians.

    .venv/bin/python benchmarks/sim_node_throughput.py --num-envs 16 --seconds 60
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(10 + os.getpid() % 90))

import rclpy  # noqa: E402
from llm_teacher_common.node import make_executor  # noqa: E402
from llm_teacher_msgs.msg import ActionBatch, PerceptionBatch, StepBatch  # noqa: E402

from habitat_bridge.minigrid.vector import MiniGridVecEnv  # noqa: E402
from llm_teacher_common.launch_runner import LaunchRunner, NodeSpec  # noqa: E402

WINDOW_S = 2.0


class InProcess:
    def __init__(self, task: str, num_envs: int, perceive: bool):
        self.envs = MiniGridVecEnv(task, num_envs, perceive=perceive)
        self.envs.reset(seed=0)
        self.rng = np.random.default_rng(0)

    def run(self, seconds: float) -> float:
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            self.envs.step(self.rng.integers(0, self.envs.num_actions, self.envs.num_envs))
            steps += 1
        return steps * self.envs.num_envs / (time.perf_counter() - start)


class OverDDS:
    """Drives one sim node (topics under /<name>); answers only while running, keeps what came meanwhile."""

    def __init__(self, node, executor, name: str, num_groups: int, perceive: bool):
        self.executor = executor
        self.publisher = node.create_publisher(ActionBatch, f'/{name}/action_batch', 10)
        node.create_subscription(StepBatch, f'/{name}/step_batch', self.on_batch, 10)
        if perceive:
            node.create_subscription(PerceptionBatch, f'/{name}/perception_batch', lambda batch: None, 10)
        self.rng = np.random.default_rng(0)
        self.last = [-1] * num_groups
        self.waiting: dict[int, StepBatch] = {}  # group -> batch that came while another arm ran
        self.active, self.envs_stepped = False, 0

    def on_batch(self, batch: StepBatch) -> None:
        if batch.seq <= self.last[batch.group]:
            return  # a resend
        self.last[batch.group] = batch.seq
        if self.active:
            self.answer(batch)
        else:
            self.waiting[batch.group] = batch

    def answer(self, batch: StepBatch) -> None:
        self.envs_stepped += batch.num_envs
        self.publisher.publish(ActionBatch(seq=batch.seq, epoch=batch.epoch, group=batch.group,
                                           actions=self.rng.integers(0, batch.num_actions, batch.num_envs).tolist()))

    def run(self, seconds: float) -> float:
        self.active, first = True, self.envs_stepped
        for batch in self.waiting.values():
            self.answer(batch)
        self.waiting.clear()
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            self.executor.spin_once(timeout_sec=0.1)
        self.active = False
        return (self.envs_stepped - first) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--task', default='MiniGrid-SimpleDoorKey-v0')
    parser.add_argument('--num-envs', type=int, default=16)
    parser.add_argument('--seconds', type=float, default=60.0, help='total measuring time of each arm')
    args = parser.parse_args()
    layouts = [(1, args.num_envs, 'lock-step'), (2, args.num_envs, f'2 groups of {args.num_envs // 2}'),
               (2, 2 * args.num_envs, f'2 groups of {args.num_envs}')]  # (num_groups, num_envs, label)
    arms = [(f'{consumer}_{groups}x{envs // groups}', groups, envs, perceive)
            for consumer, perceive in (('student', False), ('teacher', True)) for groups, envs, _ in layouts]
    specs = [NodeSpec('habitat_bridge', 'batch_sim_node', name,
                      parameters=[{'task': args.task, 'num_envs': envs, 'num_groups': groups,
                                   'render_hz': 0.0, 'republish_period': 1.0}],
                      remappings=[(topic, f'/{name}/{topic}') for topic in
                                  ('step_batch', 'perception_batch', 'action_batch', 'reset_envs')])
             for name, groups, envs, _ in arms]
    with LaunchRunner(specs, log=lambda line: None):
        rclpy.init()
        node = rclpy.create_node('benchmark_driver')
        executor = make_executor(node.context)
        executor.add_node(node)
        runners = {name: OverDDS(node, executor, name, groups, perceive) for name, groups, _, perceive in arms}
        runners['student_in_process'] = InProcess(args.task, args.num_envs, perceive=False)
        runners['teacher_in_process'] = InProcess(args.task, args.num_envs, perceive=True)
        deadline = time.monotonic() + 60
        while any(not r.waiting for r in runners.values() if isinstance(r, OverDDS)):  # all sims up, discovered
            executor.spin_once(timeout_sec=0.1)
            if time.monotonic() > deadline:
                sys.exit('benchmark: a batch_sim_node sent no step batch within 60 s')
        for runner in runners.values():
            runner.run(0.5)  # warm up
        rates = {name: [] for name in runners}
        rounds = max(1, round(args.seconds / WINDOW_S))
        print(f'{args.task}, {args.num_envs} envs per in-process step, {rounds} windows of {WINDOW_S:.0f} s per arm')
        for i in range(rounds):
            for name, runner in runners.items():
                rates[name].append(runner.run(WINDOW_S))
            print(f'\r  window {i + 1}/{rounds}', end='', file=sys.stderr, flush=True)
        print(file=sys.stderr)
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown()

    for consumer, title in (('student', 'a student (step batches)'), ('teacher', 'a teacher too (+ perception batches)')):
        local = rates[f'{consumer}_in_process']
        print(f'for {title}:\n  in-process                     {statistics.median(local):9.0f} env-steps/s')
        for groups, envs, label in layouts:
            graph = rates[f'{consumer}_{groups}x{envs // groups}']
            ratio = statistics.median(g / l for g, l in zip(graph, local))
            print(f'  sim node, {label:18s}   {statistics.median(graph):9.0f} env-steps/s   ratio to in-process {ratio:.2f} '
                  f'(node overhead {1 / ratio - 1:+.0%} time per step)'
                  + (', goal >= 0.83 (at most +20%)' if consumer == 'student' else ''))


if __name__ == '__main__':
    main()
