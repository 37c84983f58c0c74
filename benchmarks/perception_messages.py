"""What a PerceptionBatch costs per env-step: building it from the sim's perceptions, serialising it
(what publish does), deserialising it (what a subscription does) and reading it back (the teacher).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/perception_messages.py

The perceptions are those of 16 environments stepped with random actions; each figure is the best
of --repeats passes over --batches batches (the best is the least disturbed on a shared machine).
"""
import argparse
import time

import numpy as np
from builtin_interfaces.msg import Time
from llm_teacher_msgs.msg import PerceptionBatch
from rclpy.serialization import deserialize_message, serialize_message

from habitat_bridge.vector import make_vec_env
from llm_teacher_common.messages import perception_batch_msg, perceptions_from_msg


def recorded_perceptions(task: str, num_envs: int, batches: int) -> list:
    envs = make_vec_env(task, num_envs)
    envs.perceive = True
    rng = np.random.default_rng(0)
    steps = [envs.reset(seed=0).perceptions]
    for _ in range(batches - 1):
        steps.append(envs.step(rng.integers(0, envs.num_actions, num_envs)).perceptions)
    return steps


def best_us(work, items: list, repeats: int) -> float:
    """Best pass over `items`, in us per item."""
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            work(item)
        best = min(best, (time.perf_counter() - start) / len(items))
    return 1e6 * best


def arguments(doc: str) -> argparse.Namespace:
    """The options of a message benchmark (this one and suggestion_messages.py)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument('--tasks', nargs='+', default=['MiniGrid-SimpleDoorKey-v0', 'MiniGrid-DoorKey-8x8-v0'])
    parser.add_argument('--num-envs', type=int, default=16)
    parser.add_argument('--batches', type=int, default=200)
    parser.add_argument('--repeats', type=int, default=5)
    return parser.parse_args()


def main():
    args = arguments(__doc__)
    stamp = Time(sec=1)
    print(f'us per env-step (batches of {args.num_envs}), best of {args.repeats}')
    print(f'{"task":28} {"objects":>7} {"build":>6} {"serialise":>9} {"deserialise":>11} {"read":>6} {"total":>6} '
          f'{"bytes":>6}')
    for task in args.tasks:
        steps = recorded_perceptions(task, args.num_envs, args.batches)
        msgs = [perception_batch_msg(p, seq, stamp) for seq, p in enumerate(steps)]
        raw = [serialize_message(m) for m in msgs]
        read = [(m, [p.mission for p in s]) for m, s in zip(msgs, steps)]  # the missions come in the step batch
        times = [best_us(lambda p: perception_batch_msg(p, 0, stamp), steps, args.repeats),
                 best_us(serialize_message, msgs, args.repeats),
                 best_us(lambda data: deserialize_message(data, PerceptionBatch), raw, args.repeats),
                 best_us(lambda pair: perceptions_from_msg(*pair), read, args.repeats)]
        assert [perceptions_from_msg(*pair) for pair in read] == steps  # what is read is what was sent
        per_env = [t / args.num_envs for t in times]
        objects = sum(len(p.objects) for s in steps for p in s) / (len(steps) * args.num_envs)
        print(f'{task:28} {objects:7.1f} ' + ' '.join(f'{t:{w}.1f}' for t, w in zip(per_env, (6, 9, 11, 6)))
              + f' {sum(per_env):6.1f} {np.mean([len(r) for r in raw]) / args.num_envs:6.0f}')


if __name__ == '__main__':
    main()
