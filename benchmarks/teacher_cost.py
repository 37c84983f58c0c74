"""What the teacher costs a training run: frames/s of the ROS graph with the LLM teacher (warm
answer cache) vs the same graph without it (plain PPO), measured one after the other in one run.

    .venv/bin/python benchmarks/teacher_cost.py --frames 40960

The first run with the teacher fills the answer cache; only the second (warm) one is compared.
Frames/s swing ~20% between runs on a shared machine; the CPU time all the graph's processes used
per frame swings less, but counts their start-up too (the warm teacher loads no LLM: 3.6 CPU s
less since #35) and work that runs while a core would idle anyway, so it compares teachers, not
the time a frame takes.
The CPU of each node from its first PPO update to its last (start-ups left out) says where the
teacher's CPU goes: its own node, and what it adds to the sim (perceptions), the student
(suggestions, the distillation term) and the recorder and visualisation (two more topics).
"""
import argparse
import resource
import tempfile
from pathlib import Path

from training_graph import run_training_graph, steady_fps


def graph_fps(frames: int, plain_ppo: bool, cache: Path) -> tuple[float, float, float, dict[str, float]]:
    """Steady-state frames/s of a run, the mean teacher coverage over its second half, the CPU
    time of all its processes per frame (us), and each node's CPU per frame in the steady state (us)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    nodes: dict[str, float] = {}
    rows = run_training_graph(frames, plain_ppo=plain_ppo, teacher_parameters={'cache_path': str(cache)}, cpu=nodes)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    half = rows[len(rows) // 2:]
    return (steady_fps([float(r['charts/SPS']) for r in rows]),
            sum(float(r['teacher/coverage']) for r in half) / len(half), 1e6 * cpu_s / frames,
            {name: 1e6 * s for name, s in nodes.items()})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--frames', type=int, default=40_960)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / 'answers.sqlite'
        graph_fps(args.frames, plain_ppo=False, cache=cache)  # fills the cache
        warm, coverage, warm_cpu, warm_nodes = graph_fps(args.frames, plain_ppo=False, cache=cache)
        plain, _, plain_cpu, plain_nodes = graph_fps(args.frames, plain_ppo=True, cache=cache)
    print(f'training graph, {args.frames} frames each, steady state')
    print(f'plain PPO (no teacher)       {plain:7.0f} frames/s  {plain_cpu:6.0f} us CPU a frame')
    print(f'LLM teacher, warm cache      {warm:7.0f} frames/s  {warm_cpu:6.0f} us CPU a frame  '
          f'(teacher coverage {coverage:.2f})')
    print(f'time per frame with teacher: {plain / warm - 1:+.1%}; CPU per frame {warm_cpu - plain_cpu:+.0f} us '
          f'(start-ups included)')
    print('steady-state CPU a frame (first to last update)   plain    teacher   teacher adds')
    for name in sorted(warm_nodes, key=lambda n: -(warm_nodes[n] - plain_nodes.get(n, 0.0))):
        plain_us = plain_nodes.get(name, 0.0)
        print(f'    {name:42s} {plain_us:7.0f} us {warm_nodes[name]:7.0f} us {warm_nodes[name] - plain_us:+7.0f} us')
    print(f'    {"all nodes":42s} {sum(plain_nodes.values()):7.0f} us {sum(warm_nodes.values()):7.0f} us '
          f'{sum(warm_nodes.values()) - sum(plain_nodes.values()):+7.0f} us')


if __name__ == '__main__':
    main()
