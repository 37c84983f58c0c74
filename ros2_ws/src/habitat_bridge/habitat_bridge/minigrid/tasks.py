"""The four door-key tasks of Zhou et al. (IJCAI 2024, arXiv 2311.13373) on minigrid 3.x.

## Description
Every task is solved the moment a locked door is opened. The agent sees a 3x3 egocentric
view and has 150 steps. The tasks differ in what stands between the agent and that door:

| id                          | grid  | layout                                                    |
|-----------------------------|-------|-----------------------------------------------------------|
| MiniGrid-SimpleDoorKey-v0   | 10x10 | one room of random size 5..10, locked door on a random    |
|                             |       | wall, the matching key inside                             |
| MiniGrid-LavaDoorKey-v0     | 10x10 | SimpleDoorKey plus one lava tile inside the room, never   |
|                             |       | on the cell just inside the door                          |
| MiniGrid-ColoredDoorKey-v0  | 10x10 | SimpleDoorKey with a blue door, a blue and a red key,     |
|                             |       | neither on the cell just inside the door                  |
| MiniGrid-TwoDoor-v0         | 20x20 | one 20x20 room, locked doors on two opposite walls, the   |
|                             |       | key in the centre                                         |

## Action space
MiniGrid's `Actions`: 0 left, 1 right, 2 forward, 3 pickup, 4 drop, 5 toggle, 6 done.

## Observation encoding
MiniGrid's standard dict (`image` is the 3x3x3 egocentric view); wrap with
`habitat_bridge.minigrid.observation.MemoryMapObservation` for the paper's memory map.

## Rewards
`1 - 0.9 * t / 150` on success (MiniGrid's `_reward`), 0 otherwise. Stepping into lava
ends the episode with reward 0.

## Termination
Success (a locked door opened; `info["success"] = True`), lava, or truncation at 150 steps.

## Registered ids
The four above, registered when `habitat_bridge` is imported. A behaviour change bumps the
version suffix.
"""
from __future__ import annotations

from gymnasium.envs.registration import register, registry
from minigrid.core.grid import Grid
from minigrid.core.mission import MissionSpace
from minigrid.core.world_object import Door, Key, Lava
from minigrid.minigrid_env import MiniGridEnv

AGENT_VIEW_SIZE = 3
MAX_STEPS = 150


def _one_door_mission() -> str:
    return 'open the locked door'


def _two_door_mission() -> str:
    return 'open a locked door'


class DoorKeyTask(MiniGridEnv):
    """Base of the paper's tasks: success ends the episode when a locked door opens."""

    def __init__(self, grid_size: int, **kwargs):
        kwargs.setdefault('agent_view_size', AGENT_VIEW_SIZE)
        kwargs.setdefault('max_steps', MAX_STEPS)
        super().__init__(
            mission_space=MissionSpace(mission_func=self.mission),
            grid_size=grid_size,
            see_through_walls=False,
            **kwargs,
        )
        self.locked_doors: list[Door] = []

    # Module-level functions (not lambdas) so that environments pickle.
    mission = staticmethod(_one_door_mission)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        success = any(door.is_open for door in self.locked_doors)
        if success:
            terminated, reward = True, self._reward()
        info['success'] = success
        return obs, reward, terminated, truncated, info

    def _room(self, width: int, height: int, min_size: int, max_size: int):
        """Walls of one room of random size placed at random inside the grid; returns its box."""
        room_w = self._rand_int(min_size, min(max_size, width) + 1)
        room_h = self._rand_int(min_size, min(max_size, height) + 1)
        left = self._rand_int(0, width - room_w + 1)
        top = self._rand_int(0, height - room_h + 1)
        self.grid.wall_rect(left, top, room_w, room_h)
        return left, top, room_w, room_h

    def _door_on_random_wall(self, box, color: str):
        """A locked door in a random wall of `box` (never a corner); returns (door, inside cell)."""
        left, top, w, h = box
        wall = self._rand_int(0, 4)
        if wall in (0, 1):  # top or bottom wall
            x = self._rand_int(left + 1, left + w - 1)
            y = top if wall == 0 else top + h - 1
            inside = (x, y + 1) if wall == 0 else (x, y - 1)
        else:  # left or right wall
            y = self._rand_int(top + 1, top + h - 1)
            x = left if wall == 2 else left + w - 1
            inside = (x + 1, y) if wall == 2 else (x - 1, y)
        door = Door(color, is_locked=True)
        self.grid.set(x, y, door)
        door.init_pos = door.cur_pos = (x, y)
        self.locked_doors.append(door)
        return door, inside

    def _interior(self, box):
        left, top, w, h = box
        return (left + 1, top + 1), (w - 2, h - 2)


