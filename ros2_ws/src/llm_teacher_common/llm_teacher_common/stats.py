"""Success rates a user can trust: with their number of episodes and a 95% interval."""
from __future__ import annotations

import math


def wilson_interval(successes: int, episodes: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (sound near 0 and 1, unlike p +- 2 se)."""
    if episodes <= 0:
        return 0.0, 1.0
    p = successes / episodes
    centre = (p + z * z / (2 * episodes)) / (1 + z * z / episodes)
    half = z * math.sqrt(p * (1 - p) / episodes + z * z / (4 * episodes * episodes)) / (1 + z * z / episodes)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_text(successes: int, episodes: int) -> str:
    """'0.90 [0.84, 0.94] over 150 episodes'."""
    low, high = wilson_interval(successes, episodes)
    return f'{successes / max(episodes, 1):.2f} [{low:.2f}, {high:.2f}] over {episodes} episodes'
