"""Policy networks: actor-critic heads over a grid encoder (MiniGrid memory maps or egocentric views)."""
from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Categorical

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


class ActorCritic(nn.Module):
    """pi(a|s) and V(s): linear heads on one shared encoder, initialised as in CleanRL's Atari agent.

    (A 64-unit tanh MLP actor head, tried first, could not fit even the agent's heading from the
    memory map within hundreds of steps; the linear head fits it at once.)
    """

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, features: int = 256):
        super().__init__()
        self.obs_shape, self.num_actions = tuple(obs_shape), num_actions
        self.encoder = GridEncoder(obs_shape, features)
        self.actor = nn.Linear(features, num_actions)
        self.critic = nn.Linear(features, 1)
        for head, gain in ((self.actor, 1.0), (self.critic, 1.0)):
            nn.init.orthogonal_(head.weight, gain)
            nn.init.zeros_(head.bias)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Action logits (B, A) and values (B,)."""
        features = self.encoder(obs)
        return self.actor(features), self.critic(features).squeeze(-1)

    def distribution(self, obs: torch.Tensor) -> tuple[Categorical, torch.Tensor]:
        logits, values = self(obs)
        return Categorical(logits=logits), values
