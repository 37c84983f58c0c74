"""Running an exported student: load it (TorchScript or ONNX), choose actions. Imports only torch
and numpy (onnxruntime for .onnx files), so a robot runs the policy with nothing of training,
simulation or the LLM installed.

An export is the actor alone: obs (B, *obs_shape) uint8 -> action logits (B, A); a recurrent one
takes its state too, (obs, state (B, H)) -> (logits, next state), and one that reads the mission
takes its token ids (B, L) last (student_deploy.missions). Beside the weights it carries
what it was trained on (`PolicyInfo`), so a node can refuse a policy that does not fit its sensors
or its robot before it drives anything.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from student_deploy.missions import MISSION_LENGTH, MissionVocabulary

INFO_FILE = 'policy.json'  # inside the TorchScript archive (_extra_files); beside an .onnx file as <name>.json
ONNX_OPSET = 17


@dataclass(frozen=True)
class PolicyInfo:
    """What an exported policy expects and gives."""

    obs_shape: tuple[int, ...]
    """(H, W, C) of camera observations, (W, H, C) of grid maps."""
    num_actions: int
    encoder: str
    """'grid', 'image' or 'image_map' (camera and the robot's map crop)."""
    task: str = ''
    """the task it was trained on ('' when not recorded)."""
    recurrent: int = 0
    """size H of its state (the GRU's units); 0: a reactive policy, whose state is empty."""
    mission_words: tuple[str, ...] = ()
    """the words of the missions it learnt from, in token id order (student_deploy.missions)."""
    mission_length: int = 0
    """tokens L of its mission input; 0: a policy that reads no mission."""
    chooses_options: bool = False
    """its actions are the teacher's options (llm_teacher.option_level), which the embodied skills
    turn into motions on the robot's map: not a motion policy, so the deploy nodes refuse it."""

    def to_json(self) -> str:
        return json.dumps({**asdict(self), 'obs_shape': list(self.obs_shape), 'mission_words': list(self.mission_words)})

    @classmethod
    def from_json(cls, text: str | bytes) -> PolicyInfo:
        data = json.loads(text)
        return cls(tuple(data['obs_shape']), int(data['num_actions']), data['encoder'], data.get('task', ''),
                   int(data.get('recurrent', 0)), tuple(data.get('mission_words', ())),
                   int(data.get('mission_length', 0)), bool(data.get('chooses_options', False)))


def torch_device(name: str) -> torch.device:
    """The torch device `name` (cpu, cuda, cuda:1, ...), for training and for running a policy.

    :raises ValueError: not a device name, or cuda where torch sees no CUDA device.
    """
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f'device {name!r} is not a torch device ({err}); use cpu or cuda') from err
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {name!r} asked for, but torch sees no CUDA device here; use device cpu')
    return device


