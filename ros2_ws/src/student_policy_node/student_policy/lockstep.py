"""The learner side of the lock-step protocol, as a plain class (no rclpy): the one PPO loop that
`ppo.train()` (in-process) and `student_node` (through the ROS graph) both drive.

A simulator sends step batches: seq (increasing, across its env groups), the env group, an epoch
(random per simulator process start) and what followed the last actions of that group. For each
batch the learner records the rewards of its previous actions, updates once every group has
filled its rows of the rollout, and answers with actions for the batch. Teacher suggestions
attach to the stored sample of their (epoch, seq) whenever they arrive before that rollout's
update; ones that beat their step batch wait for it.

Everything that comes in is checked first: a batch of the wrong size, shape or with non-finite
numbers is refused (counted, never stepped into the learner); a suggestion that is not a
probability distribution over the actions counts as no suggestion. A new epoch in a group means
the simulator restarted: that group's unfinished rows of the rollout are dropped and it starts
again from the new batch.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # ppo.train() drives this class
    from student_policy.ppo import PPOLearner

PROBABILITY_TOLERANCE = 1e-3  # |sum - 1| a suggested action distribution may have


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


def suggestion_arrays(action_probs: list, valid: list[bool], num_actions: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(probs (N, A), mask (N,), invalid count) of N suggested action distributions: a suggestion
    counts only when valid and a distribution over the A actions (finite, >= 0, sums to 1)."""
    n = len(valid)
    probs = np.zeros((n, num_actions), np.float32)
    mask = np.zeros(n, np.float32)
    invalid = 0
    for i, (p, ok) in enumerate(zip(action_probs, valid)):
        if not ok:
            continue
        p = np.asarray(p, np.float64)
        if (p.shape != (num_actions,) or not np.isfinite(p).all() or (p < 0).any()
                or abs(p.sum() - 1.0) > PROBABILITY_TOLERANCE):
            invalid += 1
            continue
        probs[i], mask[i] = p, 1.0
    return probs, mask, invalid


