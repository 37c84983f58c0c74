"""Task families: what differs between kinds of task, in one table instead of string tests spread
over the packages. A new family is one entry here plus its simulator (habitat_bridge), its skills
and prompt (llm_teacher); `Perception.task_family` names the entry.

    gridworld   MiniGrid ids: memory-map (or egocentric) grids, MiniGrid's 7 actions
    embodied    MiniWorld-* and Habitat-* ids: a robot's rgb + depth camera (and its map), MiniWorld's 8 actions
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskFamily:
    name: str
    """the value of Perception.task_family."""
    id_prefixes: tuple[str, ...]
    """task ids that start with one of these belong here ('' matches any: the fallback)."""
    observations: tuple[str, ...]
    """observation encodings its simulators give (StepBatch.obs_encoding); the first is the default."""
    encoder: str
    """student_policy.networks encoder for those observations (but map_observations)."""
    action_set: str
    """key of llm_teacher_common.commands.MOTIONS."""
    action_names: tuple[str, ...]
    """how views label the action indices."""
    map_observations: tuple[str, ...] = ()
    """of `observations`, those that carry the robot's map crop beside the camera (encoder 'image_map')."""

    def encoder_of(self, observation: str) -> str:
        """The student_policy.networks encoder of one of this family's observation encodings."""
        return 'image_map' if observation in self.map_observations else self.encoder

    @property
    def encoders(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.encoder_of(o) for o in self.observations))


FAMILIES = {
    'embodied': TaskFamily('embodied', ('MiniWorld-', 'Habitat-'), ('rgbd', 'rgb', 'rgbd_map'), 'image', 'miniworld',
                           ('turn_left', 'turn_right', 'move_forward', 'move_back', 'pickup', 'drop', 'toggle',
                            'done'), map_observations=('rgbd_map',)),
    'gridworld': TaskFamily('gridworld', ('',), ('memory_map', 'egocentric'), 'grid', 'minigrid',
                            ('left', 'right', 'forward', 'pickup', 'drop', 'toggle', 'done')),
}


def family_of_task(task: str) -> TaskFamily:
    """The family of a task id (the first whose prefix matches; gridworld for any other id)."""
    return next(f for f in FAMILIES.values() if task.startswith(f.id_prefixes))


def family_of_observation(obs_encoding: str) -> TaskFamily:
    """The family whose simulators give `obs_encoding` (StepBatch.obs_encoding).

    :raises ValueError: an encoding no family gives.
    """
    for family in FAMILIES.values():
        if obs_encoding in family.observations:
            return family
    known = [o for f in FAMILIES.values() for o in f.observations]
    raise ValueError(f'observation encoding {obs_encoding!r} belongs to no task family; known: {", ".join(known)}')
