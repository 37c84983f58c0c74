"""PPO with a decaying distillation term towards a teacher (Zhou et al., IJCAI 2024), CleanRL style.

loss = PPO clip loss + vf_coef * value loss - ent_coef * entropy
       + lambda(frames) * mean_i w_i * CE_i(pi_teacher || pi_student)   over samples i with a suggestion

w_i = 1 in the paper ('ce'); `PPOConfig.distill` chooses other per-sample weights (see distill_weights).

`PPOLearner` holds the model and one rollout; it is driven either by `train()` below (in-process,
for tests and benchmarks) or by the student node, one step batch at a time, through the ROS graph.
"""
from __future__ import annotations

import itertools
import os
import shutil
import sys
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from student_policy.inference import torch_device
from student_policy.lockstep import LockstepLearner, StepIn
from student_policy.networks import ActorCritic, eager_copy
from student_policy.storage import RolloutStorage, compute_gae


@dataclass
class TeacherSchedule:
    """Weight lambda of the teacher term as a function of environment frames.

    Linear from `initial` to `final` over `decay_frames`, then `final` until `off_frames`, then 0.
    The defaults are the paper's (10, dropping 0.005 per PPO iteration of 256 frames to 0.1,
    removed after 3000 iterations) expressed in frames.
    """

    initial: float = 10.0
    """lambda at frame 0; initial = final = 0 gives plain PPO."""
    final: float = 0.1
    """floor reached after `decay_frames`."""
    decay_frames: int = 506_880
    """frames over which lambda falls linearly from `initial` to `final` ((10-0.1)/0.005*256)."""
    off_frames: int = 768_000
    """from this frame on the teacher term is removed (3000*256)."""

    def __post_init__(self):
        if self.initial < 0 or self.final < 0:
            raise ValueError(f'teacher weights must be >= 0, got initial={self.initial}, final={self.final}')
        if self.final > self.initial:
            raise ValueError(f'the teacher weight decays: final ({self.final}) must not exceed initial ({self.initial})')
        if self.decay_frames <= 0 or self.off_frames < 0:
            raise ValueError(f'decay_frames must be > 0 and off_frames >= 0, got {self.decay_frames}, {self.off_frames}')

    def weight(self, frames: int) -> float:
        if frames >= self.off_frames:
            return 0.0
        fraction = min(frames / self.decay_frames, 1.0)
        return self.initial + (self.final - self.initial) * fraction


DISTILL_MODES = ('ce', 'certainty', 'advantage')


def distill_weights(mode: str, teacher_probs: torch.Tensor, actions: torch.Tensor,
                    advantages: torch.Tensor) -> torch.Tensor:
    """Per-sample weight in [0, 1] of the distillation term; weight 1 is the paper's term.

    'certainty': p1 - p2, the teacher's top probability minus its second: 1 for a one-hot
        suggestion, 0 for an even split between two actions. The LLM often splits between
        'explore' and the right option; copying that split leaves the student's argmax fragile, so
        there PPO's reward decides. (Not 1 - H(pi_T)/log A: pi_T mixes one-hot skills over at most 4
        of MiniGrid's 7 actions, so that weight never fell below 0.49 on ColoredDoorKey's states.)
    'advantage': 0 where the taken action is not the teacher's choice (a most probable action) and
        its GAE advantage is > 0 (raw, before minibatch normalisation), else 1. A rollout holds
        A(s, a) for the taken action only; while the student mostly follows the teacher, V(s) is
        mostly the value of the teacher's action, so a deviation that beats V(s) is evidence the
        critic prefers it, and the teacher's pull would fight PPO reinforcing it. The converse
        (the teacher's action with A < 0) is not used: measured against a V(s) made mostly of that
        same action, its sign is noise, and masking it would drop half the teaching at random.
    """
    if mode == 'ce':
        return torch.ones_like(advantages)
    if mode == 'certainty':
        top2 = teacher_probs.topk(2, dim=-1).values
        return (top2[:, 0] - top2[:, 1]).clamp(0.0, 1.0)
    if mode == 'advantage':
        taken = teacher_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        teachers_choice = taken >= teacher_probs.max(-1).values - 1e-6
        return (teachers_choice | (advantages <= 0)).to(advantages.dtype)
    raise ValueError(f'distill must be one of {", ".join(DISTILL_MODES)}, got {mode!r}')


