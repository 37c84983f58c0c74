"""Run train.launch.py as processes for a benchmark and read back its progress, with nothing on screen.

Shared by the benchmarks that time the ROS 2 training graph.
"""
from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(10 + os.getpid() % 90))

from llm_teacher_common.launch_runner import LaunchRunner, load_launch_file, resolve_arguments  # noqa: E402

LAUNCH = Path(__file__).resolve().parent.parent / 'launch' / 'train.launch.py'


def run_training_graph(frames: int, task: str = 'MiniGrid-SimpleDoorKey-v0', plain_ppo: bool = True,
                       teacher_parameters: dict | None = None, num_groups: int = 1,
                       student_parameters: dict | None = None, num_envs: int = 16) -> list[dict]:
    """progress.csv rows (one per PPO update) of one run of the graph, evaluations switched off."""
    launch = load_launch_file(LAUNCH)
    with tempfile.TemporaryDirectory() as run_dir:
        specs = launch.nodes(resolve_arguments(launch.ARGUMENTS, [
            f'run_dir:={run_dir}', f'total_frames:={frames}', f'task:={task}',
            f'plain_ppo:={str(plain_ppo).lower()}', f'num_groups:={num_groups}', f'num_envs:={num_envs}']))
        for spec in specs:
            if spec.executable == 'student_node':
                spec.parameters.append({'eval_every': 1_000_000, 'eval_episodes': 1, 'test_episodes': 1,  # only the final one
                                        **(student_parameters or {})})
            if spec.executable == 'teacher_node' and teacher_parameters:
                spec.parameters.append(teacher_parameters)
        runner = LaunchRunner(specs, log=lambda line: None)
        runner.start()
        code = runner.wait()
        if code != 0:
            raise SystemExit(f'the training graph exited with code {code}')
        with open(Path(run_dir) / 'progress.csv') as f:
            return list(csv.DictReader(f))


def steady_fps(rates: list[float], skip: int = 2) -> float:
    """Frames/s over a run's updates after the first `skip` (warm-up), from per-update rates.

    Every update covers the same number of frames, so the overall rate is the harmonic mean.
    """
    rates = rates[skip:] or rates
    return len(rates) / sum(1.0 / r for r in rates)
