"""Success of exported option-level policies when each option they choose is held for k frames
(llm_teacher.option_level.OptionLevelEnv(hold=k)), on held-out seeds: the measurement behind
robot_policy_node's option_hold (llm_teacher_common.options.OPTION_HOLD).

    .venv/bin/python benchmarks/option_hold.py --holds 1 8 --seed 20000 \
        --policies docs/results/option-study-goto/runs/MiniWorld-GoToObject-v0/llm-seed*-policy.pt

One line of JSON per policy and hold (greedy and/or sampled success over --episodes seeds from --seed,
with 95% Wilson intervals), also appended to --out.
"""
from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch

from llm_teacher.option_level import OptionLevelEnv
from student_deploy.inference import load_policy
from student_policy.evaluate import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--policies', type=Path, nargs='+', required=True, help='exported option-level policies (.pt)')
    parser.add_argument('--holds', type=int, nargs='+', default=[1, 8], help='frames each chosen option is held')
    parser.add_argument('--episodes', type=int, default=50)
    parser.add_argument('--seed', type=int, default=20_000, help='first held-out seed (training: 0.., evaluation: 10000..)')
    parser.add_argument('--modes', nargs='+', default=['greedy', 'sampled'], choices=['greedy', 'sampled'])
    parser.add_argument('--out', type=Path, help='a .jsonl file the lines are appended to')
    args = parser.parse_args()
    torch.set_num_threads(1)
    for path in args.policies:
        policy = load_policy(path)
        if not policy.info.chooses_options:
            raise SystemExit(f'{path} chooses motions, not options: nothing to hold')
        size = policy.info.obs_shape[0]
        env_options = {'width': size, 'height': size, 'observation': 'rgbd_map'}
        for hold in args.holds:
            start = time.perf_counter()
            line = {'policy': str(path), 'task': policy.info.task, 'hold': hold, 'episodes': args.episodes,
                    'seeds': [args.seed, args.seed + args.episodes - 1]}
            for mode in args.modes:
                result = evaluate(policy, policy.info.task, args.episodes, seed=args.seed, greedy=mode == 'greedy',
                                  env_options=env_options, wrap_envs=functools.partial(OptionLevelEnv, hold=hold))
                line[mode] = {key: result[key] for key in ('success_rate', 'interval95')}
            line['seconds'] = round(time.perf_counter() - start, 1)
            print(json.dumps(line), flush=True)
            if args.out:
                with args.out.open('a') as f:
                    f.write(json.dumps(line) + '\n')


if __name__ == '__main__':
    main()
