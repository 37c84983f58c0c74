"""The simulator side of the lock-step protocol, as a plain class (no rclpy); batch_sim_node is
the ROS shell around it.

Each step batch gets the next seq and waits for the action batch that answers it; one answer
steps its env group once. An answer is checked first: our epoch, our group, a waiting seq, one
action per environment, each in range. A batch left unanswered across two resend ticks is sent
again (a late subscriber, or an answer lost), and an answer repeated after a resend is harmless.
"""
from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any


class Verdict(Enum):
    STEP = 'step'
    IGNORE = 'ignore'  # not ours (another sim's group) or already stepped: silently dropped
    REJECT = 'reject'  # malformed or stale: logged and counted


class LockstepSim:
    """Bookkeeping of the step batches of the env groups one sim process hosts."""

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