class Policy:
    """An exported policy: `step(obs, state)` gives action logits (torch, float32) for a uint8 batch
    and the next state (empty for a reactive policy).

    A .pt (TorchScript) file runs code from its archive when loaded; .onnx is data only (load_policy).
    """

    def __init__(self, path: str | Path, device: str = 'cpu'):
        """:raises ValueError: missing or unusable file, or an unknown suffix, naming the file."""
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f'policy file {self.path} does not exist (training writes run_dir/policy.pt '
                             f'and run_dir/policy.onnx at its end)')
        self.device = torch_device(device)
        if self.path.suffix == '.onnx':
            self._load_onnx()
        else:
            self._load_torchscript()
        self.vocabulary = MissionVocabulary(self.info.mission_words) if self.reads_mission else None
        if self.reads_mission and self.info.mission_length != MISSION_LENGTH:
            raise ValueError(f'{self.path} reads missions of {self.info.mission_length} tokens, this version encodes '
                             f'{MISSION_LENGTH}: export it again with this version')

    def _load_torchscript(self) -> None:
        # torch.jit.load runs the code inside the archive: a policy.pt is a program. Load only files
        # this project exported (or that you would run as code); policy.onnx is the data-only format.
        extra = {INFO_FILE: ''}
        try:
            self._module = torch.jit.load(str(self.path), map_location=self.device, _extra_files=extra).eval()
        except Exception as err:
            raise ValueError(f'{self.path} is not an exported student policy ({type(err).__name__}: {err})') from err
        self.info = PolicyInfo.from_json(extra[INFO_FILE]) if extra[INFO_FILE] else None
        self._session = None

    def _load_onnx(self) -> None:
        import onnxruntime  # only for .onnx files: a robot serving TorchScript does not need it
        try:
            self._session = onnxruntime.InferenceSession(str(self.path), providers=['CPUExecutionProvider'])
        except Exception as err:
            raise ValueError(f'{self.path} is not a usable ONNX policy ({type(err).__name__}: {err})') from err
        info = self.path.with_suffix('.json')
        self.info = PolicyInfo.from_json(info.read_text()) if info.is_file() else None
        self._module = None

    @property
    def state_size(self) -> int:
        return self.info.recurrent if self.info is not None else 0

    @property
    def reads_mission(self) -> bool:
        return self.info is not None and self.info.mission_length > 0

    def encode_missions(self, texts: list[str], strict: bool = True) -> torch.Tensor | None:
        """Token ids (B, L) of mission texts; None for a policy that reads no mission. Not `strict`
        (evaluation), a word the policy never learnt reads as UNKNOWN, as in training.

        :raises ValueError: a mission of more words than a policy reads, or (`strict`) one with no
            words or with words the policy never learnt (named).
        """
        if not self.reads_mission:
            return None
        return torch.from_numpy(self.vocabulary.encode(texts, strict=strict))

    def initial_state(self, batch: int) -> torch.Tensor:
        """The state of `batch` robots at an episode's start (zeros; (batch, 0) for a reactive policy)."""
        return torch.zeros(batch, self.state_size)

    @torch.no_grad()
    def step(self, obs: np.ndarray | torch.Tensor, state: torch.Tensor,
             mission: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(action logits (B, A), next state (B, H)) on the CPU, of observations (B, *obs_shape) uint8
        and the state the last step returned (or initial_state); a policy that reads the mission
        needs its token ids (encode_missions)."""
        recurrent = self.state_size > 0
        if self.reads_mission and mission is None:
            raise ValueError(f'{self.path} reads the mission: give its token ids (encode_missions)')
        if self._session is not None:
            feed = {'obs': np.ascontiguousarray(obs.numpy() if isinstance(obs, torch.Tensor) else obs, np.uint8)}
            if recurrent:
                feed['state'] = np.ascontiguousarray(state.numpy(), np.float32)
            if self.reads_mission:
                feed['mission'] = np.ascontiguousarray(mission.numpy(), np.int64)
            out = self._session.run(None, feed)
            return torch.from_numpy(out[0]), torch.from_numpy(out[1]) if recurrent else state
        inputs = [torch.as_tensor(obs).to(self.device)]
        if recurrent:
            inputs.append(state.to(self.device))
        if self.reads_mission:
            inputs.append(mission.to(self.device))
        out = self._module(*inputs)
        if recurrent:
            return out[0].float().cpu(), out[1].float().cpu()
        return out.float().cpu(), state


def load_policy(path: str | Path, device: str = 'cpu') -> Policy:
    """The exported policy at `path` (.pt TorchScript or .onnx); ValueError naming the file if unusable.

    Security: a .pt file is loaded with torch.jit.load, which runs the TorchScript code inside the
    archive: a policy.pt from elsewhere is a program, to be trusted as one. For a file you did not
    export yourself prefer its policy.onnx (a graph of standard operators and weights, run by
    onnxruntime: data, not code). See docs/safety.md.
    """
    return Policy(path, device)


def choose_actions(logits: torch.Tensor, greedy: bool, generator: torch.Generator | None = None) -> np.ndarray:
    """The most likely actions, or actions sampled from the policy."""
    if greedy:
        return logits.argmax(-1).numpy()
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1).numpy()
