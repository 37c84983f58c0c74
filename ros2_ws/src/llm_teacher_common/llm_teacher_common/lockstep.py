"""The lock-step protocol between simulators and the learner: its rules, in one place both sides import.

A simulator process hosts one or more env groups of a run's `num_groups`, and draws a random
`epoch` at each start. Every step batch it publishes gets the next `seq` (increasing across its
groups) and waits for the action batch that answers it; one answer steps its group once.
- Simulator side (`LockstepSim`): an answer steps its group only when it carries this sim's
  epoch, a waiting seq of that group, one action per environment, each in range. Not ours
  (another sim's group) or already stepped: ignored. A batch left unanswered across two resend
  ticks is sent again (a late subscriber, or a lost answer); an answer repeated after a resend is
  harmless.
- Learner side (`LearnerGroups`): a batch whose group is out of range or whose arrays disagree in
  size is refused (`check_step`); a new epoch in a group means its simulator restarted (the
  group's unfinished rollout is void); a seq at or below the group's last is a resend (answer it
  again, do not learn from it twice).
- Teacher suggestions are matched to their step batch by (epoch, seq); one that is not a
  probability distribution over the actions counts as no suggestion (`suggestion_arrays`).
"""
from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any

import numpy as np

PROBABILITY_TOLERANCE = 1e-3  # |sum - 1| a suggested action distribution may have


class Verdict(Enum):
    STEP = 'step'
    IGNORE = 'ignore'  # not ours (another sim's group) or already stepped: silently dropped
    REJECT = 'reject'  # malformed or stale: logged and counted


class LockstepSim:
    """The simulator side: bookkeeping of the step batches of the env groups one sim process hosts."""

    def __init__(self, groups: Sequence[int], group_size: int, num_actions: int, epoch: int):
        self.groups, self.group_size, self.num_actions, self.epoch = set(groups), group_size, num_actions, epoch
        self.seq = -1
        self.waiting: dict[int, tuple[int, Any]] = {}  # seq -> (group, what to resend)
        self.answered: dict[int, int] = {}  # group -> the last seq stepped
        self.rejected = 0
        self._stale_at_last_tick: set[int] = set()

    def publish(self, group: int, batches: Any) -> int:
        """A new step batch of `group` (`batches`: what a resend sends again); returns its seq."""
        self.seq += 1
        self.waiting[self.seq] = (group, batches)
        return self.seq

    def next_seq(self) -> int:
        return self.seq + 1

    def reset(self) -> None:
        """Every group starts over: batches still waiting are void (their answers get rejected)."""
        self.waiting.clear()

    def check(self, epoch: int, seq: int, group: int, actions: Sequence[int]) -> tuple[Verdict, str]:
        """Whether an action batch steps its group, and why not."""
        if group not in self.groups:
            return Verdict.IGNORE, f'group {group} is hosted by another sim'
        if epoch != self.epoch:
            return Verdict.REJECT, f'it answers another sim epoch ({epoch:x}, this sim: {self.epoch:x})'
        if self.answered.get(group) == seq:
            return Verdict.IGNORE, f'seq {seq} was already stepped'
        if seq not in self.waiting:
            return Verdict.REJECT, (f'seq {seq} does not answer a waiting step batch ({sorted(self.waiting)}): '
                                    f'stale or from the future')
        if self.waiting[seq][0] != group:
            return Verdict.REJECT, f'seq {seq} is a batch of group {self.waiting[seq][0]}, not {group}'
        if len(actions) != self.group_size:
            return Verdict.REJECT, f'{len(actions)} actions for {self.group_size} environments'
        bad = [a for a in actions if not 0 <= a < self.num_actions]
        if bad:
            return Verdict.REJECT, f'actions {list(bad[:5])} out of range 0..{self.num_actions - 1}'
        return Verdict.STEP, ''

    def take(self, epoch: int, seq: int, group: int, actions: Sequence[int]) -> tuple[Verdict, str]:
        """check(), and on STEP mark the batch answered; REJECT is counted."""
        verdict, why = self.check(epoch, seq, group, actions)
        if verdict is Verdict.STEP:
            del self.waiting[seq]
            self.answered[group] = seq
        elif verdict is Verdict.REJECT:
            self.rejected += 1
        return verdict, why

    def due_for_resend(self) -> list[Any]:
        """On each resend tick: what to send again, for the batches unanswered since the last tick."""
        stale = set(self.waiting)
        due = [self.waiting[seq][1] for seq in sorted(stale & self._stale_at_last_tick)]
        self._stale_at_last_tick = stale
        return due


def check_step(num_envs: int, sizes: dict[str, int], group: int, num_groups: int, rewards: np.ndarray) -> str | None:
    """Why a step batch of `num_envs` rows cannot be learnt from, or None.

    :param sizes: the length of each of its other per-env arrays, by name.
    """
    if num_envs == 0 or any(n != num_envs for n in sizes.values()):
        listed = ', '.join(f'{n} {name}' for name, n in sizes.items())
        return f'{num_envs} rewards, {listed}: sizes must be equal and > 0'
    if not 0 <= group < num_groups:
        return f'group {group} is not in 0..{num_groups - 1}'
    if not np.isfinite(rewards).all():
        return f'non-finite rewards {rewards[~np.isfinite(rewards)][:3].tolist()}'
    return None


class LearnerGroups:
    """The learner side: each env group's simulator epoch and last seq taken in."""

    def __init__(self):
        self.epochs: dict[int, int] = {}  # group -> epoch of its simulator
        self.last_seq: dict[int, int] = {}  # group -> seq of the last step batch taken in

    def restarted(self, group: int, epoch: int) -> bool:
        """Note the group's epoch; True when it changed (the simulator restarted: forget its seqs)."""
        changed = group in self.epochs and epoch != self.epochs[group]
        self.epochs[group] = epoch
        if changed:
            self.last_seq.pop(group, None)
        return changed

    def is_resend(self, group: int, seq: int) -> bool:
        """True for a seq already taken in; otherwise it becomes the group's last."""
        if seq <= self.last_seq.get(group, -1):
            return True
        self.last_seq[group] = seq
        return False

    def may_come(self, group: int, epoch: int, seq: int, window: int) -> bool:
        """Whether (epoch, seq) can still be a step batch of `group` within the next `window` seqs:
        a suggestion for it is worth keeping until the batch arrives."""
        last = self.last_seq.get(group, -1)
        return epoch == self.epochs.get(group) and last < seq <= last + window


def suggestion_arrays(action_probs: np.ndarray, valid: np.ndarray, num_actions: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(probs (N, A), mask (N,), invalid count) of N suggested action distributions `action_probs`
    (N, A'): a suggestion counts only when valid and a distribution over the A actions (A' == A,
    finite, >= 0, sums to 1); with A' != A every valid one is invalid."""
    valid = np.asarray(valid, bool)
    n = len(valid)
    probs = np.zeros((n, num_actions), np.float32)
    p = np.asarray(action_probs, np.float64)
    if p.shape != (n, num_actions):
        return probs, np.zeros(n, np.float32), int(valid.sum())
    with np.errstate(invalid='ignore'):  # inf - inf in a row's sum: that row is refused anyway
        sums_to_one = np.abs(p.sum(axis=1) - 1.0) <= PROBABILITY_TOLERANCE
    ok = valid & np.isfinite(p).all(axis=1) & (p >= 0).all(axis=1) & sums_to_one
    probs[ok] = p[ok]
    return probs, ok.astype(np.float32), int(valid.sum() - ok.sum())
