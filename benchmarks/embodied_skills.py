"""How well the embodied skills do with the scripted-option teacher (a perfect option chooser that
reads only the perception): success with its 95% Wilson interval, mean steps, why episodes fail,
and what one skills.policy call costs. The upper bound of what an LLM can teach through them.

    .venv/bin/python benchmarks/embodied_skills.py --episodes 50 --seed 1000

Greedy: each step takes the argmax of skills.policy({scripted option: 1}). Seeds seed..seed+N-1.
"""
import argparse
import math
import time
from dataclasses import dataclass

import numpy as np

from habitat_bridge.embodied.vector import EmbodiedVecEnv
from llm_teacher_common.embodied_skills import EmbodiedSkills
from llm_teacher_common.commands import FORWARD
from llm_teacher.scripted_options import scripted_option
from llm_teacher_common.stats import rate_text

TASKS = ('MiniWorld-GoToObject-v0', 'MiniWorld-GoToRedBall-v0', 'MiniWorld-PutNext-v0')
WINDOW = 60  # last steps of a failed episode that say why it failed


@dataclass
class Episode:
    seed: int
    success: bool
    steps: int
    reason: str  # '' on success
    policy_ms: float  # mean per skills.policy call


def run_episode(envs: EmbodiedVecEnv, skills: EmbodiedSkills, seed: int) -> Episode:
    step = envs.reset(seed=seed)
    poses, actions, options, policy_s = [], [], [], 0.0
    while True:
        perception = step.perceptions[0]
        option = scripted_option(perception)
        start = time.perf_counter()
        probs = skills.policy({option: 1.0}, perception)
        policy_s += time.perf_counter() - start
        poses.append((perception.x, perception.y, perception.heading))
        actions.append(int(np.argmax(probs)))
        options.append(option.text)
        step = envs.step(np.array(actions[-1:]))
        if step.terminated[0] or step.truncated[0]:
            break
    success = bool(step.success[0])
    reason = '' if success else failure_reason(poses, actions, options)
    return Episode(seed, success, len(actions), reason, 1e3 * policy_s / len(actions))


def failure_reason(poses, actions, options) -> str:
    """Why the episode ran out of time, from the robot's own trace over its last WINDOW steps."""
    pose, action = np.array(poses[-WINDOW:]), np.array(actions[-WINDOW:])
    moved = np.hypot(*np.diff(pose[:, :2], axis=0).T)
    blocked = (action[:-1] == FORWARD) & (moved < 0.01)
    spread = np.hypot(*(pose[:, :2] - pose[:, :2].mean(axis=0)).T).max()
    last = options[-1]
    if all(o == 'explore' for o in options):
        return 'never saw the target (explore)'
    if blocked.sum() > WINDOW / 4:
        return f'stuck pushing ({last})'
    if spread < 1.0:
        return f'dithering in place ({last})'
    return f'timeout, still moving ({last})'


def evaluate(task: str, episodes: int, seed: int, verbose: bool) -> list[Episode]:
    envs = EmbodiedVecEnv(task, 1)
    skills = EmbodiedSkills(envs.envs[0].turn_angle)
    results = []
    for k in range(episodes):
        results.append(run_episode(envs, skills, seed + k))
        if verbose:
            r = results[-1]
            print(f'  {task} seed {r.seed}: {"ok " if r.success else "FAIL"} {r.steps:4d} steps {r.reason}', flush=True)
    envs.close()
    return results


def report(task: str, results: list[Episode]) -> None:
    successes = sum(r.success for r in results)
    reasons = {}
    for r in results:
        if not r.success:
            reasons.setdefault(r.reason, []).append(r.seed)
    steps = [r.steps for r in results if r.success]
    print(f'{task}: success {rate_text(successes, len(results))}; mean steps of successes '
          f'{np.mean(steps) if steps else math.nan:.0f}; '
          f'skills.policy {np.mean([r.policy_ms for r in results]):.2f} ms/call')
    for reason, seeds in sorted(reasons.items()):
        print(f'  {len(seeds):2d} x {reason}: seeds {seeds}')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--episodes', type=int, default=50)
    parser.add_argument('--seed', type=int, default=1000, help='first seed')
    parser.add_argument('--task', choices=TASKS, action='append', help='default: both')
    parser.add_argument('--verbose', action='store_true', help='a line per episode')
    args = parser.parse_args()
    for task in args.task or TASKS:
        report(task, evaluate(task, args.episodes, args.seed, args.verbose))


if __name__ == '__main__':
    main()
