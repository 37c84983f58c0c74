"""PPO with a decaying distillation term towards a teacher (Zhou et al., IJCAI 2024), CleanRL style.

loss = PPO clip loss + vf_coef * value loss - ent_coef * entropy
       + lambda(frames) * mean CE(pi_teacher || pi_student)   over the samples that carry a suggestion

`PPOLearner` holds the model and one rollout. `student_policy.lockstep` drives it, one step batch
at a time: in-process (`lockstep.train()`, for tests and benchmarks) or from the student node.
"""
from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import sys
import tempfile
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from student_deploy.inference import torch_device
from student_deploy.missions import MISSION_LENGTH
from student_policy.networks import ActorCritic
from student_policy.storage import RolloutStorage, TeacherReplay, compute_gae, minibatches


@dataclass
class TeacherSchedule:
    """Weight lambda of the teacher term as a function of environment frames.

    Linear from `initial` to `final` over `decay_frames`, then `final` until `off_frames`, then 0.
    The paper's schedule (10, dropping 0.005 per PPO iteration of 256 frames to 0.1, removed after
    3000 iterations) is PAPER_SCHEDULE; the default decays over 300k frames instead, to fit
    `make train`'s 450k-frame budget.
    """

    initial: float = 10.0
    """lambda at frame 0; initial = final = 0 gives plain PPO."""
    final: float = 0.1
    """floor reached after `decay_frames`."""
    decay_frames: int = 300_000
    """frames over which lambda falls linearly from `initial` to `final` (the paper's: (10-0.1)/0.005*256)."""
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


PAPER_SCHEDULE = TeacherSchedule(decay_frames=506_880)