@dataclass
class PPOConfig:
    """Every setting of a training run; saved with each checkpoint."""

    encoder: str = 'grid'
    """observation encoder: 'grid' (MiniGrid memory maps and egocentric views) or 'image' (camera
    rgb or rgb + depth)."""
    total_frames: int = 1_000_000
    """environment frames to train for (all environments together)."""
    num_steps: int = 128
    """lock-steps per rollout; a rollout holds num_steps * num_envs frames."""
    learning_rate: float = 1e-3
    """Adam learning rate."""
    anneal_lr: bool = False
    """decay the learning rate linearly to 0 at total_frames (CleanRL's anneal_lr)."""
    gamma: float = 0.99
    """discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    update_epochs: int = 4
    """passes over each rollout."""
    minibatch_size: int = 256
    """samples per gradient step."""
    clip_coef: float = 0.2
    """PPO ratio clipping."""
    norm_adv: bool = True
    """normalise advantages per minibatch (CleanRL's default; the paper's code does not). Measured
    on SimpleDoorKey with the LLM teacher: off learns the teacher phase faster (0.73 vs 0.37
    success at 100k frames), but plain PPO on DoorKey-5x5 then collapses after solving it."""
    ent_coef: float = 0.001
    """entropy bonus (the paper's 0.001)."""
    vf_coef: float = 0.5
    """value loss weight."""
    max_grad_norm: float = 0.5
    """global gradient norm clip."""
    target_kl: float | None = None
    """once the teacher term is off, end an update's epochs early when the approximate KL to the
    rollout policy passes 1.5 x this (SB3's rule). Distillation moves the policy far on purpose, so
    the limit only applies to pure PPO updates. None: never stop early."""
    teacher: TeacherSchedule = field(default_factory=TeacherSchedule)
    """weight of the distillation term over frames."""
    seed: int = 0
    """seeds torch, numpy and the environments."""
    torch_threads: int = 1
    """torch intra-op threads: 1 is fastest for this small model on few cores."""
    overlap: bool = False
    """update on a worker thread while acting on the next rollout with the previous weights (one
    update of lag; PPO's ratio uses the stored behaviour log-probs). False: the synchronous loop."""
    device: str = 'cpu'
    """where the student learns: cpu, or cuda (a GPU; the simulators stay on the CPU). Checkpoints
    and exports are CPU tensors either way."""
    distill: str = 'ce'
    """per-sample weight of the teacher term (see distill_weights): 'ce' (1 everywhere, the paper's),
    'certainty' (the teacher's top-two probability margin: hesitant states are left to PPO), or
    'advantage' (0 where the student left the teacher's choice and it beat the critic's expectation)."""
    greedy_envs: int = 0
    """environments (the last ones of the batch) that act greedily (argmax) during training:
    probes of where the deployed, greedy policy goes. Their steps carry only the teacher term (not
    PPO's losses: their actions were not sampled from the policy), so the teacher labels the states
    a greedy loop gets stuck in, which sampled training rarely visits (DAgger on the greedy policy's
    states). Only while the teacher term is on; then they sample like the others. Their success is
    charts/greedy_success_rate; charts/success_rate counts the others."""
    compile: bool | None = None
    """torch.compile the encoder: ~1.15-1.3x frames/s once compiled, after ~10-20 s of compiling
    at the start; needs a C++ compiler. None (auto): on for budgets of COMPILE_FROM_FRAMES or more,
    where the speed-up repays the compile time, when a C++ compiler is found (else a message says
    why it is off). Checkpoints and exports are the same either way."""

    def __post_init__(self):
        if isinstance(self.teacher, dict):
            self.teacher = TeacherSchedule(**self.teacher)
        for name in ('total_frames', 'num_steps', 'update_epochs', 'minibatch_size', 'torch_threads'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be at least 1, got {getattr(self, name)}')
        if self.greedy_envs < 0:
            raise ValueError(f'greedy_envs must be >= 0, got {self.greedy_envs}')
        if self.distill not in DISTILL_MODES:
            raise ValueError(f'distill must be one of {", ".join(DISTILL_MODES)}, got {self.distill!r}')
        if not 0 < self.learning_rate < 1:
            raise ValueError(f'learning_rate must be in (0, 1), got {self.learning_rate}')
        torch_device(self.device)  # a clear error now, not at the first update


COMPILE_FROM_FRAMES = 200_000


def compile_wanted(config: PPOConfig) -> bool:
    """Whether to torch.compile (see PPOConfig.compile); says so when a C++ compiler is missing."""
    wanted = config.total_frames >= COMPILE_FROM_FRAMES if config.compile is None else config.compile
    if not wanted:
        return False
    compiler = os.environ.get('CXX') or 'g++'
    if shutil.which(compiler) is None:
        print(f'student: torch.compile is off: no C++ compiler ({compiler}) on PATH, training runs eager '
              f'(~15% slower); install one (apt-get install g++) or set CXX to turn it on', file=sys.stderr, flush=True)
        return False
    torch._dynamo.config.suppress_errors = True  # a graph that fails to compile runs eager instead of stopping training
    return True


class PPOLearner:
    """A student policy and its rollout: act on a batch, record what followed, update when full."""

    def __init__(self, config: PPOConfig, obs_shape: tuple[int, ...], num_envs: int, num_actions: int,
                 num_groups: int = 1):
        self.config = config
        torch.set_num_threads(config.torch_threads)
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.device = torch_device(config.device)
        self.policy = ActorCritic(obs_shape, num_actions, encoder=config.encoder).to(self.device)
        if compile_wanted(config):
            self.policy.encoder.compile()
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.learning_rate, eps=1e-5)
        self.storage = RolloutStorage(config.num_steps, num_envs, obs_shape, num_actions, num_groups)
        self.num_envs, self.num_actions = num_envs, num_actions
        if config.greedy_envs >= num_envs:
            raise ValueError(f'greedy_envs ({config.greedy_envs}) must leave some of the {num_envs} environments '
                             f'sampling actions for PPO: give fewer greedy envs or more environments')
        self.greedy = np.arange(num_envs) >= num_envs - config.greedy_envs  # the probes, by env column
        self.frames = self.updates = self.episodes = 0
        self.skipped_steps = 0  # gradient steps skipped for a non-finite loss or gradient
        self.behaviour: ActorCritic | None = None  # acts while an overlapped update runs
        self._spare: RolloutStorage | None = None
        self.recent_returns: deque[float] = deque(maxlen=100)
        self.recent_success: deque[float] = deque(maxlen=100)
        self.recent_greedy_success: deque[float] = deque(maxlen=100)
        self._episode_return = np.zeros(num_envs, np.float32)

    @property
    def teacher_weight(self) -> float:
        return self.config.teacher.weight(self.frames)

    @torch.no_grad()
    def act(self, obs: np.ndarray, teacher_probs: np.ndarray | None = None,
            teacher_mask: np.ndarray | None = None, group: int = 0) -> np.ndarray:
        """Sample actions for a batch of observations (of env group `group`) and store the step
        (call record() next)."""
        policy = self.behaviour if self.behaviour is not None else self.policy  # the behaviour copy is on the CPU
        dist, values = policy.distribution(torch.from_numpy(obs).to(next(policy.parameters()).device))
        s = self.storage
        t, envs = s.steps[group], s.columns(group)
        # the probes act greedily only while the teacher term is on: they learn only through it
        greedy = self.greedy[envs] & (self.teacher_weight > 0)
        actions = dist.sample()
        if greedy.any():
            actions = torch.where(torch.from_numpy(greedy).to(actions.device), dist.probs.argmax(-1), actions)
        s.on_policy[t, envs] = ~greedy
        s.obs[t, envs] = obs
        s.actions[t, envs] = actions.cpu().numpy()
        s.logprobs[t, envs] = dist.log_prob(actions).cpu().numpy()
        s.values[t, envs] = values.cpu().numpy()
        s.teacher_mask[t, envs] = 0.0 if teacher_mask is None else teacher_mask
        if teacher_probs is not None:
            s.teacher_probs[t, envs] = teacher_probs
        self.last_probs = dist.probs.cpu().numpy()  # for live views
        return s.actions[t, envs].copy()

    def attach_teacher(self, step: int, probs: np.ndarray, mask: np.ndarray, group: int = 0) -> None:
        """Attach a teacher suggestion that arrived after acting to step `step` of this rollout."""
        envs = self.storage.columns(group)
        self.storage.teacher_probs[step, envs] = probs
        self.storage.teacher_mask[step, envs] = mask

    def record(self, rewards: np.ndarray, dones: np.ndarray, success: np.ndarray, group: int = 0) -> None:
        """What followed the last act() of env group `group`: rewards, episode ends, and which
        ended in success."""
        s = self.storage
        t, envs = s.steps[group], s.columns(group)
        s.rewards[t, envs] = rewards
        s.dones[t, envs] = dones
        s.steps[group] += 1
        self.frames += len(rewards)
        returns = self._episode_return[envs]  # a view: updated in place
        returns += rewards
        greedy = s.on_policy[t, envs] == 0  # how each env acted, as act() stored it
        for i in np.flatnonzero(dones):
            if greedy[i]:
                self.recent_greedy_success.append(float(success[i]))
            else:
                self.recent_returns.append(float(returns[i]))
                self.recent_success.append(float(success[i]))
            returns[i] = 0.0
            self.episodes += 1

    def drop_group_rollout(self, group: int) -> None:
        """Forget env group `group`'s rows of this rollout and its unfinished episodes (its simulator
        restarted: what follows does not continue them)."""
        self.storage.steps[group] = 0
        self.storage.teacher_mask[:, self.storage.columns(group)] = 0.0
        self._episode_return[self.storage.columns(group)] = 0.0

    def begin_overlapped_update(self) -> RolloutStorage:
        """Hand the full rollout to an update on another thread: from now on act() fills a fresh
        rollout with a frozen copy of the current weights (the behaviour policy, one update behind
        at most); end_overlapped_update() switches back to the learning weights."""
        full = self.storage
        self.storage = self._spare or RolloutStorage(full.num_steps, full.num_envs, self.policy.obs_shape,
                                                     self.num_actions, full.num_groups)
        self._spare = full
        self.behaviour = eager_copy(self.policy)
        return full

    def end_overlapped_update(self) -> None:
        self.behaviour = None

    def update(self, next_obs: np.ndarray, storage: RolloutStorage | None = None) -> dict[str, float]:
        """PPO epochs over the full rollout (`storage`, default the learner's own); returns
        CleanRL-style metrics by TensorBoard tag."""
        cfg, s = self.config, storage or self.storage
        if not s.full:
            raise RuntimeError(f'update() needs a full rollout, have {s.steps} of {s.num_steps} steps')
        with torch.no_grad():
            _, last_values = self.policy(torch.from_numpy(next_obs).to(self.device))
        advantages, returns = compute_gae(s.rewards, s.values, s.dones, last_values.cpu().numpy(), cfg.gamma,
                                          cfg.gae_lambda)
        weight = self.teacher_weight
        learning_rate = cfg.learning_rate * (1 - self.frames / cfg.total_frames if cfg.anneal_lr else 1.0)
        for group in self.optimizer.param_groups:
            group['lr'] = max(learning_rate, 0.0)
        stats = {k: [] for k in ('policy_loss', 'value_loss', 'entropy', 'distill_loss', 'approx_kl', 'clipfrac',
                                 'distill_weight')}
        skipped = 0
        kl_limit = 1.5 * cfg.target_kl if cfg.target_kl is not None and weight == 0 else float('inf')
        minibatches = (mb for _ in range(cfg.update_epochs)
                       for mb in s.minibatches(advantages, returns, cfg.minibatch_size, self.rng, self.device))
        for mb in minibatches:
            dist, values = self.policy.distribution(mb.obs)
            logratio = dist.log_prob(mb.actions) - mb.logprobs
            ratio = logratio.exp()
            # PPO's terms average over the samples whose action the policy sampled (greedy probes' are not)
            on_policy = mb.on_policy
            sampled = on_policy.sum().clamp(min=1.0)
            on_policy_mean = lambda x: (x * on_policy).sum() / sampled  # noqa: E731
            with torch.no_grad():
                approx_kl = on_policy_mean((ratio - 1) - logratio).item()
            if approx_kl > kl_limit:
                break  # the policy already moved as far as this update allows (checked before stepping)
            stats['approx_kl'].append(approx_kl)
            adv = mb.advantages
            if cfg.norm_adv:
                mean = on_policy_mean(adv)
                std = (((adv - mean) ** 2 * on_policy).sum() / (sampled - 1).clamp(min=1.0)).sqrt()
                adv = (adv - mean) / (std + 1e-8)
            policy_loss = on_policy_mean(torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)))
            value_loss = 0.5 * on_policy_mean((values - mb.returns) ** 2)
            entropy = on_policy_mean(dist.entropy())
            # CE(pi_T || pi_theta), weighted per sample, averaged over the samples that carry a
            # suggestion (not over the weights: a down-weighted state is taught less, and lambda keeps
            # its meaning).
            cross_entropy = -(mb.teacher_probs * torch.log_softmax(dist.logits, -1)).sum(-1)
            suggested = mb.teacher_mask.sum().clamp(min=1.0)
            weights = mb.teacher_mask * torch.where(  # a probe's step is taught in full: PPO skips it
                on_policy > 0, distill_weights(cfg.distill, mb.teacher_probs, mb.actions, mb.advantages), 1.0)
            distill_loss = (cross_entropy * weights).sum() / suggested
            loss = policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy + weight * distill_loss
            self.optimizer.zero_grad()
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                skipped += 1  # one bad sample must not put NaN into every weight
                continue
            self.optimizer.step()
            stats['clipfrac'].append(on_policy_mean(((ratio - 1.0).abs() > cfg.clip_coef).float()).item())
            for name, value in (('policy_loss', policy_loss), ('value_loss', value_loss),
                                ('entropy', entropy), ('distill_loss', distill_loss)):
                stats[name].append(value.item())
            if mb.teacher_mask.sum() > 0:
                stats['distill_weight'].append((weights.sum() / suggested).item())
        variance = np.var(returns)
        explained = float('nan') if variance == 0 else 1 - np.var(returns - s.values) / variance
        coverage = float(s.teacher_mask.mean())
        s.steps = [0] * len(s.steps)
        self.skipped_steps += skipped
        self.updates += 1
        distill_weight = stats.pop('distill_weight')
        metrics = {f'losses/{k}': float(np.mean(v)) if v else float('nan') for k, v in stats.items()}
        metrics.update({
            'losses/gradient_steps': len(stats['policy_loss']),
            'losses/skipped_steps': skipped,
            'losses/explained_variance': float(explained),
            'charts/episodic_return': float(np.mean(self.recent_returns)) if self.recent_returns else 0.0,
            'charts/success_rate': float(np.mean(self.recent_success)) if self.recent_success else 0.0,
            **({'charts/greedy_success_rate': float(np.mean(self.recent_greedy_success))
                if self.recent_greedy_success else 0.0} if self.greedy.any() else {}),
            'charts/learning_rate': learning_rate,
            'teacher/weight': weight,
            'teacher/coverage': coverage,
            'teacher/distill_weight': float(np.mean(distill_weight)) if distill_weight else float('nan'),
        })
        return metrics


