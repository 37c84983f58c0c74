"""What the teacher costs a training run: frames/s of the ROS graph with the LLM teacher (warm
answer cache) vs the same graph without it (plain PPO), measured one after the other in one run.

    .venv/bin/python benchmarks/teacher_cost.py --frames 40960

The first run with the teacher fills the answer cache; only the second (warm) one is compared.
"""
import argparse
import csv
import os
import tempfile
from pathlib import Path

os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(10 + os.getpid() % 90))

from llm_teacher.launch_runner import LaunchRunner, load_launch_file, resolve_arguments  # noqa: E402

LAUNCH = Path(__file__).resolve().parent.parent / 'launch' / 'train.launch.py'


def graph_fps(frames: int, plain_ppo: bool, cache: Path) -> tuple[float, float]:
    """Mean frames/s over the second half of a run, and the mean teacher coverage."""
    launch = load_launch_file(LAUNCH)
    with tempfile.TemporaryDirectory() as run_dir:
        specs = launch.nodes(resolve_arguments(launch.ARGUMENTS, [
            f'run_dir:={run_dir}', f'total_frames:={frames}', f'plain_ppo:={str(plain_ppo).lower()}']))
        for spec in specs:
            if spec.executable == 'student_node':
                spec.parameters.append({'eval_every': 10_000, 'eval_episodes': 1})  # keep evaluation out of it
            if spec.executable == 'teacher_node':
                spec.parameters.append({'cache_path': str(cache)})
        runner = LaunchRunner(specs, log=lambda line: None)
        runner.start()
        code = runner.wait()
        if code != 0:
            raise SystemExit(f'teacher_cost: the training graph exited with code {code}')
        with open(Path(run_dir) / 'progress.csv') as f:
            rows = list(csv.DictReader(f))
    half = rows[len(rows) // 2:]
    return (sum(float(r['charts/SPS']) for r in half) / len(half),
            sum(float(r['teacher/coverage']) for r in half) / len(half))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--frames', type=int, default=40_960)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / 'answers.sqlite'
        graph_fps(args.frames, plain_ppo=False, cache=cache)  # fills the cache
        warm, coverage = graph_fps(args.frames, plain_ppo=False, cache=cache)
        plain, _ = graph_fps(args.frames, plain_ppo=True, cache=cache)
    print(f'training graph, {args.frames} frames each, second half of each run')
    print(f'plain PPO (no teacher)       {plain:7.0f} frames/s')
    print(f'LLM teacher, warm cache      {warm:7.0f} frames/s  (teacher coverage {coverage:.2f})')
    print(f'time per frame with teacher: {plain / warm - 1:+.1%}')


if __name__ == '__main__':
    main()
