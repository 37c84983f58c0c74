"""Checkpoints of a PPOLearner: written atomically, refused with a clear error when corrupt or incompatible."""
from __future__ import annotations

import dataclasses
import io
import os
import pickle
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

from student_deploy.inference import INFO_FILE, ONNX_OPSET, PolicyInfo
from student_deploy.missions import MISSION_LENGTH
from student_policy.networks import ActorCritic, eager_copy
from student_policy.ppo import PPOConfig, PPOLearner

FORMAT = 'llm_teacher.student_checkpoint/1'
# Settings of experiments that were not adopted and left PPOConfig (docs/results.md has their
# figures), at the value that meant "off": a checkpoint saved with them off resumes.
REMOVED_SETTINGS = {'overlap': False, 'greedy_envs': 0, 'distill': 'ce', 'target_kl': None}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def write_atomically(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Create or replace `path` through write(file): into a temporary file beside it, synced, then
    renamed over it. A crash mid-write leaves the previous file intact; readers never see half a file.

    write() fills memory first, so a full disk is an OSError from the file, whatever the serialiser
    (torch.save's zip writer reports it as a RuntimeError of its own)."""
    path = Path(path)
    buffer = io.BytesIO()
    write(buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + '.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(path: str | Path, learner: PPOLearner) -> Path:
    """Write model, optimiser, counters, config and RNG states to `path` atomically.

    The file is written next to `path` and renamed over it, so a crash mid-write leaves the
    previous checkpoint intact. It holds tensors and plain Python values only, so it loads with
    torch.load(weights_only=True): a checkpoint file from elsewhere cannot run code.

    :raises CheckpointError: the model holds non-finite weights (the previous checkpoint is kept).
    """
    broken = [name for name, value in learner.policy.state_dict().items() if not torch.isfinite(value).all()]
    if broken:
        raise CheckpointError(f'not saving {path}: non-finite weights in {", ".join(broken[:3])}; '
                              f'the previous checkpoint is kept')
    state = {
        'format': FORMAT,
        'config': dataclasses.asdict(learner.config),
        'obs_shape': list(learner.policy.obs_shape),
        'num_envs': learner.num_envs,
        'num_actions': learner.num_actions,
        'model': learner.policy.state_dict(),
        'mission_words': list(learner.policy.vocabulary.words) if learner.policy.reads_mission else [],
        'optimizer': learner.optimizer.state_dict(),
        'counters': {'frames': learner.frames, 'updates': learner.updates, 'episodes': learner.episodes},
        'recent_returns': list(learner.recent_returns),
        'recent_success': list(learner.recent_success),
        'rng': {'numpy': learner.rng.bit_generator.state, 'torch': torch.get_rng_state()},
    }
    return write_atomically(path, lambda f: torch.save(state, f))


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's contents, or CheckpointError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint {path} does not exist')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f'{path} holds Python objects that a safe load refuses (a checkpoint of an older '
                              f'version, or not one of ours): {str(err).splitlines()[0]}. Start afresh in another '
                              f'run directory, or delete it') from err
    except Exception as err:
        raise CheckpointError(f'checkpoint {path} is unreadable or corrupt ({type(err).__name__}: {err}); '
                              f'delete it to start afresh, or resume from another checkpoint') from err
    if not isinstance(state, dict) or state.get('format') != FORMAT:
        found = state.get('format') if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f'{path} is not a student checkpoint of format {FORMAT!r} (found {found!r})')
    return state


def load_learner(path: str | Path, obs_shape=None, num_envs=None, num_actions=None,
                 config: PPOConfig | None = None, num_groups: int = 1, compiler_loaded: bool = False) -> PPOLearner:
    """Rebuild a learner from a checkpoint so that training continues exactly where it stopped.

    :param obs_shape, num_envs, num_actions: what the caller's environments have; a mismatch
        with the checkpoint raises CheckpointError naming both.
    :param config: settings to continue with (e.g. a larger total_frames); default: the saved ones.
    :param num_groups: env groups the rollouts fill (free to change: checkpoints fall between rollouts).
    :param compiler_loaded: as PPOLearner's.
    """
    state = read_checkpoint(path)
    expected = {'obs_shape': list(obs_shape) if obs_shape is not None else None,
                'num_envs': num_envs, 'num_actions': num_actions}
    for key, value in expected.items():
        if value is not None and state[key] != value:
            raise CheckpointError(f'checkpoint {path} was trained with {key}={state[key]}, but the environments '
                                  f'have {key}={value}; use a matching task and num_envs, or another run directory')
    saved = saved_config(path, state['config'])
    for key in ('encoder', 'recurrent', 'mission'):  # what shapes the network: the weights fit no other
        if config is not None and getattr(config, key) != getattr(saved, key):
            raise CheckpointError(f'checkpoint {path} was trained with {key}={getattr(saved, key)!r}, but this run '
                                  f'has {key}={getattr(config, key)!r}: set {key} to match, or use another run directory')
    learner = PPOLearner(config or saved, tuple(state['obs_shape']), state['num_envs'], state['num_actions'],
                         num_groups, state.get('mission_words', []), compiler_loaded, state['counters']['frames'])
    learner.policy.load_state_dict(state['model'])
    learner.optimizer.load_state_dict(state['optimizer'])
    for key, value in state['counters'].items():
        setattr(learner, key, value)
    learner.recent_returns.extend(state['recent_returns'])
    learner.recent_success.extend(state['recent_success'])
    learner.rng.bit_generator.state = state['rng']['numpy']
    torch.set_rng_state(state['rng']['torch'])
    return learner


