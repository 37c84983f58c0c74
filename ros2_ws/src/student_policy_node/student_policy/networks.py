"""Policy networks: actor-critic heads over an encoder of grid observations (MiniGrid memory maps or
egocentric views), of camera images (rgb, or rgb + quantised depth), or of camera images with the
robot's map crop beside them; optionally a memory and a mission encoder."""
from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Categorical

from llm_teacher_common.families import family_of_observation
from student_deploy.missions import MAX_WORDS, MissionVocabulary

# Sizes of the per-channel vocabularies of MiniGrid encodings: object type (11), colour (6),
# state (3), agent layer (0 or 1 + heading). Rounded up so unexpected codes do not crash.
CHANNEL_VOCAB = 16
EMBED_DIM = 16


class GridEncoder(nn.Module):
    """Embeds each uint8 channel of a (W, H, C) grid, sums them, and runs a small CNN."""

    def __init__(self, obs_shape: tuple[int, ...], features: int = 256):
        super().__init__()
        if len(obs_shape) != 3:
            raise ValueError(f'grid observations are (width, height, channels), got shape {tuple(obs_shape)}')
        width, height, channels = obs_shape
        self.embeddings = nn.ModuleList(nn.Embedding(CHANNEL_VOCAB, EMBED_DIM) for _ in range(channels))
        self.cnn = nn.Sequential(
            nn.Conv2d(EMBED_DIM, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.cnn(torch.zeros(1, EMBED_DIM, width, height)).shape[1]
        # Most cells of a memory map are the same (unseen, wall), so observations differ by a tiny
        # share of the CNN's output; normalising it makes those differences learnable at all.
        self.head = nn.Sequential(nn.LayerNorm(flat), nn.Linear(flat, features), nn.ReLU())
        self.features = features

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        codes = obs.long().clamp_(0, CHANNEL_VOCAB - 1)
        x = sum(embed(codes[..., c]) for c, embed in enumerate(self.embeddings))  # (B, W, H, E)
        return self.head(self.cnn(x.permute(0, 3, 1, 2)))


class ImageEncoder(nn.Module):
    """A (H, W, C) uint8 camera image (rgb, or rgb + depth as encoded by habitat_bridge.embodied.vector)
    -> features: the Nature-DQN CNN of CleanRL's Atari agent, scaled to [0, 1] first."""

    def __init__(self, obs_shape: tuple[int, ...], features: int = 256):
        super().__init__()
        if len(obs_shape) != 3 or min(obs_shape[:2]) < 36:
            raise ValueError(f'camera observations are (height, width, channels) of at least 36x36 pixels, '
                             f'got shape {tuple(obs_shape)}')
        height, width, channels = obs_shape
        self.cnn = nn.Sequential(
            nn.Conv2d(channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.cnn(torch.zeros(1, channels, height, width)).shape[1]
        self.head = nn.Sequential(nn.Linear(flat, features), nn.ReLU())
        self.features = features

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.cnn(obs.permute(0, 3, 1, 2).float() / 255.0))


CAMERA_CHANNELS = 4  # rgbd: the camera part of "rgbd_map"


def small_frame_cnn(channels: int) -> nn.Sequential:
    """3x3 convolutions of stride 2: a 48x48 input keeps a 6x6 feature map, where the Atari CNN's
    8x8 stride-4 first layer leaves 2x2 and loses an object a few pixels wide (docs/results.md,
    "Can a camera student imitate its teacher?")."""
    return nn.Sequential(nn.Conv2d(channels, 32, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(64, 32, 3, padding=1), nn.ReLU(), nn.Flatten())


class ImageMapEncoder(nn.Module):
    """A camera image with the robot's map crop beside it ((H, W, 4 + MAP_CHANNELS) uint8, the
    embodied observation "rgbd_map") -> features: one small-frame CNN on the rgbd channels, one on
    the map's, joined by a linear layer."""

    def __init__(self, obs_shape: tuple[int, ...], features: int = 256):
        super().__init__()
        if len(obs_shape) != 3 or obs_shape[2] <= CAMERA_CHANNELS or min(obs_shape[:2]) < 8:
            raise ValueError(f'camera + map observations are (height, width, {CAMERA_CHANNELS} + map channels) of at '
                             f'least 8x8, got shape {tuple(obs_shape)}')
        height, width, channels = obs_shape
        self.camera = small_frame_cnn(CAMERA_CHANNELS)
        self.map = small_frame_cnn(channels - CAMERA_CHANNELS)
        with torch.no_grad():
            flat = sum(cnn(torch.zeros(1, c, height, width)).shape[1]
                       for cnn, c in ((self.camera, CAMERA_CHANNELS), (self.map, channels - CAMERA_CHANNELS)))
        self.head = nn.Sequential(nn.Linear(flat, features), nn.ReLU())
        self.features = features

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.permute(0, 3, 1, 2).float() / 255.0
        return self.head(torch.cat([self.camera(x[:, :CAMERA_CHANNELS]), self.map(x[:, CAMERA_CHANNELS:])], 1))


ENCODERS = {'grid': GridEncoder, 'image': ImageEncoder, 'image_map': ImageMapEncoder}


class MissionEncoder(nn.Module):
    """Mission token ids (B, L) (student_deploy.missions, left-padded) -> features: word
    embeddings read by a GRU, its last state (BabyAI's instruction encoder)."""

    def __init__(self, features: int = 128, embedding: int = 32):
        super().__init__()
        self.embedding = nn.Embedding(MAX_WORDS + 2, embedding, padding_idx=0)
        self.gru = nn.GRU(embedding, features, batch_first=True)
        self.features = features

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        words = self.embedding(tokens.long())
        first = words.new_zeros(1, words.shape[0], self.features)  # explicit: ONNX's GRU then takes any batch
        return self.gru(words, first)[1][0]


def encoder_for(obs_encoding: str) -> str:
    """The encoder of a simulator's observation encoding (StepBatch.obs_encoding)."""
    return family_of_observation(obs_encoding).encoder_of(obs_encoding)


class ActorCritic(nn.Module):
    """pi(a|s) and V(s): linear heads on one shared encoder, initialised as in CleanRL's Atari agent;
    with `recurrent` > 0, a GRU core of that many units between the encoder and the heads, so that
    the policy acts on what it saw earlier in the episode (a memory).

    With `mission`, it also reads the mission (token ids from `vocabulary`, which training grows):
    its features and the observation's are joined by a linear layer before the core.

    The state of a reactive policy is an empty (B, 0) tensor, so every caller handles both alike:
    `step(obs, state) -> (logits, new state)`, with the state of a new episode all zeros.
    (A 64-unit tanh MLP actor head, tried first, could not fit even the agent's heading from the
    memory map within hundreds of steps; the linear head fits it at once.)
    """

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, features: int = 256, encoder: str = 'grid',
                 recurrent: int = 0, mission: bool = False, mission_words: list[str] | tuple[str, ...] = ()):
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f'encoder {encoder!r} is not one of {tuple(ENCODERS)}')
        if recurrent < 0:
            raise ValueError(f'recurrent (the GRU size) must be >= 0 (0: no memory), got {recurrent}')
        self.obs_shape, self.num_actions, self.encoder_name = tuple(obs_shape), num_actions, encoder
        self.recurrent = recurrent
        self.encoder = ENCODERS[encoder](obs_shape, features)
        self.vocabulary = MissionVocabulary(mission_words) if mission else None
        if mission:
            self.mission_encoder = MissionEncoder()
            self.join = nn.Sequential(nn.Linear(features + self.mission_encoder.features, features), nn.ReLU())
        self.core = nn.GRUCell(features, recurrent) if recurrent else None
        head = recurrent or features
        self.actor = nn.Linear(head, num_actions)
        self.critic = nn.Linear(head, 1)
        for layer, gain in ((self.actor, 1.0), (self.critic, 1.0)):
            nn.init.orthogonal_(layer.weight, gain)
            nn.init.zeros_(layer.bias)

    def initial_state(self, batch: int, device: torch.device | str = 'cpu') -> torch.Tensor:
        return torch.zeros(batch, self.recurrent, device=device)

    @property
    def reads_mission(self) -> bool:
        return self.vocabulary is not None

    def encode_missions(self, texts: list[str], grow: bool = False, strict: bool = False) -> torch.Tensor | None:
        """Token ids (B, L) of mission texts, learning new words with `grow`; unknown words read as
        UNKNOWN, or (`strict`) are refused as an exported policy refuses them (inference.Policy).
        None for a policy that reads no mission."""
        if self.vocabulary is None:
            return None
        return torch.from_numpy(self.vocabulary.encode(texts, grow=grow, strict=strict))

    def encode(self, obs: torch.Tensor, mission: torch.Tensor | None) -> torch.Tensor:
        features = self.encoder(obs)
        if self.vocabulary is not None:
            if mission is None:
                raise ValueError('this policy reads the mission: give its token ids (encode_missions)')
            features = self.join(torch.cat([features, self.mission_encoder(mission)], -1))
        return features

    def forward(self, obs: torch.Tensor, state: torch.Tensor,
                mission: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Action logits (B, A), values (B,) and the next state (B, H) of observations (B, *obs_shape)
        (and, for a policy that reads it, the mission's token ids (B, L))."""
        features = self.encode(obs, mission)
        if self.core is not None:
            state = features = self.core(features, state)
        return self.actor(features), self.critic(features).squeeze(-1), state

    def step(self, obs: torch.Tensor, state: torch.Tensor,
             mission: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, next state): what acting needs, in the shape of an exported policy."""
        logits, _, state = self(obs, state, mission)
        return logits, state

    def unroll(self, obs: torch.Tensor, state: torch.Tensor, starts: torch.Tensor,
               mission: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (T, B, A) and values (T, B) along sequences obs (T, B, *obs_shape) (missions
        (T, B, L)) from `state` (B, H), zeroing the state where starts (T, B) marks an episode's
        first observation."""
        steps, batch = obs.shape[:2]
        features = self.encode(obs.flatten(0, 1), None if mission is None else mission.flatten(0, 1))
        features = features.view(steps, batch, -1)
        if self.core is not None:
            outputs = []
            for t in range(steps):  # the CNN ran on all steps at once; only the small core loops
                state = self.core(features[t], state * (1.0 - starts[t]).unsqueeze(-1))
                outputs.append(state)
            features = torch.stack(outputs)
        return self.actor(features), self.critic(features).squeeze(-1)

    def distribution(self, obs: torch.Tensor, state: torch.Tensor,
                     mission: torch.Tensor | None = None) -> tuple[Categorical, torch.Tensor, torch.Tensor]:
        logits, values, state = self(obs, state, mission)
        return Categorical(logits=logits), values, state


def eager_copy(policy: ActorCritic) -> ActorCritic:
    """A plain (not compiled) copy of a policy's current weights, on the CPU: to trace and export,
    to evaluate or act with while the original trains on."""
    copy = ActorCritic(policy.obs_shape, policy.num_actions, encoder=policy.encoder_name, recurrent=policy.recurrent,
                       mission=policy.reads_mission, mission_words=policy.vocabulary.words if policy.reads_mission else ())
    copy.load_state_dict({k: v.detach().cpu().clone() for k, v in policy.state_dict().items()})
    return copy.eval()
