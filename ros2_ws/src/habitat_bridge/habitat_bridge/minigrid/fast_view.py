"""MiniGrid's egocentric observation from arrays: the same dict as `MiniGridEnv.gen_obs`.

MiniGrid builds every view cell by cell in Python (Grid.slice, rotate_left once per heading,
process_vis, Grid.encode): ~40% of our training loop. Here the whole grid is kept encoded in
one padded array, the view is one gather from it, and the occlusion pass (process_vis) is
memoised by which view cells are opaque.

Keeping the encoded grid in sync, on every call and for any env:
- a new Grid (reset, or an env that rebuilds it) is encoded in full;
- cells whose object changed (pickup, drop, a box opened, an object moved with grid.set) are
  found by comparing the grid's cell list with a snapshot: WorldObj has no __eq__, so that
  list comparison is an identity check done in C (~1 us);
- objects whose encoding or transparency is state (doors: open/closed/locked) are re-encoded
  on every call, and there are few of them.
What is not tracked: changing a plain object's type or colour in place after the episode's
first observation (no MiniGrid env does; babyai's GoTo greys distractors while generating).
"""
from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np
from minigrid.core.constants import OBJECT_TO_IDX
from minigrid.core.world_object import Wall, WorldObj
from minigrid.minigrid_env import MiniGridEnv

from habitat_bridge.minigrid.observation import view_offsets

_EMPTY = (OBJECT_TO_IDX['empty'], 0, 0)
_OUTSIDE = Wall().encode()  # Grid.slice shows cells off the grid as walls
_PLAIN_SEE_BEHIND = (WorldObj.see_behind, Wall.see_behind)  # constant per class


def install(env: gym.Env) -> bool:
    """Make `env`'s MiniGrid base compute its observations with a FastView; False (and nothing
    changed) when its class has its own gen_obs or gen_obs_grid, whose views we cannot know.

    An instance attribute rather than a wrapper, because MiniGridEnv.step and reset call
    self.gen_obs() themselves: a wrapper could only add work after MiniGrid's own view.
    """
    base = env.unwrapped
    if type(base).gen_obs is not MiniGridEnv.gen_obs or type(base).gen_obs_grid is not MiniGridEnv.gen_obs_grid:
        return False
    base.gen_obs = FastView(base)
    return True


class FastView:
    """Callable as `env.gen_obs()`: {'image', 'direction', 'mission'} as MiniGrid makes them."""

    def __init__(self, env: MiniGridEnv):
        self.env = env
        self.size = env.agent_view_size
        self._grid = None  # the Grid the cache was encoded from
        self._cells: list = []  # snapshot of that grid's cell list
        self._stateful: dict[int, tuple[int, WorldObj]] = {}  # objects that change in place: cell -> (flat, object)

    def __call__(self) -> dict:
        env, size = self.env, self.size
        self._sync(env.grid)
        for flat, obj in self._stateful.values():
            self._codes[flat] = obj.encode()
            self._opaque[flat] = not obj.see_behind()
        ax, ay = env.agent_pos
        cells = self._flat_offsets[env.agent_dir] + (ax * self._stride + ay)
        image = self._codes[cells]
        if not env.see_through_walls:
            image *= _visible(size, self._opaque[cells].tobytes())
        # The agent sees what it carries in its own cell (MiniGrid's gen_obs_grid).
        image[size // 2, size - 1] = env.carrying.encode() if env.carrying else _EMPTY
        return {'image': image, 'direction': env.agent_dir, 'mission': env.mission}

    def _sync(self, grid) -> None:
        if grid is not self._grid:
            self._new_grid(grid)
        elif grid.grid != self._cells:
            self._encode([k for k, (a, b) in enumerate(zip(grid.grid, self._cells)) if a is not b])

    def _new_grid(self, grid) -> None:
        """Pad by size - 1 on every side so that any view is one gather, whatever the heading."""
        pad = self.size - 1
        self._grid, self._pad, self._stride = grid, pad, grid.height + 2 * pad
        shape = ((grid.width + 2 * pad) * self._stride,)
        self._codes = np.full(shape + (3,), _OUTSIDE, np.uint8)
        self._opaque = np.ones(shape, bool)
        self._flat_offsets = [view_offsets(self.size, d) @ (self._stride, 1) + pad * (self._stride + 1)
                              for d in range(4)]
        self._cells, self._stateful = [None] * len(grid.grid), {}
        self._encode(range(len(grid.grid)))

    def _encode(self, indices) -> None:
        grid = self._grid
        for k in indices:
            obj = self._cells[k] = grid.grid[k]
            flat = (k % grid.width + self._pad) * self._stride + k // grid.width + self._pad
            self._stateful.pop(k, None)
            if obj is None:
                self._codes[flat], self._opaque[flat] = _EMPTY, False
                continue
            self._codes[flat], self._opaque[flat] = obj.encode(), not obj.see_behind()
            if type(obj).encode is not WorldObj.encode or type(obj).see_behind not in _PLAIN_SEE_BEHIND:
                self._stateful[k] = (flat, obj)


@functools.lru_cache(maxsize=1 << 14)
def _visible(size: int, opaque: bytes) -> np.ndarray:
    """(size, size, 1) uint8, 1 where Grid.process_vis lets the agent see a view cell, given which
    view cells are opaque (a (size, size) bool array's bytes). Transcribed from process_vis;
    memoised because views repeat (~200 patterns in all of DoorKey-8x8; mazes have more, hence
    the bound: a miss costs less than MiniGrid's own pass)."""
    opaque = np.frombuffer(opaque, bool).reshape(size, size)
    seen = np.zeros((size, size), np.uint8)
    seen[size // 2, size - 1] = 1  # the agent's cell
    for j in reversed(range(size)):
        for i in range(size - 1):  # left to right
            if seen[i, j] and not opaque[i, j]:
                seen[i + 1, j] = 1
                if j > 0:
                    seen[i + 1, j - 1] = seen[i, j - 1] = 1
        for i in reversed(range(1, size)):  # right to left
            if seen[i, j] and not opaque[i, j]:
                seen[i - 1, j] = 1
                if j > 0:
                    seen[i - 1, j - 1] = seen[i, j - 1] = 1
    seen.flags.writeable = False  # shared by every env and step
    return seen[..., None]