class LockstepLearner:
    """Drives a PPOLearner from step batches; see the module docstring.

    :param make_learner: (obs_shape, num_envs, num_actions, encoder, num_groups) -> PPOLearner, called
        on the first good batch (a node may resume one from a checkpoint there).
    :param after_update: (learner, metrics) -> bool, after each update; False ends training.
    :param log: where notable events go (a restarted simulator, a refused batch).
    """

    def __init__(self, make_learner: Callable[..., PPOLearner], after_update: Callable[[PPOLearner, dict], bool],
                 log: Callable[[str], None] = print, overlap: bool = False):
        self.make_learner, self.after_update, self.log = make_learner, after_update, log
        # overlap: update on a worker thread while acting on the next rollout with the weights of
        # the last update (Sample Factory / IMPALA style, one update of lag at most); the last
        # rollout of the budget is updated in the foreground, so the frame count ends exact.
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix='ppo-update') if overlap else None
        self.pending: tuple[Future, int] | None = None  # (metrics, frames it trained on)
        self._last_report: tuple[float, int] = (0.0, 0)  # (time, frames) of the last report, for charts/SPS
        self.learner: PPOLearner | None = None
        self.counters = Counters()
        self.rollout = _Rollout()
        self.epochs: dict[int, int] = {}  # group -> epoch of its simulator
        self.last_seq: dict[int, int] = {}  # group -> seq of the last step batch taken in
        self.last_actions: dict[int, ActionsOut] = {}  # group -> the actions that answered it
        self.full: dict[int, StepIn] = {}  # groups done with this rollout: their next batch waits for the update
        self.done = False

    def on_step(self, step: StepIn) -> list[ActionsOut]:
        """Take in a step batch; the action batches to send (none, this one's, or, after an update,
        those of every group that waited for it). A resent batch gets its actions again."""
        if self.done:
            return []
        if self.pending is not None and self.pending[0].done():
            self.finish_update()
            if self.done:
                return []
        error = self.check(step)
        if error:
            self.counters.rejected_steps += 1
            self.counters.last_error = f'step batch {step.seq} refused: {error}'
            self.log(self.counters.last_error)
            return []
        group = step.group
        if group in self.epochs and step.epoch != self.epochs[group]:
            self.restart(group)
        self.epochs[group] = step.epoch
        if step.seq <= self.last_seq.get(group, -1):
            last = self.last_actions.get(group)
            return [last] if last is not None and last.seq == step.seq else []  # our answer was lost
        self.last_seq[group] = step.seq
        if self.learner is None:
            self.learner = self.make_learner(step.observations.shape[1:], len(step.rewards) * step.num_groups,
                                             step.num_actions, step.encoder, step.num_groups)
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
                if not self.update(np.concatenate([s.observations for s in waiting])):
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
        elif epoch == self.epochs.get(group) and seq > self.last_seq.get(group, -1):
            self.rollout.early[(epoch, seq)] = (probs, mask)

    def check(self, step: StepIn) -> str | None:
        """Why a step batch cannot go into the learner, or None."""
        n = len(step.rewards)
        if n == 0 or not all(len(a) == n for a in (step.observations, step.terminated, step.truncated, step.success)):
            return (f'{len(step.observations)} observations, {n} rewards, {len(step.terminated)} terminated, '
                    f'{len(step.truncated)} truncated, {len(step.success)} success flags: sizes must be equal and > 0')
        if not 0 <= step.group < step.num_groups:
            return f'group {step.group} is not in 0..{step.num_groups - 1}'
        if not np.isfinite(step.rewards).all():
            return f'non-finite rewards {step.rewards[~np.isfinite(step.rewards)][:3].tolist()}'
        if self.learner is not None:
            expected = (tuple(self.learner.policy.obs_shape), self.learner.storage.group_size,
                        self.learner.storage.num_groups, self.learner.num_actions)
            got = (tuple(step.observations.shape[1:]), n, step.num_groups, step.num_actions)
            if got != expected:
                return (f'(obs shape, envs per group, groups, actions) {got} differ from the learner\'s {expected}; '
                        f'a simulator with other settings needs another run directory')
        return None

    def restart(self, group: int) -> None:
        """The simulator of `group` restarted: drop the group's unfinished rollout rows and episodes."""
        self.counters.restarts += 1
        self.log(f'env group {group}: the simulator restarted (epoch {self.epochs[group]:x} -> new); '
                 f'dropping its unfinished rollout and starting again from its new batch')
        self.last_seq.pop(group, None)
        self.last_actions.pop(group, None)
        self.full.pop(group, None)
        self.rollout.steps = {k: v for k, v in self.rollout.steps.items() if v[1] != group}
        if self.learner is not None:
            self.learner.drop_group_rollout(group)

    def act(self, step: StepIn) -> ActionsOut:
        group, learner = step.group, self.learner
        key = (step.epoch, step.seq)
        self.rollout.steps[key] = (learner.storage.steps[group], group)
        actions = learner.act(step.observations, group=group)
        early = self.rollout.early.pop(key, None)
        if early is not None:
            learner.attach_teacher(learner.storage.steps[group], *early, group)
        oldest = min(self.last_seq.values())
        self.rollout.early = {k: v for k, v in self.rollout.early.items() if k[1] > oldest}
        out = ActionsOut(step.seq, group, step.epoch, actions, learner.last_probs)
        self.last_actions[group] = out
        return out

    def update(self, next_obs: np.ndarray) -> bool:
        """Update on the full rollout, then after_update; False when training is over. With
        overlap the update starts on the worker thread and this returns True at once."""
        if self.pending is not None:
            self.finish_update()  # the barrier: at most one update in flight
            if self.done:
                return False
        self.rollout.steps.clear()  # suggestions for the used rollout come too late now
        learner = self.learner
        if self.worker is not None and learner.frames < learner.config.total_frames:
            full = learner.begin_overlapped_update()
            self.pending = (self.worker.submit(learner.update, next_obs, full), learner.frames)
            return True
        return self.report(learner.update(next_obs), learner.frames)

    def finish_update(self) -> None:
        """Wait for the update in flight, act with its weights from now on, and report it."""
        future, frames = self.pending
        self.pending = None
        metrics = future.result()
        self.learner.end_overlapped_update()
        self.report(metrics, frames)

    def report(self, metrics: dict, frames: int) -> bool:
        """after_update with the fault counters; False (and done) when training is over."""
        metrics['charts/frames'] = frames  # the frames this update trained on
        now = time.perf_counter()  # frames/s of training (acting and updating; with overlap, both at once)
        metrics['charts/SPS'] = (frames - self._last_report[1]) / max(now - self._last_report[0], 1e-9)
        self._last_report = (now, frames)
        metrics.update({'faults/rejected_step_batches': self.counters.rejected_steps,
                        'faults/invalid_suggestions': self.counters.invalid_suggestions,
                        'faults/rejected_suggestion_batches': self.counters.rejected_suggestions,
                        'faults/sim_restarts': self.counters.restarts})
        keep_going = self.after_update(self.learner, metrics)
        if frames >= self.learner.config.total_frames or not keep_going:
            self.done = True
        return not self.done
