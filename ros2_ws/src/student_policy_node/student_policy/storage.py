"""Preallocated rollout storage (T, N, ...) and generalised advantage estimation."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


def compute_gae(rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, last_values: np.ndarray,
                gamma: float, gae_lambda: float) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and returns by GAE (Schulman et al. 2016) over a (T, N) rollout.

    :param rewards: (T, N) reward received after the action at step t.
    :param values: (T, N) V(s_t) predicted when acting.
    :param dones: (T, N) 1 where the episode ended after the action at step t (s_{t+1} is a new
        episode's first state, so nothing is bootstrapped across it).
    :param last_values: (N,) V(s_T) of the states after the rollout.
    :returns: (advantages, returns), both (T, N) float32; returns = advantages + values.
    """
    steps = rewards.shape[0]
    advantages = np.zeros_like(rewards, dtype=np.float32)
    next_advantage = np.zeros(rewards.shape[1], np.float32)
    next_values = last_values
    for t in reversed(range(steps)):
        not_done = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_values * not_done - values[t]
        next_advantage = delta + gamma * gae_lambda * not_done * next_advantage
        advantages[t] = next_advantage
        next_values = values[t]
    return advantages, advantages + values


class Minibatch(NamedTuple):
    """Samples as sequences (L, B, ...) of L consecutive steps of one env each, from the state the
    policy acted from at each sequence's first step: L = 1 for a reactive policy (single samples)."""

    state: torch.Tensor  # (B, H) the acting state at each sequence's first step (H = 0: a reactive policy)
    starts: torch.Tensor  # (L, B) 1 where an episode starts: the state is zeroed before that step
    obs: torch.Tensor
    missions: torch.Tensor  # (L, B, MISSION_LENGTH) token ids; (L, B, 0) for a policy that reads no mission
    actions: torch.Tensor
    logprobs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    values: torch.Tensor
    teacher_probs: torch.Tensor
    teacher_mask: torch.Tensor
    decides: torch.Tensor


