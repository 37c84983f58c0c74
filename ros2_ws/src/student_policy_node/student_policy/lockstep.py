"""The learner side of the lock-step protocol (llm_teacher_common.lockstep), as a plain class (no
rclpy): the one PPO loop that `train()` (in-process) and `student_node` (through the ROS graph)
both drive.

For each step batch the learner records the rewards of its previous actions, updates once every
env group has filled its rows of the rollout, and answers with actions for the batch. Teacher
suggestions attach to the stored sample of their (epoch, seq) whenever they arrive before that
rollout's update; ones that beat their step batch wait for it.

Everything that comes in is checked first: a batch of the wrong size, shape or with non-finite
numbers is refused (counted, never stepped into the learner). A new epoch in a group means the
simulator restarted: that group's unfinished rows of the rollout are dropped and it starts again
from the new batch.
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from llm_teacher_common.families import family_of_task
from llm_teacher_common.lockstep import LearnerGroups, check_step
from student_deploy.missions import mission_problem
from student_policy.callbacks import run_callbacks
from student_policy.ppo import PPOConfig, PPOLearner

EARLY_WINDOW = 64  # seqs ahead of its group's last for which an early suggestion is kept (bounds memory)
# What a first step batch may ask the learner to allocate: a rollout is num_steps x all envs x obs.
MAX_ENVS, MAX_ACTIONS, MAX_OBS_BYTES = 4096, 256, 1 << 20


@dataclass
class StepIn:
    """One step batch as the learner takes it in (from a StepBatch or an in-process vector env)."""

    seq: int
    observations: np.ndarray
    """(n, *obs_shape) uint8: after auto-reset, a new episode's first observation."""
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray
    num_actions: int
    group: int = 0
    num_groups: int = 1
    epoch: int = 0
    encoder: str = 'grid'
    missions: list[str] | None = None
    """what each env's episode asks for (read by a policy with PPOConfig.mission)."""
    decides: np.ndarray | None = None
    """(n,) bool: the envs that act on their next action (None: all; an option-level env holding its
    option ignores it: llm_teacher.option_level.OptionLevelEnv.choosing)."""


@dataclass
class ActionsOut:
    """The answer to a step batch: the actions and the distributions they were drawn from."""

    seq: int
    group: int
    epoch: int
    actions: np.ndarray
    probs: np.ndarray


@dataclass
class Counters:
    rejected_steps: int = 0
    rejected_suggestions: int = 0
    invalid_suggestions: int = 0
    restarts: int = 0
    last_error: str = ''


@dataclass
class _Rollout:
    """Per-rollout bookkeeping: which stored step each (epoch, seq) is, and suggestions waiting."""

    steps: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)  # (epoch, seq) -> (step, group)
    early: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


