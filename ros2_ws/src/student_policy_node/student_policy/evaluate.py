"""Run an exported student policy on seeded episodes (greedy, or sampled): success rate and mean return.

    python -m student_policy.evaluate runs/train/policy.pt --task MiniGrid-SimpleDoorKey-v0 --episodes 100

Evaluates the file a deploy node loads (policy.pt, or policy.onnx), so the figure is that of what ships.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import deque

import numpy as np
import torch

from habitat_bridge.vector import make_vec_env
from llm_teacher_common.stats import wilson_interval
from student_deploy.inference import choose_actions, load_policy


def evaluate(policy, task: str, episodes: int, seed: int = 10_000, num_envs: int = 16, greedy: bool = True,
             env_options: dict | None = None, wrap_envs=None) -> dict:
    """One episode on each seed seed .. seed + episodes - 1 (env i plays seeds i, i + n, ...);
    greedy or sampled. env_options go to the vector env (e.g. an embodied camera's width and height).
    wrap_envs: a callable that wraps the vector env, e.g. llm_teacher.option_level.OptionLevelEnv
    for a policy that chooses options (the teacher's package depends on this one, not back).

    `policy` acts as an exported one does (inference.Policy, or networks.ActorCritic):
    step(obs, state, mission tokens) -> (logits, state), its state zeroed at each episode's start.

    Every seed's episode counts, however long: counting the first `episodes` episodes to end
    instead would favour short ones (quick successes) and overstate success. `loops` counts the
    failed episodes that ended in a loop (see ends_in_loop): how a greedy policy without memory fails."""
    n = min(num_envs, episodes)
    envs = make_vec_env(task, n, perceive=False, **(env_options or {}))
    if wrap_envs is not None:
        envs = wrap_envs(envs)
    step = envs.reset(seed=seed)
    played = np.zeros(n, int)  # episodes env i has finished; it plays seed + i + n * played[i] now
    returns, successes = np.zeros(episodes), np.zeros(episodes, bool)
    episode_return = np.zeros(n)
    recent = [deque(maxlen=LOOP_WINDOW) for _ in range(n)]  # each env's last actions
    loops = 0
    generator = torch.Generator().manual_seed(seed)
    state = policy.initial_state(n)
    with torch.no_grad():
        while (np.arange(n) + n * played < episodes).any():
            logits, state = policy.step(torch.from_numpy(step.observations), state,
                                        policy.encode_missions(step.missions, strict=False))
            actions = choose_actions(logits, greedy, generator)
            for i in range(n):
                recent[i].append(int(actions[i]))
            step = envs.step(actions, reset_seeds=seed + np.arange(n) + n * (played + 1))
            state[torch.from_numpy(step.terminated | step.truncated)] = 0.0  # a new episode, a new memory
            episode_return += step.rewards
            for i in np.flatnonzero(step.terminated | step.truncated):
                k = i + n * played[i]  # the seed offset of the episode that ended
                if k < episodes:
                    returns[k], successes[k] = episode_return[i], step.success[i]
                    loops += not step.success[i] and ends_in_loop(recent[i])
                played[i] += 1
                recent[i].clear()
                episode_return[i] = 0.0
    envs.close()
    wins = int(successes.sum())
    return {'task': task, 'episodes': episodes, 'greedy': greedy, 'success_rate': wins / episodes,
            'interval95': wilson_interval(wins, episodes), 'mean_return': float(returns.mean()), 'loops': loops}


LOOP_WINDOW, LOOP_PERIOD = 30, 4


def ends_in_loop(actions) -> bool:
    """Whether an episode's last LOOP_WINDOW actions repeat one cycle of at most LOOP_PERIOD actions
    (left-right-left-right, toggle-toggle facing a wall): the diagnosis of docs/results.md."""
    last = list(actions)[-LOOP_WINDOW:]
    return len(last) == LOOP_WINDOW and any(
        all(last[t] == last[t + period] for t in range(LOOP_WINDOW - period)) for period in range(1, LOOP_PERIOD + 1))


def env_options_for(obs_shape: tuple[int, ...], encoder: str) -> dict:
    """The vector env options that give a policy its observations: a camera policy's image size
    and channels (rgbd, rgb, or rgbd with the map: rgbd_map); none for grid policies (the task fixes those)."""
    if encoder not in ('image', 'image_map'):
        return {}
    height, width, channels = obs_shape
    observation = 'rgbd_map' if encoder == 'image_map' else 'rgbd' if channels == 4 else 'rgb'
    return {'height': height, 'width': width, 'observation': observation}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m student_policy.evaluate', description=__doc__.splitlines()[0])
    parser.add_argument('policy', help='an exported policy.pt')
    parser.add_argument('--task', default='MiniGrid-SimpleDoorKey-v0')
    parser.add_argument('--episodes', type=int, default=100)
    parser.add_argument('--seed', type=int, default=10_000, help='evaluation seeds start here (training uses 0..)')
    parser.add_argument('--sample', action='store_true', help='sample actions from the policy instead of argmax')
    args = parser.parse_args(argv)
    try:
        policy = load_policy(args.policy)
        options = env_options_for(policy.info.obs_shape, policy.info.encoder) if policy.info else {}
        if policy.info is not None and policy.info.chooses_options:
            raise ValueError(f'{args.policy} chooses options, which the teacher\'s skills turn into motions: evaluate '
                             'it with evaluate(..., wrap_envs=llm_teacher.option_level.OptionLevelEnv)')
        result = evaluate(policy, args.task, args.episodes, args.seed, greedy=not args.sample, env_options=options)
    except ValueError as err:
        print(f'evaluate: {err}', file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
