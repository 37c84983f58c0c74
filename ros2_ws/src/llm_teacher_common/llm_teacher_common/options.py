"""The options of a mission: what a teacher may suggest, the skills carry out and an option-level
student chooses among. An option is a verb and, except for explore, an object:
  explore | go to the <colour> <type> | pick up the <colour> <type> | drop the <colour> <type>
  | open the <colour> door
Which of them a teacher offers in a perceived state is the teacher's grounding (llm_teacher.options);
here is only what the mission's words say, which a robot running a student knows too.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from llm_teacher_common.perception import PerceivedObject

# Frames an option-level policy's choice holds, in training (reproduce.py) as when it acts (evaluation,
# a robot): greedy, one that chooses every frame can flip between two options whose skills undo each
# other's turns (GoToObject: explore <-> go to; docs/results.md, "Options held").
OPTION_HOLD = 8
GO_TO_TARGETS = ('key', 'ball', 'box', 'door', 'goal', 'cylinder', 'cone')
MOVING_VERBS = ('put', 'bring', 'carry', 'move', 'place', 'pick')
_NAMED = re.compile(rf'\b(?!the\b|a\b|an\b)([a-z]+) ({"|".join(GO_TO_TARGETS)})\b')


@dataclass(frozen=True)
class Option:
    verb: str  # 'explore', 'go to', 'pick up', 'drop', 'open'
    type: str = ''
    color: str = ''

    @property
    def text(self) -> str:
        if self.verb == 'explore':
            return 'explore'
        noun = f'{self.color} {self.type}' if self.color and self.type != 'goal' else self.type
        return f'{self.verb} the {noun}'

    def __str__(self) -> str:
        return self.text


EXPLORE = Option('explore')


def mission_roles(mission: str) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """(type, colour) of the object a mission says to move and of the one to put it next to, from
    the objects it names after its moving verb ('put the red box next to the yellow box': the red
    box, the yellow box); None for a role the mission does not name."""
    words = mission.lower().split()
    verb = next((i for i, word in enumerate(words) if word in MOVING_VERBS), None)
    if verb is None:
        return None, None
    named = named_objects(' '.join(words[verb + 1:]))
    return (named[0] if named else None), (named[1] if len(named) > 1 else None)


def named_objects(mission: str) -> list[tuple[str, str]]:
    """(type, colour) of each object a mission names, in its order, once each."""
    return list(dict.fromkeys((m.group(2), m.group(1)) for m in _NAMED.finditer(mission.lower())))


def named_in_mission(obj: PerceivedObject, mission: str) -> bool:
    return f'{obj.color} {obj.type}' in mission.lower()


@functools.lru_cache(maxsize=256)
def mission_options(mission: str) -> tuple[Option, ...]:
    """The options of an option-level student told `mission`, in a stable order: explore; go to
    each object the mission names; and, where it moves one, pick that one up and drop it."""
    options = [EXPLORE] + [Option('go to', kind, color) for kind, color in named_objects(mission)]
    moved = mission_roles(mission)[0]
    if moved is not None:
        options += [Option('pick up', *moved), Option('drop', *moved)]
    return tuple(options)