class LockstepLearner:
    """Drives a PPOLearner from step batches; see the module docstring.

    :param make_learner: (obs_shape, num_envs, num_actions, encoder, num_groups) -> PPOLearner, called
        on the first good batch (a node may resume one from a checkpoint there).
    :param after_update: (learner, metrics) -> bool, after each update; False ends training.
    :param log: where notable events go (a restarted simulator, a refused batch).
    :param task: the run's task id: a first batch whose encoder or action count is not its family's
        (a stale simulator of another task on the same ROS domain) is refused, not learnt from.
    :param reads_mission: the policy reads the missions (PPOConfig.mission): a batch without one
        per env is refused.
    """

    def __init__(self, make_learner: Callable[..., PPOLearner], after_update: Callable[[PPOLearner, dict], bool],
                 log: Callable[[str], None] = print, task: str = '', reads_mission: bool = False):
        self.make_learner, self.after_update, self.log, self.task = make_learner, after_update, log, task
        self.reads_mission = reads_mission
        self._last_report: tuple[float, int] = (0.0, 0)  # (time, frames) of the last report, for charts/SPS
        self.learner: PPOLearner | None = None
        self.counters = Counters()
        self.rollout = _Rollout()
        self.groups = LearnerGroups()
        self.last_actions: dict[int, ActionsOut] = {}  # group -> the actions that answered its last batch
        self.full: dict[int, StepIn] = {}  # groups done with this rollout: their next batch waits for the update
        self.done = False

    def on_step(self, step: StepIn) -> list[ActionsOut]:
        """Take in a step batch; the action batches to send (none, this one's, or, after an update,
        those of every group that waited for it). A resent batch gets its actions again."""
        if self.done:
            return []
        error = self.check(step)
        if error:
            self.counters.rejected_steps += 1
            self.counters.last_error = f'step batch {step.seq} refused: {error}'
            self.log(self.counters.last_error)
            return []
        group = step.group
        if self.groups.restarted(group, step.epoch):
            self.restart(group)
        if self.groups.is_resend(group, step.seq):
            last = self.last_actions.get(group)
            return [last] if last is not None and last.seq == step.seq else []  # our answer was lost
        if self.learner is None:
            try:
                self.learner = self.make_learner(step.observations.shape[1:], len(step.rewards) * step.num_groups,
                                                 step.num_actions, step.encoder, step.num_groups)
            except ValueError as err:  # an observation no encoder takes
                self.counters.rejected_steps += 1
                self.counters.last_error = f'step batch {step.seq} refused: {err}'
                self.log(self.counters.last_error)
                self.groups = LearnerGroups()  # the next batch is a first one again
                return []
            self._last_report = (time.perf_counter(), self.learner.frames)  # a resumed learner counts on
        elif group in self.last_actions:
            self.learner.record(step.rewards.astype(np.float32), step.terminated | step.truncated, step.success, group)
            del self.last_actions[group]
            if self.learner.storage.group_full(group):
                # With env groups, the first to finish the rollout waits here for the others.
                self.full[group] = step
                if not self.learner.storage.full:
                    return []
                waiting = [self.full.pop(g) for g in sorted(self.full)]
                missions = [m for s in waiting for m in s.missions] if self.reads_mission else None
                if not self.update(np.concatenate([s.observations for s in waiting]), missions):
                    return []
                return [self.act(s) for s in waiting]
        return [self.act(step)]

    def on_suggestions(self, epoch: int, seq: int, group: int, probs: np.ndarray, mask: np.ndarray) -> None:
        """A teacher's action distributions (N, A) and where they hold (N,) for step batch (epoch, seq)."""
        if self.learner is None:
            return  # nothing acted on yet
        if len(mask) != self.learner.storage.group_size or probs.shape[1:] != (self.learner.num_actions,):
            self.counters.rejected_suggestions += 1
            return
        stored = self.rollout.steps.get((epoch, seq))
        if stored is not None:
            step, stored_group = stored
            self.learner.attach_teacher(step, probs, mask, stored_group)
        elif self.groups.may_come(group, epoch, seq, EARLY_WINDOW * self.learner.storage.num_groups):
            self.rollout.early[(epoch, seq)] = (probs, mask)

    def check(self, step: StepIn) -> str | None:
        """Why a step batch cannot go into the learner, or None."""
        error = check_step(len(step.rewards), {'observations': len(step.observations), 'terminated': len(step.terminated),
                                               'truncated': len(step.truncated), 'success flags': len(step.success)},
                           step.group, step.num_groups, step.rewards)
        if error is not None:
            return error
        if step.decides is not None and len(step.decides) != len(step.rewards):
            return f'{len(step.decides)} decision flags for {len(step.rewards)} envs'
        if self.reads_mission and len(step.missions or ()) != len(step.rewards):
            return (f'the policy reads the mission, but the batch carries {len(step.missions or ())} missions for '
                    f'{len(step.rewards)} envs: a simulator that does not send them (one from before missions '
                    f'were sent?), or train with mission off')
        if self.reads_mission:
            problem = next(filter(None, map(mission_problem, step.missions)), '')
            if problem:
                return problem

        got = (tuple(step.observations.shape[1:]), len(step.rewards), step.num_groups, step.num_actions)
        if self.learner is not None:
            expected = (tuple(self.learner.policy.obs_shape), self.learner.storage.group_size,
                        self.learner.storage.num_groups, self.learner.num_actions)
            if got != expected:
                return (f'(obs shape, envs per group, groups, actions) {got} differ from the learner\'s {expected}; '
                        f'a simulator with other settings needs another run directory')
            return None
        # The first batch sizes the learner: refuse what no simulator of this run sends.
        if (len(step.rewards) * step.num_groups > MAX_ENVS or not 0 < step.num_actions <= MAX_ACTIONS
                or not 0 < step.observations[0].nbytes <= MAX_OBS_BYTES):
            return (f'(obs shape, envs per group, groups, actions) {got}: more than {MAX_ENVS} envs, '
                    f'{MAX_ACTIONS} actions or {MAX_OBS_BYTES} bytes an observation')
        if self.task:
            family = family_of_task(self.task)
            if step.encoder not in family.encoders or step.num_actions != len(family.action_names):
                return (f'its {step.encoder} observations and {step.num_actions} actions are not those of task '
                        f'{self.task} ({" or ".join(family.encoders)}, {len(family.action_names)}): a simulator of another task '
                        f'on this ROS domain? Stop it, or give this run its own ROS_DOMAIN_ID')
        return None

    def restart(self, group: int) -> None:
        """The simulator of `group` restarted: drop the group's unfinished rollout rows and episodes."""
        self.counters.restarts += 1
        self.log(f'env group {group}: the simulator restarted (new epoch {self.groups.epochs[group]:x}); '
                 f'dropping its unfinished rollout and starting again from its new batch')
        self.last_actions.pop(group, None)
        self.full.pop(group, None)
        self.rollout.steps = {k: v for k, v in self.rollout.steps.items() if v[1] != group}
        if self.learner is not None:
            self.learner.drop_group_rollout(group)

    def act(self, step: StepIn) -> ActionsOut:
        group, learner = step.group, self.learner
        key = (step.epoch, step.seq)
        self.rollout.steps[key] = (learner.storage.steps[group], group)
        actions = learner.act(step.observations, group=group, missions=step.missions, decides=step.decides)
        early = self.rollout.early.pop(key, None)
        if early is not None:
            learner.attach_teacher(learner.storage.steps[group], *early, group)
        oldest = min(self.groups.last_seq.values())
        self.rollout.early = {k: v for k, v in self.rollout.early.items() if k[1] > oldest}
        out = ActionsOut(step.seq, group, step.epoch, actions, learner.last_probs)
        self.last_actions[group] = out
        return out

    def update(self, next_obs: np.ndarray, next_missions: list[str] | None) -> bool:
        """Update on the full rollout, then after_update; False when training is over."""
        self.rollout.steps.clear()  # suggestions for the used rollout come too late now
        learner = self.learner
        metrics = learner.update(next_obs, next_missions)
        metrics['charts/frames'] = learner.frames
        now = time.perf_counter()  # frames/s of training, acting and updating
        metrics['charts/SPS'] = (learner.frames - self._last_report[1]) / max(now - self._last_report[0], 1e-9)
        self._last_report = (now, learner.frames)
        metrics.update({'faults/rejected_step_batches': self.counters.rejected_steps,
                        'faults/invalid_suggestions': self.counters.invalid_suggestions,
                        'faults/rejected_suggestion_batches': self.counters.rejected_suggestions,
                        'faults/sim_restarts': self.counters.restarts})
        keep_going = self.after_update(learner, metrics)
        self.done = learner.frames >= learner.config.total_frames or not keep_going
        return not self.done