def saved_config(path: str | Path, saved: dict) -> PPOConfig:
    """The PPOConfig a checkpoint was saved with; CheckpointError for a setting this version lacks."""
    saved = dict(saved)
    gone = {key: saved.pop(key) for key in REMOVED_SETTINGS if key in saved}
    on = {key: value for key, value in gone.items() if value != REMOVED_SETTINGS[key]}
    if on:
        raise CheckpointError(f'checkpoint {path} was trained with {on}: settings this version no longer has '
                              f'(docs/results.md names the commit that had them); resume it with that commit')
    try:
        return PPOConfig(**saved)
    except TypeError as err:
        raise CheckpointError(f'checkpoint {path} holds settings this version does not know ({err}); '
                              f'resume it with the version that wrote it, or start afresh') from err


def export_policy(path: str | Path, policy: ActorCritic, task: str = '', chooses_options: bool = False) -> Path:
    """The actor for the deploy nodes: obs (B, *obs_shape) uint8 -> action logits (B, A); a recurrent
    policy also takes its state (B, H) and returns the next one, and one that reads the mission takes
    its token ids (B, L) last: (obs[, state][, mission]) -> logits or (logits, next state).
    TorchScript at `path` and ONNX (opset ONNX_OPSET, dynamic batch) beside it as <name>.onnx with
    <name>.json, each carrying PolicyInfo (what the policy expects, its mission words included).
    chooses_options: its actions are options, not motions (PolicyInfo.chooses_options).
    Each file is written atomically."""
    actor = _Actor(eager_copy(policy)).eval()  # a compiled policy cannot be traced
    example, names = (torch.zeros((1,) + policy.obs_shape, dtype=torch.uint8),), ['obs']
    if policy.recurrent:
        example, names = example + (policy.initial_state(1),), names + ['state']
    if policy.reads_mission:
        example, names = example + (policy.encode_missions(['']),), names + ['mission']
    outputs = ['logits', 'next_state'] if policy.recurrent else ['logits']
    info = PolicyInfo(policy.obs_shape, policy.num_actions, policy.encoder_name, task, policy.recurrent,
                      tuple(policy.vocabulary.words) if policy.reads_mission else (),
                      MISSION_LENGTH if policy.reads_mission else 0, chooses_options)
    with torch.no_grad(), warnings.catch_warnings():
        # nn.GRU's input checks (the mission encoder) read shapes as Python values while tracing
        # (here and in the ONNX export): they hold at any batch size (tested), so the graphs are right.
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning, module='torch.nn.modules.rnn')
        traced = torch.jit.trace(actor, example)
        path = Path(path)
        write_atomically(path.with_suffix('.onnx'), lambda f: _export_onnx(actor, example, names, outputs, f))
    write_atomically(path.with_suffix('.json'), lambda f: f.write(info.to_json().encode()))
    return write_atomically(path, lambda f: torch.jit.save(traced, f, _extra_files={INFO_FILE: info.to_json()}))


def _export_onnx(actor: torch.nn.Module, example: tuple, names: list[str], outputs: list[str], f: BinaryIO) -> None:
    with warnings.catch_warnings():
        # The TorchScript-based exporter: the torch.export one needs onnxscript and gives the same graph here.
        warnings.simplefilter('ignore', DeprecationWarning)
        # The mission encoder's GRU gets its first state as an input (MissionEncoder), which is what
        # this warning asks for: its graph runs at any batch size (tested).
        warnings.filterwarnings('ignore', 'Exporting a model to ONNX with a batch_size other than 1')
        torch.onnx.export(actor, example, f, dynamo=False, opset_version=ONNX_OPSET, input_names=names,
                          output_names=outputs, dynamic_axes={name: {0: 'batch'} for name in names + outputs})


class _Actor(torch.nn.Module):
    """The policy as deployed: (obs[, state][, mission]) -> logits alone for a reactive one,
    (logits, next state) for a recurrent one."""

    def __init__(self, policy: ActorCritic):
        super().__init__()
        self.policy = policy

    def forward(self, obs: torch.Tensor, *inputs: torch.Tensor):
        recurrent = self.policy.recurrent > 0
        state = inputs[0] if recurrent else self.policy.initial_state(obs.shape[0])
        mission = inputs[-1] if self.policy.reads_mission else None
        logits, state = self.policy.step(obs, state, mission)
        return (logits, state) if recurrent else logits
