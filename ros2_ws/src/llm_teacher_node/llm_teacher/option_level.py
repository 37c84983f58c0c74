"""An option-level student: it chooses among the teacher's options and the embodied skills act
below it, as a robot's navigation stack would act on a planner's goal.

Why it exists: a camera student cannot copy the skills' actions, which are the first moves of
shortest paths on the robot's map (docs/results.md, "Can a camera student imitate its teacher?":
0.56 closed-loop at best, from 100k labels). Choosing the option is what the LLM teaches; the
student learns that choice, with PPO and the teacher term over options instead of motions.

The options a student chooses among are fixed by its mission's roles (mission_options): explore;
go to each object the mission names; and, where it moves one, pick that one up and drop it. Each
is what llm_teacher.options offers the LLM, by the same text, so the teacher's distribution over
options maps onto them one to one.

On a robot such a policy needs the map, a detector and these skills on board, not only a
camera: robot_policy_node runs them (student_deploy.robot_control.CameraPolicy), for missions that
name one object to go to.
"""
from __future__ import annotations

import functools

import numpy as np

from llm_teacher_common.embodied_skills import EmbodiedSkills
from llm_teacher_common.options import mission_options
from llm_teacher.scripted_options import scripted_option
from llm_teacher_common.steps import VecStep


class OptionLevelEnv:
    """An embodied vector env whose actions are options: each step, env i runs the skill of option
    actions[i] of its mission (mission_options) for one motion. Steps, observations and
    perceptions are the wrapped env's (it perceives: the skills need the map).

    hold: an env takes a new option only every `hold` steps of an episode (from its first), and
    runs the one it holds in between, whatever the action says (`choosing` says which envs take
    theirs next step; student_policy.lockstep.train learns no choice where they do not). A policy
    acts with llm_teacher_common.options.OPTION_HOLD, as on a robot.
    """

    def __init__(self, envs, skills: EmbodiedSkills | None = None, hold: int = 1):
        if int(hold) != hold or hold < 1:
            raise ValueError(f'hold must be a whole number of steps >= 1, got {hold!r}')
        self.robots, self.skills, self.hold = envs, skills or EmbodiedSkills(), hold
        self._held = np.zeros(envs.num_envs, int)  # each env's option, and the steps it has held it
        self._age = np.zeros(envs.num_envs, int)
        envs.perceive = True
        step = envs.reset(seed=0)  # the task's missions say how many options (training resets it again)
        self.num_actions = len(mission_options(step.missions[0]))
        self._keep(step)

    def __getattr__(self, name):  # num_envs, observation, observation_space, task, close, ...: the wrapped env's
        return getattr(self.robots, name)

    def reset(self, seed: int | None = None) -> VecStep:
        self._age[:] = 0
        return self._keep(self.robots.reset(seed))

    @property
    def choosing(self) -> np.ndarray:
        """(num_envs,) bool: the envs that take a new option from the next step's actions."""
        return self._age % self.hold == 0

    def step(self, actions: np.ndarray, reset_seeds: np.ndarray | None = None) -> VecStep:
        choose = self.choosing
        self._held[choose] = np.asarray(actions)[choose]
        motions = np.array([self.motion(p, int(a)) for p, a in zip(self._perceptions, self._held)])
        step = self.robots.step(motions, reset_seeds)
        self._age = np.where(step.terminated | step.truncated, 0, self._age + 1)  # a new episode chooses at once
        return self._keep(step)

    def motion(self, perception, index: int) -> int:
        """The motion option `index` of the perception's mission takes now (the skill's fallback,
        turn left, where the option has nothing to do)."""
        return self.skills.motion(mission_options(perception.mission)[index], perception)

    def _keep(self, step: VecStep) -> VecStep:
        other = [p.mission for p in step.perceptions if len(mission_options(p.mission)) != self.num_actions]
        if other:
            raise ValueError(f'{self.robots.task}: the mission {other[0]!r} has another number of options than '
                             f'{self.num_actions}: an option-level student needs the same options in every episode')
        self._perceptions = step.perceptions
        return step


def over_options(option_probs: dict[str, float], mission: str) -> np.ndarray | None:
    """A teacher's distribution over options (by their text) as one over the mission's options
    (mission_options); None when it gives none of them weight. Any drop is the student's drop:
    its skill drops what the robot holds (a wrong object, picked up in passing, anywhere)."""
    index, drop = _option_index(mission)
    probs = np.zeros(len(index), np.float32)
    for text, p in option_probs.items():
        i = index.get(text, drop if text.startswith('drop ') else None)
        if i is not None:
            probs[i] += p
    return probs / probs.sum() if probs.sum() > 0 else None


@functools.lru_cache(maxsize=256)
def _option_index(mission: str) -> tuple[dict[str, int], int | None]:
    """({option text: its index among the mission's options}, the index of its drop or None)."""
    options = mission_options(mission)
    return ({option.text: i for i, option in enumerate(options)},
            next((i for i, option in enumerate(options) if option.verb == 'drop'), None))


def option_teacher(choose):
    """In-process training's teacher (student_policy.lockstep.train) over options, from
    `choose(perception, observation) -> {option text: p}, or None` (None: no suggestion yet)."""
    def suggest(step: VecStep) -> tuple[np.ndarray, np.ndarray]:
        n = len(step.perceptions)
        probs = np.zeros((n, len(mission_options(step.perceptions[0].mission))), np.float32)
        mask = np.zeros(n, bool)
        for i, (perception, obs) in enumerate(zip(step.perceptions, step.observations)):
            chosen = choose(perception, obs)
            over = over_options(chosen, perception.mission) if chosen else None
            if over is not None:
                probs[i], mask[i] = over, True
        return probs, mask
    return suggest


def scripted_option_teacher():
    """The scripted-option teacher over options: the option llm_teacher.scripted_options chooses."""
    return option_teacher(lambda perception, _: {scripted_option(perception).text: 1.0})


def llm_option_teacher(teacher):
    """An llm_teacher.teacher.Teacher's option distribution (its answer for the perceived state;
    none while the LLM has not answered)."""
    def choose(perception, obs):
        suggestion = teacher.suggest(perception, obs)
        return dict(zip(suggestion.options, suggestion.option_probs)) if suggestion.valid else None
    return option_teacher(choose)