class SimpleDoorKeyEnv(DoorKeyTask):
    """One room of random size 5..10 in a 10x10 grid; open its locked door with the key."""

    def __init__(self, **kwargs):
        super().__init__(grid_size=10, **kwargs)

    def _gen_grid(self, width, height):
        self.grid = Grid(width, height)
        self.locked_doors = []
        box = self._room(width, height, 5, 10)
        door, _ = self._door_on_random_wall(box, 'yellow')
        self._place_inside(box, [Key(door.color)])

    def _place_inside(self, box, objects, reject_fn=None):
        top_left, size = self._interior(box)
        for obj in objects:
            self.place_obj(obj, top=top_left, size=size, reject_fn=reject_fn)
        self.place_agent(top=top_left, size=size)


class LavaDoorKeyEnv(SimpleDoorKeyEnv):
    """SimpleDoorKey plus one lava tile in the room, never on the cell just inside the door."""

    def _gen_grid(self, width, height):
        self.grid = Grid(width, height)
        self.locked_doors = []
        box = self._room(width, height, 5, 10)
        door, inside = self._door_on_random_wall(box, 'yellow')
        self._place_inside(box, [Lava(), Key(door.color)], reject_fn=lambda _env, pos: tuple(pos) == inside)


class ColoredDoorKeyEnv(SimpleDoorKeyEnv):
    """SimpleDoorKey with a blue locked door, the blue key and a red distractor key.

    No key lies on the cell just inside the door, where the red one would block it.
    """

    def _gen_grid(self, width, height):
        self.grid = Grid(width, height)
        self.locked_doors = []
        box = self._room(width, height, 5, 10)
        _, inside = self._door_on_random_wall(box, 'blue')
        self._place_inside(box, [Key('blue'), Key('red')], reject_fn=lambda _env, pos: tuple(pos) == inside)


class TwoDoorEnv(DoorKeyTask):
    """A 20x20 room with locked doors on two opposite walls and the key in its centre."""

    mission = staticmethod(_two_door_mission)

    def __init__(self, **kwargs):
        super().__init__(grid_size=20, **kwargs)

    def _gen_grid(self, width, height):
        self.grid = Grid(width, height)
        self.locked_doors = []
        self.grid.wall_rect(0, 0, width, height)
        if self._rand_bool():  # doors on the left and right walls
            cells = [(0, self._rand_int(1, height - 1)), (width - 1, self._rand_int(1, height - 1))]
        else:  # doors on the top and bottom walls
            cells = [(self._rand_int(1, width - 1), 0), (self._rand_int(1, width - 1), height - 1)]
        for x, y in cells:
            door = Door('yellow', is_locked=True)
            self.put_obj(door, x, y)
            self.locked_doors.append(door)
        self.put_obj(Key('yellow'), width // 2, height // 2)
        self.place_agent(top=(1, 1), size=(width - 2, height - 2))


TASK_IDS = {
    'MiniGrid-SimpleDoorKey-v0': SimpleDoorKeyEnv,
    'MiniGrid-LavaDoorKey-v0': LavaDoorKeyEnv,
    'MiniGrid-ColoredDoorKey-v0': ColoredDoorKeyEnv,
    'MiniGrid-TwoDoor-v0': TwoDoorEnv,
}


def register_tasks() -> None:
    """Register the paper's tasks with gymnasium (idempotent)."""
    for task_id, cls in TASK_IDS.items():
        if task_id not in registry:
            register(id=task_id, entry_point=f'{__name__}:{cls.__name__}')
