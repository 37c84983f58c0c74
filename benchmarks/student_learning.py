"""Plain PPO vs PPO + embedded-LLM teacher, in-process, one task and seed: success over frames.

    .venv/bin/python benchmarks/student_learning.py --task MiniGrid-SimpleDoorKey-v0 --frames 150000

Prints one line per PPO update and, at the end, frames to reach 0.5 and 0.9 (rolling success
over the last 100 episodes, sampled actions) for each arm.
"""
import argparse

import numpy as np

from habitat_bridge.minigrid.vector import MiniGridVecEnv
from llm_teacher.backends import TransformersBackend, default_cache_dir
from llm_teacher.cache import AnswerCache
from llm_teacher.mediator import Mediator
from llm_teacher.planner import Planner
from llm_teacher.teacher import Teacher
from student_policy.ppo import PPOConfig, TeacherSchedule, train


def llm_teacher():
    teacher = Teacher(Planner(TransformersBackend(), 'score'), AnswerCache(default_cache_dir() / 'answers.sqlite'),
                      Mediator.from_file())

    def suggest(step):
        probs = np.zeros((len(step.perceptions), 7), np.float32)
        mask = np.zeros(len(step.perceptions), bool)
        for i, (perception, obs) in enumerate(zip(step.perceptions, step.observations)):
            suggestion = teacher.suggest(perception, obs)
            if suggestion.valid:
                probs[i], mask[i] = suggestion.action_probs, True
        return probs, mask
    return suggest


def run(arm: str, task: str, frames: int, seed: int) -> list[tuple[int, float]]:
    envs = MiniGridVecEnv(task, 16)
    schedule = TeacherSchedule(0.0, 0.0) if arm == 'plain' else TeacherSchedule()
    curve = []

    def log(learner, metrics):
        curve.append((learner.frames, metrics['charts/success_rate']))
        print(f'{arm:6s} {learner.frames:7d} success {metrics["charts/success_rate"]:.2f} '
              f'return {metrics["charts/episodic_return"]:.3f} fps {metrics["charts/SPS"]:.0f}', flush=True)
        return True
    train(PPOConfig(total_frames=frames, seed=seed, teacher=schedule), envs,
          teacher=llm_teacher() if arm == 'llm' else None, callbacks=[log])
    return curve


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--task', default='MiniGrid-SimpleDoorKey-v0')
    parser.add_argument('--frames', type=int, default=150_000)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    curves = {arm: run(arm, args.task, args.frames, args.seed) for arm in ('llm', 'plain')}
    for arm, curve in curves.items():
        reach = {t: next((f for f, s in curve if s >= t), None) for t in (0.5, 0.9)}
        print(f'{arm}: frames to 0.5 success {reach[0.5]}, to 0.9 {reach[0.9]}, final success {curve[-1][1]:.2f}')


if __name__ == '__main__':
    main()
