"""The scripted-option teacher: the option a perfect LLM would choose, from the mission and the
perception alone (never the simulator's state). It bounds from above what any LLM can teach
through the embodied skills.

Missions it reads:
  go to the <colour> <type>                            explore until it is seen, then go to it
  put the <colour> <type> next to the <colour> <type>  explore until the first is seen, pick it up,
                                                       go to the second carrying it, drop it there
"""
from __future__ import annotations

import re

from llm_teacher_common.perception import Perception
from llm_teacher_common.embodied_skills import delivered
from llm_teacher_common.options import EXPLORE, Option

_OBJECT = r'the (\w+) (\w+)'
_GO_TO = re.compile(rf'go to {_OBJECT}')
_PUT_NEXT = re.compile(rf'put {_OBJECT} next to {_OBJECT}')


def scripted_option(perception: Perception) -> Option:
    """The option for this perceived state.

    :raises ValueError: a mission that is neither "go to ..." nor "put ... next to ...".
    """
    mission = perception.mission.strip().lower().rstrip('.')
    if match := _GO_TO.fullmatch(mission):
        return _go_to(perception, *match.groups())
    if match := _PUT_NEXT.fullmatch(mission):
        color, kind, next_color, next_kind = match.groups()
        held = perception.carrying
        if held is not None and (held.type, held.color) != (kind, color):
            return Option('drop', held.type, held.color)  # something else in hand: free it first
        if held is None:
            return Option('pick up', kind, color) if _seen(perception, kind, color) else EXPLORE
        if delivered(perception, next_kind, next_color):
            return Option('drop', kind, color)
        return _go_to(perception, next_color, next_kind)
    raise ValueError(f'the scripted teacher cannot read the mission {perception.mission!r}; it knows '
                     '"go to the <colour> <type>" and "put the <colour> <type> next to the <colour> <type>"')


def _go_to(perception: Perception, color: str, kind: str) -> Option:
    return Option('go to', kind, color) if _seen(perception, kind, color) else EXPLORE


def _seen(perception: Perception, kind: str, color: str) -> bool:
    return any(o.type == kind and o.color == color for o in perception.objects)