class RolloutStorage:
    """One rollout of `num_steps` lock-steps of `num_envs` environments, in `num_groups` equal
    groups of columns that fill at their own pace (double-buffered sampling)."""

    def __init__(self, num_steps: int, num_envs: int, obs_shape: tuple[int, ...], num_actions: int,
                 num_groups: int = 1, state_size: int = 0, mission_length: int = 0):
        if num_groups < 1 or num_envs % num_groups:
            raise ValueError(f'{num_envs} environments do not split into {num_groups} equal groups')
        shape = (num_steps, num_envs)
        self.num_steps, self.num_envs, self.num_groups = num_steps, num_envs, num_groups
        self.group_size = num_envs // num_groups
        self.obs = np.zeros(shape + tuple(obs_shape), np.uint8)
        self.missions = np.zeros(shape + (mission_length,), np.uint8)  # token ids (< 256 words)
        self.actions = np.zeros(shape, np.int64)
        self.logprobs = np.zeros(shape, np.float32)
        self.values = np.zeros(shape, np.float32)
        self.rewards = np.zeros(shape, np.float32)
        self.dones = np.zeros(shape, np.float32)
        self.teacher_probs = np.zeros(shape + (num_actions,), np.float32)
        self.teacher_mask = np.zeros(shape, np.float32)
        # 0 where the env ignored the action (an option-level env holding its option): no choice to learn from.
        self.decides = np.ones(shape, np.float32)
        self.starts = np.zeros(shape, np.float32)
        self.states = np.zeros(shape + (state_size,), np.float32)  # what the policy acted from (zeros at a start)
        self.steps = [0] * num_groups  # per group, the next step to fill

    def columns(self, group: int) -> slice:
        return slice(group * self.group_size, (group + 1) * self.group_size)

    def group_full(self, group: int) -> bool:
        return self.steps[group] == self.num_steps

    @property
    def full(self) -> bool:
        return all(step == self.num_steps for step in self.steps)

    def sequences(self, sequence: int, **extra: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The rollout cut into aligned chunks of `sequence` consecutive steps of one env: the state
        stored at each chunk's first step (chunks * N, H), and each per-step array (with `extra`
        (T, N, ...) arrays such as advantages) as (L, chunks * N, ...)."""
        if sequence < 1 or self.num_steps % sequence:
            raise ValueError(f'a rollout of {self.num_steps} steps does not cut into sequences of {sequence}')
        chunks = self.num_steps // sequence

        def by_chunk(v: np.ndarray) -> np.ndarray:  # (T, N, ...) -> (L, chunks * N, ...)
            return v.reshape(chunks, sequence, *v.shape[1:]).swapaxes(0, 1).reshape(
                sequence, chunks * self.num_envs, *v.shape[2:])

        per_step = {'starts': self.starts, 'obs': self.obs, 'missions': self.missions, 'actions': self.actions,
                    'logprobs': self.logprobs, 'values': self.values, 'teacher_probs': self.teacher_probs,
                    'teacher_mask': self.teacher_mask, 'decides': self.decides, **extra}
        first_states = self.states[::sequence].reshape(chunks * self.num_envs, self.states.shape[-1])
        return first_states, {k: by_chunk(v) for k, v in per_step.items()}



def minibatches(first_states: np.ndarray, per_step: dict[str, np.ndarray], minibatch_size: int, epochs: int,
                rng: np.random.Generator, device: torch.device | str = 'cpu'):
    """`epochs` passes of shuffled minibatches of about `minibatch_size` samples of a rollout cut
    into sequences (RolloutStorage.sequences, with advantages and returns), as torch tensors on
    `device`: several envs' sequences mixed in a minibatch, each with the state stored at its first
    step (truncated back-propagation through time, as Sample Factory's `recurrence`). Sequences of
    one step: single samples (a reactive policy)."""
    per_minibatch = max(1, minibatch_size // len(per_step['starts']))
    for _ in range(epochs):
        order = rng.permutation(len(first_states))
        for start in range(0, len(order), per_minibatch):
            index = order[start:start + per_minibatch]
            yield Minibatch(torch.from_numpy(first_states[index]).to(device),
                            **{k: torch.from_numpy(v[:, index]).to(device) for k, v in per_step.items()})


class TeacherLabels(NamedTuple):
    """Teacher-labelled sequences (L, B, ...) drawn from a TeacherReplay."""

    state: torch.Tensor
    starts: torch.Tensor
    obs: torch.Tensor
    missions: torch.Tensor
    teacher_probs: torch.Tensor
    teacher_mask: torch.Tensor


class TeacherReplay:
    """The teacher-labelled sequences of past rollouts, for the teacher term to revisit (DAgger's
    aggregate of every labelled state, where PPO alone uses each label in one rollout's epochs and
    drops it): a ring of the last `frames` / `sequence` sequences that carry a suggestion. Kept in
    memory only (a resumed run starts it empty): at 48x48 rgbd + map a frame takes 18 KB."""

    FIELDS = ('starts', 'obs', 'missions', 'teacher_probs', 'teacher_mask')

    def __init__(self, frames: int, sequence: int):
        self.capacity, self.sequence = max(1, frames // sequence), sequence
        self.states: np.ndarray | None = None
        self.per_step: dict[str, np.ndarray] = {}  # (capacity, L, ...) each, made at the first add
        self.size = self.next = 0

    def add(self, first_states: np.ndarray, per_step: dict[str, np.ndarray]) -> None:
        """Keep the sequences of a full rollout (RolloutStorage.sequences, of `sequence` steps) that
        carry at least one suggestion where the env chose (the oldest go first when the ring is full)."""
        per_step = {**per_step, 'teacher_mask': per_step['teacher_mask'] * per_step['decides']}
        labelled = np.flatnonzero(per_step['teacher_mask'].any(axis=0))[-self.capacity:]
        if not len(labelled):
            return
        if self.states is None:
            self.states = np.zeros((self.capacity,) + first_states.shape[1:], first_states.dtype)
            self.per_step = {k: np.zeros((self.capacity, self.sequence) + per_step[k].shape[2:], per_step[k].dtype)
                             for k in self.FIELDS}
        slots = (self.next + np.arange(len(labelled))) % self.capacity
        self.states[slots] = first_states[labelled]
        for k in self.FIELDS:
            self.per_step[k][slots] = per_step[k][:, labelled].swapaxes(0, 1)
        self.next = int(slots[-1] + 1) % self.capacity
        self.size = min(self.size + len(labelled), self.capacity)

    @property
    def frames(self) -> int:
        return self.size * self.sequence

    def sample(self, count: int, rng: np.random.Generator, device: torch.device | str = 'cpu') -> TeacherLabels:
        """`count` sequences drawn uniformly (with replacement) from those kept."""
        if not self.size:
            raise ValueError('the teacher replay is empty: add() a rollout with suggestions first')
        index = rng.integers(0, self.size, count)
        def batch(v: np.ndarray) -> torch.Tensor:  # (count, L, ...) -> (L, count, ...), contiguous for the CNN
            return torch.from_numpy(np.ascontiguousarray(v[index].swapaxes(0, 1))).to(device)

        return TeacherLabels(torch.from_numpy(self.states[index]).to(device),
                             **{k: batch(self.per_step[k]) for k in self.FIELDS})
