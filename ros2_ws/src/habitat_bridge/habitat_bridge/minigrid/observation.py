"""What a MiniGrid robot knows: the paper's memory map, and the perception list the teacher reads.

Memory map encoding (uint8, shape (width, height, 4), indexed [x, y]):
- channels 0..2 hold MiniGrid's (object type, colour, state) of every cell the agent has seen
  this episode, with OBJECT_TO_IDX['unseen'] (0) for cells never seen. A cell keeps what it
  showed when last seen.
- at the agent's cell, channels 0..2 hold the carried object instead, or ('empty', 0, 0) when
  it carries nothing (the cell under the agent is always passable, so nothing is lost);
- channel 3 is 0 everywhere except the agent's cell, where it is 1 + heading
  (heading 0 east, 1 south, 2 west, 3 north).
"""
from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np
from minigrid.core.constants import DIR_TO_VEC, IDX_TO_COLOR, IDX_TO_OBJECT, OBJECT_TO_IDX, STATE_TO_IDX

from llm_teacher_common.perception import PerceivedObject, Perception

UNSEEN = OBJECT_TO_IDX['unseen']
EMPTY = OBJECT_TO_IDX['empty']
IDX_TO_STATE = {idx: name for name, idx in STATE_TO_IDX.items()}
# Objects the perception reports: what a teacher can ask the robot to go to or avoid.
REPORTED_TYPES = ('key', 'door', 'ball', 'box', 'goal', 'lava')
_REPORTED = np.zeros(256, bool)  # object index -> reported? (a lookup: np.isin cost ~40 us a step)
_REPORTED[[OBJECT_TO_IDX[t] for t in REPORTED_TYPES]] = True


class MemoryMapObservation(gym.ObservationWrapper):
    """Replaces the observation with the episode's memory map; `perception()` describes it.

    Works on any MiniGrid env. The map is filled from the egocentric view the env already
    computed, so it adds no second visibility pass.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        base = env.unwrapped
        self.observation_space = gym.spaces.Box(0, 255, (base.width, base.height, 4), np.uint8)
        self._memory = np.zeros((base.width, base.height, 3), np.uint8)
        self._visible = np.zeros((base.width, base.height), bool)
        self.last_view = np.zeros((base.agent_view_size, base.agent_view_size, 3), np.uint8)

    def reset(self, **kwargs):
        self._memory[:] = UNSEEN
        return super().reset(**kwargs)

    def observation(self, observation):
        base = self.env.unwrapped
        view = self.last_view = observation['image']
        world = np.asarray(base.agent_pos) + view_offsets(view.shape[0], base.agent_dir)
        inside = (world[..., 0] >= 0) & (world[..., 0] < base.width) & (world[..., 1] >= 0) & (world[..., 1] < base.height)
        seen = inside & (view[..., 0] != UNSEEN)
        xs, ys = world[seen, 0], world[seen, 1]
        self._memory[xs, ys] = view[seen]
        self._visible[:] = False
        self._visible[xs, ys] = True
        ax, ay = base.agent_pos
        under = base.grid.get(ax, ay)  # the view shows the carried object here, not the floor
        self._memory[ax, ay] = under.encode() if under is not None else (EMPTY, 0, 0)

        obs = np.zeros((base.width, base.height, 4), np.uint8)
        obs[..., :3] = self._memory
        obs[ax, ay, :3] = base.carrying.encode() if base.carrying is not None else (EMPTY, 0, 0)
        obs[ax, ay, 3] = 1 + base.agent_dir
        return obs

    def perception(self) -> Perception:
        """The objects remembered this episode, relative to the robot, and what it carries."""
        base = self.env.unwrapped
        ax, ay = (int(v) for v in base.agent_pos)
        forward, right = base.dir_vec, base.right_vec
        objects = []
        for x, y in zip(*np.nonzero(_REPORTED[self._memory[..., 0]])):
            dx, dy = int(x) - ax, int(y) - ay
            objects.append(PerceivedObject(
                type=IDX_TO_OBJECT[self._memory[x, y, 0]],
                color=IDX_TO_COLOR[self._memory[x, y, 1]],
                state=_state_name(self._memory[x, y]),
                forward=float(dx * forward[0] + dy * forward[1]),
                left=float(-(dx * right[0] + dy * right[1])),
                grid_x=int(x), grid_y=int(y), visible=bool(self._visible[x, y]),
            ))
        carrying = None
        if base.carrying is not None:
            carrying = PerceivedObject(type=base.carrying.type, color=base.carrying.color)  # where the robot is
        return Perception(mission=base.mission, objects=objects, carrying=carrying,
                          x=float(ax), y=float(ay), heading=int(base.agent_dir))


@functools.cache
def view_offsets(size: int, direction: int) -> np.ndarray:
    """(size, size, 2): where each cell of the egocentric view lies relative to the agent, facing
    `direction`. View cell (i, j) is at top_left - j*forward + i*right (minigrid's render()).
    Cached: rebuilding it on every step was a third of the wrapper's time."""
    forward, right = DIR_TO_VEC[direction], DIR_TO_VEC[(direction + 1) % 4]
    top_left = forward * (size - 1) - right * (size // 2)
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing='ij')
    offsets = top_left - j[..., None] * forward + i[..., None] * right
    offsets.flags.writeable = False  # shared by every env and step
    return offsets


def _state_name(cell: np.ndarray) -> str:
    """Doors have a state; other objects report none."""
    return IDX_TO_STATE[cell[2]] if cell[0] == OBJECT_TO_IDX['door'] else ''
