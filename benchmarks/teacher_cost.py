"""What the teacher costs a training run: frames/s of the ROS graph with the LLM teacher (warm
answer cache) vs the same graph without it (plain PPO), measured one after the other in one run.

    .venv/bin/python benchmarks/teacher_cost.py --frames 40960

The first run with the teacher fills the answer cache; only the second (warm) one is compared.
"""
import argparse
import tempfile
from pathlib import Path

from training_graph import run_training_graph, steady_fps


def graph_fps(frames: int, plain_ppo: bool, cache: Path) -> tuple[float, float]:
    """Steady-state frames/s of a run, and the mean teacher coverage over its second half."""
    rows = run_training_graph(frames, plain_ppo=plain_ppo, teacher_parameters={'cache_path': str(cache)})
    half = rows[len(rows) // 2:]
    return (steady_fps([float(r['charts/SPS']) for r in rows]),
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
    print(f'training graph, {args.frames} frames each, steady state')
    print(f'plain PPO (no teacher)       {plain:7.0f} frames/s')
    print(f'LLM teacher, warm cache      {warm:7.0f} frames/s  (teacher coverage {coverage:.2f})')
    print(f'time per frame with teacher: {plain / warm - 1:+.1%}')


if __name__ == '__main__':
    main()