def train(config: PPOConfig, envs, teacher=None, callbacks=(), learner: PPOLearner | None = None) -> PPOLearner:
    """Train in-process on a `MiniGridVecEnv`-like `envs` until `config.total_frames`, through the
    same lock-step loop the student node runs.

    :param teacher: optional callable(VecStep) -> (probs (N, A) float32, mask (N,) bool): the
        teacher's action distribution for the states of that step, and where it has one.
    :param callbacks: callables(learner, metrics) -> bool run after each update; False stops training.
    :param learner: continue this learner (e.g. restored from a checkpoint) instead of a new one.
    """
    if learner is not None and learner.frames >= config.total_frames:
        return learner
    loop = LockstepLearner(
        lambda obs_shape, num_envs, num_actions, *_: learner or PPOLearner(config, obs_shape, num_envs, num_actions),
        lambda trained, metrics: run_callbacks(callbacks, trained, metrics), reads_mission=config.mission)
    step = envs.reset(seed=config.seed + (learner.updates if learner else 0) * envs.num_envs)
    for seq in itertools.count():
        answers = loop.on_step(StepIn(seq, step.observations, step.rewards, step.terminated, step.truncated,
                                      step.success, envs.num_actions, encoder=config.encoder, missions=step.missions,
                                      decides=getattr(envs, 'choosing', None)))
        if not answers:
            if not loop.done:
                raise RuntimeError(loop.counters.last_error)
            break
        if teacher is not None:
            probs, mask = teacher(step)
            loop.on_suggestions(0, seq, 0, probs, mask.astype(np.float32))
        step = envs.step(answers[0].actions)
    return loop.learner
