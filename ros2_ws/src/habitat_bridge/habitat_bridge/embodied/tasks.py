"""Embodied tasks for the teacher-student method on MiniWorld, registered when this module is
imported (the MiniWorld backend imports it):

- MiniWorld-GoToObject-v0: four rooms joined by doorways, a target ("go to the red ball") among
  distractors of other colours and kinds; success when the robot is next to the target.
- MiniWorld-GoToRedBall-v0: the same, the target always the red ball (a student that sees only
  its camera cannot read which object the mission names).
- MiniWorld-PutNext-v0 (MiniWorld's own) is the two-stage task: pick up the red box, put it next
  to the yellow box.

MiniWorld tasks end with a positive reward exactly when they succeed; the backend reports that as
info['success'], as the MiniGrid tasks do.
"""
from __future__ import annotations

import gymnasium as gym
from gymnasium import utils
from miniworld.entity import COLOR_NAMES, Ball, Box, Key
from miniworld.miniworld import MiniWorldEnv

KINDS = {'ball': Ball, 'box': Box, 'key': Key}


class GoToObject(MiniWorldEnv, utils.EzPickle):
    """Go to the <colour> <kind> among `distractors` other objects, across four connected rooms.

    :param target: (kind, colour) of the object to go to in every episode; None draws it per
        episode (and the mission names it: a student that sees only the camera cannot know it).
    """

    def __init__(self, distractors: int = 5, max_episode_steps: int = 400, target: tuple[str, str] | None = None,
                 **kwargs):
        self.distractors, self.fixed_target = distractors, target
        MiniWorldEnv.__init__(self, max_episode_steps=max_episode_steps, **kwargs)
        utils.EzPickle.__init__(self, distractors, max_episode_steps, target, **kwargs)

    def _gen_world(self):
        rooms = [self.add_rect_room(min_x=x0, max_x=x0 + 6, min_z=z0, max_z=z0 + 6)
                 for x0, z0 in ((-7, 1), (1, 1), (1, -7), (-7, -7))]
        for a, b, span in ((0, 1, dict(min_z=3, max_z=5)), (1, 2, dict(min_x=3, max_x=5)),
                           (2, 3, dict(min_z=-5, max_z=-3)), (3, 0, dict(min_x=-5, max_x=-3))):
            self.connect_rooms(rooms[a], rooms[b], max_y=2.2, **span)
        kinds = sorted(KINDS)
        pairs = [(kind, color) for kind in kinds for color in COLOR_NAMES if (kind, color) != self.fixed_target]
        chosen = self.np_random.choice(len(pairs), size=self.distractors + 1, replace=False)
        if self.fixed_target is not None:  # the target first, distractors of every other kind and colour
            pairs.append(self.fixed_target)
            chosen = [len(pairs) - 1, *chosen[:-1]]
        # Objects and the robot go in the rooms, never the doorways: an object there could block
        # the passage (the 2 m doorways leave no way past a 0.9 m robot and a 0.9 m object).
        objects = [self.place_entity(_make(*pairs[i]), room=rooms[self.np_random.integers(len(rooms))])
                   for i in chosen]
        self.target = objects[0]
        self.target_name = f'{self.target.color} {kind_of(self.target)}'
        self.mission = f'go to the {self.target_name}'
        self.place_agent(room=rooms[self.np_random.integers(len(rooms))])

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if self.near(self.target):
            reward += self._reward()
            terminated = True
        return obs, reward, terminated, truncated, info


# Missions of MiniWorld's own tasks, which have none in words.
MISSIONS = {'MiniWorld-PutNext-v0': 'put the red box next to the yellow box'}


def _make(kind: str, color: str):
    entity = KINDS[kind](color=color)
    entity.color = color  # MiniWorld keeps a ball's or key's colour only in its mesh name
    return entity


def kind_of(entity) -> str:
    """Object class as perception names it: 'box', 'ball', 'key', ..."""
    return type(entity).__name__.lower()


def register_tasks() -> None:
    if 'MiniWorld-GoToObject-v0' not in gym.registry:
        gym.register('MiniWorld-GoToObject-v0', entry_point=GoToObject)
        # The same rooms with one target for every episode: what a camera-only student can learn.
        gym.register('MiniWorld-GoToRedBall-v0', entry_point=GoToObject, kwargs={'target': ('ball', 'red')})
