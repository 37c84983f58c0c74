"""Run train.launch.py as processes for a benchmark and read back its progress, with nothing on screen.

Shared by the benchmarks that time the ROS 2 training graph.
"""
from __future__ import annotations

import csv
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(10 + os.getpid() % 90))

from llm_teacher_common.launch_runner import LaunchRunner, load_launch_file, resolve_arguments  # noqa: E402

LAUNCH = Path(__file__).resolve().parent.parent / 'launch' / 'train.launch.py'


def run_training_graph(frames: int, task: str = 'MiniGrid-SimpleDoorKey-v0', plain_ppo: bool = True,
                       teacher_parameters: dict | None = None, num_groups: int = 1,
                       student_parameters: dict | None = None, num_envs: int = 16,
                       sim_processes: int = 1, cpu: dict | None = None) -> list[dict]:
    """progress.csv rows (one per PPO update) of one run of the graph, evaluations switched off.

    :param cpu: if given, filled with each node's CPU seconds per frame from its first update to its
        last (start-up and the final evaluation left out): what the node needs of a core, however
        loaded the machine is.
    """
    launch = load_launch_file(LAUNCH)
    with tempfile.TemporaryDirectory() as run_dir:
        specs = launch.nodes(resolve_arguments(launch.ARGUMENTS, [
            f'run_dir:={run_dir}', f'total_frames:={frames}', f'task:={task}',
            f'plain_ppo:={str(plain_ppo).lower()}', f'num_groups:={num_groups}', f'num_envs:={num_envs}',
            f'sim_processes:={sim_processes}', 'foxglove_port:=0']))  # 0: any free port (another run may hold 8765)
        for spec in specs:
            if spec.executable == 'student_node':
                spec.parameters.append({'eval_every': 1_000_000, 'eval_episodes': 1, 'test_episodes': 1,  # only the final one
                                        **(student_parameters or {})})
            if spec.executable == 'teacher_node' and teacher_parameters:
                spec.parameters.append(teacher_parameters)
        runner = LaunchRunner(specs, log=lambda line: None)
        runner.start()
        progress, marks = Path(run_dir) / 'progress.csv', {}  # updates so far -> CPU seconds of each node
        while cpu is not None and all(p.poll() is None for p in runner.processes.values()):
            updates = max(_lines(progress) - 1, 0)
            if updates not in marks:
                marks[updates] = {name: _cpu_seconds(p.pid) for name, p in runner.processes.items()}
            time.sleep(0.05)
        code = runner.wait()
        if code != 0:
            raise SystemExit(f'the training graph exited with code {code}')
        with open(progress) as f:
            rows = list(csv.DictReader(f))
        if cpu is not None:
            first, last = min(n for n in marks if n > 0), max(marks)
            if last == first:
                raise SystemExit(f'the training graph ran {last} update(s) while watched; give it more frames')
            frames = float(rows[last - 1]['frames']) - float(rows[first - 1]['frames'])
            cpu.update({name: (marks[last][name] - marks[first][name]) / frames for name in marks[first]})
        return rows


def _lines(path: Path) -> int:
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process, all its threads."""
    with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def steady_fps(rates: list[float], skip: int = 2) -> float:
    """Frames/s over a run's updates after the first `skip` (warm-up), from per-update rates.

    Every update covers the same number of frames, so the overall rate is the harmonic mean.
    """
    rates = rates[skip:] or rates
    return len(rates) / sum(1.0 / r for r in rates)