def train(config: PPOConfig, envs, teacher=None, callbacks=(), learner: PPOLearner | None = None) -> PPOLearner:
    """Train in-process on a `MiniGridVecEnv`-like `envs` until `config.total_frames`, through the
    same lock-step loop the student node runs (`student_policy.lockstep.LockstepLearner`).

    :param teacher: optional callable(VecStep) -> (probs (N, A) float32, mask (N,) bool): the
        teacher's action distribution for the states of that step, and where it has one.
    :param callbacks: callables(learner, metrics) -> bool run after each update; False stops training.
    :param learner: continue this learner (e.g. restored from a checkpoint) instead of a new one.
    """
    if learner is not None and learner.frames >= config.total_frames:
        return learner
    loop = LockstepLearner(
        lambda obs_shape, num_envs, num_actions, *_: learner or PPOLearner(config, obs_shape, num_envs, num_actions),
        lambda trained, metrics: all([callback(trained, metrics) for callback in callbacks]), overlap=config.overlap)
    step = envs.reset(seed=config.seed + (learner.updates if learner else 0) * envs.num_envs)
    for seq in itertools.count():
        answers = loop.on_step(StepIn(seq, step.observations, step.rewards, step.terminated, step.truncated,
                                      step.success, envs.num_actions, encoder=config.encoder))
        if not answers:
            if not loop.done:
                raise RuntimeError(loop.counters.last_error)
            break
        if teacher is not None:
            probs, mask = teacher(step)
            loop.on_suggestions(0, seq, 0, probs, mask.astype(np.float32))
        step = envs.step(answers[0].actions)
    return loop.learner
