"""What torch.compile costs at the start of training, with and without its cache, and when it pays.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compile_start.py --task MiniGrid-DoorKey-8x8-v0 --frames 40960

Each run is a fresh process training plain PPO in-process (lockstep.train; 16 envs x 128 steps,
1 torch thread): eager, compiled with an empty cache (the first start on a machine), and compiled
again on that cache (every later start), interleaved `--repeats` times. Per run: seconds from
the process start (imports included) to the first update finished, and the steady frames/s after
it (updates after the first two). From the medians: the budget from which compile repays its
start, cold and warm. Then the same three through the ROS 2 graph (train.launch.py, plain PPO,
student_node compile true / false, a cache of its own): seconds from the launch to the student's
first update logged.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

NUM_ENVS = 16


def child(task: str, frames: int, compile: bool) -> None:
    start = float(os.environ['START'])
    from habitat_bridge.minigrid.vector import MiniGridVecEnv
    from student_policy.lockstep import train
    from student_policy.ppo import PPOConfig, TeacherSchedule, compile_failures

    first_update, rates = [], []

    def record(learner, metrics) -> bool:
        first_update.append(time.time() - start)
        rates.append(metrics['charts/SPS'])
        return True

    config = PPOConfig(total_frames=frames, teacher=TeacherSchedule(0.0, 0.0), compile=compile)
    train(config, MiniGridVecEnv(task, NUM_ENVS, perceive=False), callbacks=[record])
    from training_graph import steady_fps  # after the timed part: it imports rclpy
    print(json.dumps({'first_update_s': first_update[0], 'fps': steady_fps(rates),
                      'compile_failures': compile_failures() if compile else 0}))


def run(task: str, frames: int, compile: bool, cache: str) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, OMP_NUM_THREADS='1', START=repr(time.time()))
    out = subprocess.run([sys.executable, __file__, '--child', '--task', task, '--frames', str(frames)]
                         + (['--compile'] if compile else []), env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f'a {"compiled" if compile else "eager"} run failed:\n{out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def break_even(eager: dict, compiled: dict) -> str:
    saved = 1 / eager['fps'] - 1 / compiled['fps']  # seconds a frame
    cost = compiled['first_update_s'] - eager['first_update_s']
    if saved <= 0:
        return 'never (no faster)'
    return f'{max(cost, 0.0) / saved / 1000:.0f}k frames'


def graph(task: str, frames: int, compile: bool, cache: str) -> dict:
    """Seconds from starting train.launch.py (plain PPO) to the student's first update logged."""
    from llm_teacher_common.launch_runner import LaunchRunner, load_launch_file, resolve_arguments
    from training_graph import LAUNCH

    launch = load_launch_file(LAUNCH)
    first_update = threading.Event()

    def watch(line: str) -> None:
        if line.startswith('[student_node]') and ' | fps ' in line:
            first_update.set()

    with tempfile.TemporaryDirectory() as run_dir:
        specs = launch.nodes(resolve_arguments(launch.ARGUMENTS, [
            f'run_dir:={run_dir}', f'total_frames:={frames}', f'task:={task}', 'plain_ppo:=true', 'foxglove_port:=-1']))
        for spec in specs:
            if spec.executable == 'student_node':
                spec.parameters.append({'compile': str(compile).lower(), 'eval_every': 1_000_000})
        runner = LaunchRunner(specs, env=dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, OMP_NUM_THREADS='1'),
                              log=watch)
        start = time.time()
        runner.start()
        try:
            if not first_update.wait(timeout=300):
                raise SystemExit('the training graph logged no update within 300 s')
            return {'first_update_s': time.time() - start}
        finally:
            runner.stop()


def side_by_side(measure, repeats: int) -> dict[str, list[dict]]:
    """eager, compiled on an empty cache, then eager and compiled on that cache, `repeats` times."""
    rows = {'eager': [], 'compiled, cold cache': [], 'compiled, warm cache': []}
    with tempfile.TemporaryDirectory(prefix='compile-start-') as cache:
        for i in range(repeats):
            rows['eager'].append(measure(False, cache))
            rows['compiled, cold cache' if i == 0 else 'compiled, warm cache'].append(measure(True, cache))
        rows['compiled, warm cache'].append(measure(True, cache))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--task', default='MiniGrid-DoorKey-8x8-v0')
    parser.add_argument('--frames', type=int, default=40_960)
    parser.add_argument('--repeats', type=int, default=2, help='eager and warm runs each (one cold run)')
    parser.add_argument('--no-graph', action='store_true', help='skip the ROS 2 graph rows')
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--compile', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.task, args.frames, args.compile)
    rows = side_by_side(lambda compile, cache: run(args.task, args.frames, compile, cache), args.repeats)
    median = {k: {m: statistics.median(r[m] for r in v) for m in ('first_update_s', 'fps')} for k, v in rows.items()}
    print(f'{args.task}, plain PPO, {NUM_ENVS} envs x 128 steps, 1 torch thread; each run a fresh process (cache)')
    print(f'in-process, {args.frames} frames a run    {"first update (s)":>22} {"frames/s after":>16}')
    for key, runs in rows.items():
        firsts = ' '.join(f'{r["first_update_s"]:.1f}' for r in runs)
        fps = ' '.join(f'{r["fps"]:.0f}' for r in runs)
        failed = sum(r['compile_failures'] for r in runs)
        print(f'  {key:36} {firsts:>22} {fps:>16}' + (f'   ({failed} frames failed to compile!)' if failed else ''))
    eager = median['eager']
    for key in ('compiled, cold cache', 'compiled, warm cache'):
        m = median[key]
        print(f'  {key}: start +{m["first_update_s"] - eager["first_update_s"]:.1f} s over eager, '
              f'{m["fps"] / eager["fps"]:.2f}x frames/s, pays from {break_even(eager, m)}')
    if args.no_graph:
        return
    rows = side_by_side(lambda compile, cache: graph(args.task, 10 * args.frames, compile, cache), args.repeats)
    print('ROS 2 graph (train.launch.py, plain PPO), start to the first update logged')
    for key, runs in rows.items():
        firsts = [r['first_update_s'] for r in runs]
        print(f'  {key:36} {" ".join(f"{t:.1f}" for t in firsts):>22}   median {statistics.median(firsts):.1f}')


if __name__ == '__main__':
    main()