@dataclass
class PPOConfig:
    """Every setting of a training run; saved with each checkpoint."""

    encoder: str = 'grid'
    """observation encoder: 'grid' (MiniGrid memory maps and egocentric views), 'image' (camera
    rgb or rgb + depth) or 'image_map' (rgb + depth with the robot's map crop: "rgbd_map")."""
    recurrent: int = 0
    """units of the policy's GRU memory between encoder and heads; 0: a reactive policy (acts on
    the present observation alone)."""
    mission: bool = False
    """the policy reads the mission text too (ActorCritic's mission encoder): for tasks whose
    mission changes between episodes (GoToObject: "go to the red ball"); the step batches must carry
    it, and a deployed policy then needs it on its `mission` topic."""
    bptt_steps: int = 16
    """with `recurrent`: steps a minibatch sequence holds (truncated back-propagation through time,
    Sample Factory's `recurrence`): the update unrolls the GRU over chunks of this many consecutive
    steps of one env, each from the state the policy acted from at its first step, instead of over
    whole rollouts. GRU 128 on SimpleDoorKey, frames/s of the reactive student's (4 rounds, shared
    2-core machine): 16 steps 0.82-1.00x, 32 steps 0.69-0.96x, whole 128-step rollouts 0.49-0.65x;
    16 learnt as fast as whole rollouts (docs/results.md). num_steps must be a multiple of it (or
    smaller: then one sequence is a whole rollout)."""
    total_frames: int = 1_000_000
    """environment frames to train for (all environments together)."""
    num_steps: int = 128
    """lock-steps per rollout; a rollout holds num_steps * num_envs frames."""
    learning_rate: float = 1e-3
    """Adam learning rate."""
    anneal_lr: bool = True
    """decay the learning rate linearly to 0 at total_frames (CleanRL's anneal_lr): the last updates
    only fine-tune, so the argmax of near-tied actions stops flipping between updates (greedy success
    on SimpleDoorKey swung 0.66-0.98 between evaluations 20k frames apart without it)."""
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
    teacher: TeacherSchedule = field(default_factory=TeacherSchedule)
    """weight of the distillation term over frames."""
    teacher_replay: int = 0
    """frames of teacher-labelled sequences kept from past rollouts (storage.TeacherReplay); each
    minibatch's teacher term then also covers as many sequences drawn from them (DAgger's aggregate,
    the rollout just gathered included: PPO alone uses each label in one rollout's epochs and drops
    it). A recurrent policy replays each sequence from the state it acted from then (R2D2's stored
    state, without burn-in). 0: off. Camera + map student on GoToRedBall: 0.02 -> 0.48 sampled
    (docs/results.md, "The teacher's labels replayed")."""
    seed: int = 0
    """seeds torch, numpy and the environments."""
    torch_threads: int = 1
    """torch intra-op threads: 1 is fastest for this small model on few cores."""
    device: str = 'cpu'
    """where the student learns: cpu, or cuda (a GPU; the simulators stay on the CPU). Checkpoints
    and exports are CPU tensors either way."""
    compile: bool | None = None
    """torch.compile the encoder: ~1.2-1.3x frames/s once compiled, after ~25 s of compiling at
    the first start on a machine and ~3-4 s at later ones (the compiled code is cached, see
    setup_compile); needs a C++ compiler. None (auto): on where the speed-up repays the start, for
    budgets of COMPILE_FROM_FRAMES or more, or COMPILE_WARM_FROM_FRAMES when the same student
    compiled before (COMPILE_PRELOADED_FROM_FRAMES in student_node), and a C++ compiler is found
    (else a message says why it is off). Checkpoints
    and exports are the same either way."""

    def __post_init__(self):
        if isinstance(self.teacher, dict):
            self.teacher = TeacherSchedule(**self.teacher)
        for name in ('total_frames', 'num_steps', 'update_epochs', 'minibatch_size', 'torch_threads'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be at least 1, got {getattr(self, name)}')
        if self.bptt_steps < 1 or self.recurrent and self.num_steps % self.sequence_length:
            raise ValueError(f'bptt_steps must be at least 1 and divide num_steps ({self.num_steps}), '
                             f'got {self.bptt_steps}')
        if self.teacher_replay and self.teacher_replay < self.sequence_length:
            raise ValueError(f'teacher_replay must be 0 (off) or at least one sequence ({self.sequence_length} frames), '
                             f'got {self.teacher_replay}')
        if not 0 < self.learning_rate < 1:
            raise ValueError(f'learning_rate must be in (0, 1), got {self.learning_rate}')
        torch_device(self.device)  # a clear error now, not at the first update

    @property
    def sequence_length(self) -> int:
        """Consecutive steps of one env a minibatch sequence holds: 1 for a reactive policy."""
        return min(self.bptt_steps, self.num_steps) if self.recurrent else 1


COMPILE_FROM_FRAMES = 200_000
"""auto compiles budgets from this on: where ~1.2x frames/s repays a first compile (~25 s on 2 cores)."""
COMPILE_WARM_FROM_FRAMES = 60_000
"""... and from this on when the same student compiled before into the same cache (it then loads in ~3-4 s)."""
COMPILE_PRELOADED_FROM_FRAMES = 20_000
"""... and from this on when, besides, the caller loaded torch's compiler while it waited (warm_up_compile, as
student_node does while the simulator starts): a warm compiled start then costs no more than an eager one, and
the graph's compiled student repays it from ~12k frames."""
_NETWORK_CODE = Path(inspect.getfile(ActorCritic))  # a changed network compiles anew
_MARKERS = 'llm_teacher-students'  # in the compile cache: one empty file per student that compiled there


def compile_cache_dir() -> Path:
    """Where torch.compile keeps the student's compiled code between runs on this machine:
    TORCHINDUCTOR_CACHE_DIR when set, else $XDG_CACHE_HOME/llm_teacher/torchinductor
    (~/.cache/llm_teacher/torchinductor). torch's own default is under /tmp, which a reboot empties."""
    if os.environ.get('TORCHINDUCTOR_CACHE_DIR'):
        return Path(os.environ['TORCHINDUCTOR_CACHE_DIR'])
    return _default_compile_cache()


def _default_compile_cache() -> Path:
    return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'llm_teacher' / 'torchinductor'


def _say(text: str) -> None:
    print(f'student: {text}', file=sys.stderr, flush=True)


@dataclass
class CompileCache:
    """Where a compiled student's code is cached (from setup_compile); check() after its first update."""

    directory: Path
    marker: Path
    """exists once this student (same graphs, torch and network code) compiled into `directory`."""
    failures_before: int
    """compile_failures() before the student's first compiled call."""

    def check(self) -> bool:
        """Whether everything compiled. When not, the cache may hold corrupt code (a truncated .so
        fails the compile at every start): says so, and clears the cache when it is ours, so that
        the next start compiles afresh. Training goes on eager either way."""
        if compile_failures() <= self.failures_before:
            try:
                self.marker.parent.mkdir(parents=True, exist_ok=True)
                self.marker.touch()
            except OSError:
                pass  # auto then waits for COMPILE_FROM_FRAMES budgets: slower starts, nothing worse
            return True
        self.marker.unlink(missing_ok=True)
        if self.directory == _default_compile_cache():
            shutil.rmtree(self.directory, ignore_errors=True)
            then = f'{self.directory} is cleared: the next start compiles afresh'
        else:
            then = f'delete {self.directory} if the next start fails the same way'
        _say(f'torch.compile failed (the warning above says why; a corrupt compile cache is one cause): '
             f'training goes on eager (~15% slower); {then}')
        return False


def _auto_compiles(frames: int, compiled_before: bool, compiler_loaded: bool) -> bool:
    """compile: auto's rule (PPOConfig.compile) for a run of `frames` frames."""
    warm_from = COMPILE_PRELOADED_FROM_FRAMES if compiler_loaded else COMPILE_WARM_FROM_FRAMES
    return frames >= (warm_from if compiled_before else COMPILE_FROM_FRAMES)


def setup_compile(config: PPOConfig, graphs: str, compiler_loaded: bool = False,
                  frames_done: int = 0) -> CompileCache | None:
    """Whether to torch.compile (see PPOConfig.compile) and, when so, where its compiled code is
    cached: the one place that decides both, for train() and student_node alike (through PPOLearner).

    The first compile on a machine takes ~25 s on 2 cores; inductor's FX graph cache and AOT
    autograd cache in compile_cache_dir() let every later start load the compiled code instead
    (~3-4 s). A cache directory that cannot be written gives a compile into a temporary one for this
    run; when none can be had, training runs eager (a log line says which). A corrupt cache is
    caught after the first update (CompileCache.check). Loading torch's compiler takes ~3 s of the
    warm start: warm_up_compile does it beforehand where the caller has to wait anyway.

    :param graphs: what shapes the compiled graphs (encoder, observation shape, batch sizes, device):
        auto compiles from COMPILE_WARM_FROM_FRAMES when a student with the same compiled before.
    :param compiler_loaded: warm_up_compile ran to its end; auto then compiles a warm student from
        COMPILE_PRELOADED_FROM_FRAMES.
    :param frames_done: frames a resumed learner trained before: auto weighs the frames left.
    """
    cache = compile_cache_dir()
    key = hashlib.sha256(f'{torch.__version__}\n{graphs}\n'.encode() + _NETWORK_CODE.read_bytes()).hexdigest()[:24]
    marker = cache / _MARKERS / key
    if config.compile is None:
        wanted = _auto_compiles(config.total_frames - frames_done, marker.exists(), compiler_loaded)
    else:
        wanted = config.compile
    if not wanted:
        return None
    if shutil.which(_cxx()) is None:
        _say(f'torch.compile is off: no C++ compiler ({_cxx()}) on PATH, training runs eager '
             f'(~15% slower); install one (apt-get install g++) or set CXX to turn it on')
        return None
    problem = _unwritable(cache)
    if problem:
        try:
            fallback = Path(tempfile.mkdtemp(prefix='llm_teacher-torchinductor-'))
        except OSError as err:
            _say(f'torch.compile is off: its cache directory {cache} cannot be written ({problem}) and no '
                 f'temporary one made ({err}); training runs eager. Set TORCHINDUCTOR_CACHE_DIR to a writable directory')
            return None
        _say(f'torch.compile cache {cache} cannot be written ({problem}): compiling into {fallback} for this run '
             f'only, so every start pays the compile; set TORCHINDUCTOR_CACHE_DIR to a writable directory')
        cache, marker = fallback, fallback / marker.relative_to(cache)
    os.environ['TORCHINDUCTOR_CACHE_DIR'] = str(cache)  # torch reads it at each compile
    from torch._functorch import config as functorch_config
    from torch._inductor import config as inductor_config
    inductor_config.fx_graph_cache = True  # inductor's generated code, by graph
    functorch_config.enable_autograd_cache = True  # forward + backward graphs, skipping AOT tracing
    torch._dynamo.config.suppress_errors = True  # a graph that fails to compile runs eager instead of stopping training
    _say('torch.compile on: ' + (f'loading the compiled student from {cache}' if marker.exists() else
                                  f'compiling the student (~25 s on 2 cores; later starts load it from {cache})'))
    return CompileCache(cache, marker, compile_failures())


def warm_up_compile(config: PPOConfig) -> threading.Thread | None:
    """Load torch's compiler (~2 s) and probe the CPU's vector instructions (~1 s) in a background
    thread, for a caller that waits for something else first (student_node waits for the simulator's
    first step batch). join() it before PPOLearner (setup_compile): the two must not import at once.
    None where this run cannot compile, or auto will not: a budget too short for the first compile
    on a machine where no student has compiled yet."""
    if config.compile is False:
        return None
    if config.compile is None:
        some_compiled = any((compile_cache_dir() / _MARKERS).glob('*'))  # which student this one is, PPOLearner knows
        if not _auto_compiles(config.total_frames, some_compiled, compiler_loaded=True):
            return None
    if shutil.which(_cxx()) is None:
        return None

    def load() -> None:
        try:
            import torch._inductor.compile_fx  # noqa: F401
            from torch._inductor.cpu_vec_isa import pick_vec_isa
            pick_vec_isa()  # cached for the process
        except Exception:  # noqa: BLE001  the compile itself meets it again and says so
            pass

    os.environ.setdefault('TORCHINDUCTOR_CACHE_DIR', str(compile_cache_dir()))  # before torch sets its own default
    thread = threading.Thread(target=load, name='compile-warm-up', daemon=True)
    thread.start()
    return thread


def _cxx() -> str:
    return os.environ.get('CXX') or 'g++'  # what inductor compiles with


def _unwritable(path: Path) -> str:
    """Why `path` cannot hold a cache ('' when it can)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        return f'{type(err).__name__}: {err.strerror or err}'
    return ''


def compile_failures() -> int:
    """Frames torch.compile failed to compile in this process so far (they run eager)."""
    frames = torch._dynamo.utils.counters['frames']
    return frames['total'] - frames['ok']


class PPOLearner:
    """A student policy and its rollout: act on a batch, record what followed, update when full.

    :param compiler_loaded, frames_done: what the caller knows of this run for setup_compile.
    """

    def __init__(self, config: PPOConfig, obs_shape: tuple[int, ...], num_envs: int, num_actions: int,
                 num_groups: int = 1, mission_words: list[str] | tuple[str, ...] = (), compiler_loaded: bool = False,
                 frames_done: int = 0):
        self.config = config
        torch.set_num_threads(config.torch_threads)
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.device = torch_device(config.device)
        self.policy = ActorCritic(obs_shape, num_actions, encoder=config.encoder, recurrent=config.recurrent,
                                  mission=config.mission, mission_words=mission_words).to(self.device)
        graphs = (f'{config.encoder} {tuple(obs_shape)} recurrent {config.recurrent} mission {config.mission}, '
                  f'{num_envs} envs in {num_groups} groups, minibatch {config.minibatch_size}, {config.device}')
        self.compile_cache = setup_compile(config, graphs, compiler_loaded, frames_done)  # None: eager, or checked after the first update
        if self.compile_cache is not None:
            self.policy.encoder.compile()
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.learning_rate, eps=1e-5)
        self.storage = RolloutStorage(config.num_steps, num_envs, obs_shape, num_actions, num_groups, config.recurrent,
                                      MISSION_LENGTH if config.mission else 0)
        self.replay = TeacherReplay(config.teacher_replay, config.sequence_length) if config.teacher_replay else None
        self.num_envs, self.num_actions = num_envs, num_actions
        # The policy's state per env, and whether its next observation starts an episode (the state
        # is zeroed then). A resumed learner starts from zero states: its envs' episodes go on from
        # where the simulator is, which the checkpoint does not know.
        self.state = self.policy.initial_state(num_envs, self.device)
        self.starts = np.ones(num_envs, np.float32)
        self.frames = self.updates = self.episodes = 0
        self.skipped_steps = 0  # gradient steps skipped for a non-finite loss or gradient
        self.recent_returns: deque[float] = deque(maxlen=100)
        self.recent_success: deque[float] = deque(maxlen=100)
        self._episode_return = np.zeros(num_envs, np.float32)

    @property
    def teacher_weight(self) -> float:
        return self.config.teacher.weight(self.frames)

    def missions(self, texts: list[str] | None) -> torch.Tensor | None:
        """Token ids of a batch's missions on the learner's device, learning new words; None for a
        policy that reads no mission."""
        if not self.policy.reads_mission:
            return None
        if texts is None:
            raise ValueError('this student reads the mission (PPOConfig.mission): give each env\'s mission')
        return self.policy.encode_missions(texts, grow=True).to(self.device)

    @torch.no_grad()
    def act(self, obs: np.ndarray, group: int = 0, missions: list[str] | None = None,
            decides: np.ndarray | None = None) -> np.ndarray:
        """Sample actions for a batch of observations (of env group `group`; with their missions, for
        a policy that reads them) and store the step (call record() next; a teacher's suggestion for
        it comes through attach_teacher()). decides: which envs act on their action (None: all); an
        option-level env holding its option ignores it, and the update learns no choice there."""
        s = self.storage
        t, envs = s.steps[group], s.columns(group)
        starts = torch.from_numpy(self.starts[envs]).to(self.device)
        state = self.state[envs] * (1.0 - starts).unsqueeze(-1)
        s.states[t, envs] = state.cpu().numpy()
        tokens = self.missions(missions)
        dist, values, self.state[envs] = self.policy.distribution(torch.from_numpy(obs).to(self.device), state, tokens)
        actions = dist.sample()
        s.starts[t, envs] = self.starts[envs]
        s.obs[t, envs] = obs
        if tokens is not None:
            s.missions[t, envs] = tokens.cpu().numpy()
        s.actions[t, envs] = actions.cpu().numpy()
        s.logprobs[t, envs] = dist.log_prob(actions).cpu().numpy()
        s.values[t, envs] = values.cpu().numpy()
        s.teacher_mask[t, envs] = 0.0
        s.decides[t, envs] = 1.0 if decides is None else decides
        self.last_probs = dist.probs.cpu().numpy()  # for live views
        return s.actions[t, envs].copy()

    def attach_teacher(self, step: int, probs: np.ndarray, mask: np.ndarray, group: int = 0) -> None:
        """Attach a teacher suggestion (action distributions (n, A), where they hold (n,)) to step
        `step` of env group `group` in this rollout."""
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
        self.starts[envs] = dones
        s.steps[group] += 1
        self.frames += len(rewards)
        returns = self._episode_return[envs]  # a view: updated in place
        returns += rewards
        for i in np.flatnonzero(dones):
            self.recent_returns.append(float(returns[i]))
            self.recent_success.append(float(success[i]))
            returns[i] = 0.0
            self.episodes += 1

    def drop_group_rollout(self, group: int) -> None:
        """Forget env group `group`'s rows of this rollout and its unfinished episodes (its simulator
        restarted: what follows does not continue them)."""
        envs = self.storage.columns(group)
        self.storage.steps[group] = 0
        self.storage.teacher_mask[:, envs] = 0.0
        self._episode_return[envs] = 0.0
        self.starts[envs] = 1.0

    def update(self, next_obs: np.ndarray, next_missions: list[str] | None = None) -> dict[str, float]:
        """PPO epochs over the full rollout, in CleanRL's order (next_obs and next_missions: the
        batch after it, to bootstrap from); returns metrics by TensorBoard tag."""
        cfg, s = self.config, self.storage
        if not s.full:
            raise RuntimeError(f'update() needs a full rollout, have {s.steps} of {s.num_steps} steps')
        with torch.no_grad():
            starts = torch.from_numpy(self.starts).to(self.device).unsqueeze(-1)
            _, next_values, _ = self.policy(torch.from_numpy(next_obs).to(self.device), self.state * (1.0 - starts),
                                            self.missions(next_missions))
        advantages, returns = compute_gae(s.rewards, s.values, s.dones, next_values.cpu().numpy(), cfg.gamma,
                                          cfg.gae_lambda)
        lr = cfg.learning_rate * (1.0 - self.frames / cfg.total_frames if cfg.anneal_lr else 1.0)
        self.optimizer.param_groups[0]['lr'] = max(lr, 0.0)
        weight = self.teacher_weight
        sequences = s.sequences(cfg.sequence_length, advantages=advantages, returns=returns)
        replaying = self.replay is not None and weight > 0
        if replaying:
            self.replay.add(*sequences)
            replaying = self.replay.size > 0
        stats = {k: [] for k in ('policy_loss', 'value_loss', 'entropy', 'distill_loss', 'approx_kl', 'clipfrac',
                                 *(('replay_loss',) if replaying else ()))}
        skipped = 0
        for mb in minibatches(*sequences, cfg.minibatch_size, cfg.update_epochs, self.rng, self.device):
            logits, new_values = self.policy.unroll(mb.obs, mb.state, mb.starts,
                                                    mb.missions if self.policy.reads_mission else None)
            dist = Categorical(logits=logits)
            logratio = dist.log_prob(mb.actions) - mb.logprobs
            ratio = logratio.exp()
            chose = mb.decides  # the policy, entropy and teacher terms count only the samples whose action was acted on
            with torch.no_grad():
                approx_kl = masked_mean((ratio - 1) - logratio, chose)  # http://joschu.net/blog/kl-approx.html
                clipfrac = masked_mean(((ratio - 1.0).abs() > cfg.clip_coef).float(), chose)
            adv = mb.advantages
            if cfg.norm_adv:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            policy_loss = masked_mean(torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)),
                                      chose)
            value_loss = 0.5 * ((new_values - mb.returns) ** 2).mean()
            entropy = masked_mean(dist.entropy(), chose)
            distill_loss = cross_entropy(logits, mb.teacher_probs, mb.teacher_mask * chose)
            loss = policy_loss - cfg.ent_coef * entropy + cfg.vf_coef * value_loss + weight * distill_loss
            if replaying:
                labels = self.replay.sample(mb.state.shape[0], self.rng, self.device)
                replay_logits, _ = self.policy.unroll(labels.obs, labels.state, labels.starts,
                                                      labels.missions if self.policy.reads_mission else None)
                replay_loss = cross_entropy(replay_logits, labels.teacher_probs, labels.teacher_mask)
                loss = loss + weight * replay_loss

            self.optimizer.zero_grad()
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                skipped += 1  # one bad sample must not put NaN into every weight
                continue
            self.optimizer.step()
            for name, value in (('policy_loss', policy_loss), ('value_loss', value_loss), ('entropy', entropy),
                                ('distill_loss', distill_loss), ('approx_kl', approx_kl), ('clipfrac', clipfrac),
                                *((('replay_loss', replay_loss),) if replaying else ())):
                stats[name].append(value.item())

        variance = np.var(returns)
        explained = float('nan') if variance == 0 else 1 - np.var(returns - s.values) / variance
        coverage = float((s.teacher_mask * s.decides).sum() / max(s.decides.sum(), 1.0))  # of the choices made
        s.steps = [0] * len(s.steps)
        if self.compile_cache is not None:  # the first update has compiled all that training runs
            self.compile_cache.check()
            self.compile_cache = None
        self.skipped_steps += skipped
        self.updates += 1
        return {
            **{f'losses/{k}': float(np.mean(v)) if v else float('nan') for k, v in stats.items()},
            'losses/gradient_steps': len(stats['policy_loss']),
            'losses/skipped_steps': skipped,
            'losses/explained_variance': float(explained),
            'charts/episodic_return': float(np.mean(self.recent_returns)) if self.recent_returns else 0.0,
            'charts/success_rate': float(np.mean(self.recent_success)) if self.recent_success else 0.0,
            'charts/learning_rate': lr,
            'teacher/weight': weight,
            'teacher/coverage': coverage,
            **({'teacher/replay_frames': self.replay.frames} if self.replay is not None else {}),
        }


def cross_entropy(logits: torch.Tensor, teacher_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """CE(pi_T || pi_theta), averaged over the samples that carry a suggestion (mask 1)."""
    return masked_mean(-(teacher_probs * torch.log_softmax(logits, -1)).sum(-1), mask)


def masked_mean(per_sample: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of `per_sample` over the samples of mask 1 (0 where there are none)."""
    return (per_sample * mask).sum() / mask.sum().clamp(min=1.0)
