"""The teacher's high-level options and affordance grounding.

An option is a verb and, except for explore, an object the robot has perceived:
  explore | go to the <colour> <type> | pick up the <colour> <type> | drop the <colour> <type>
  | open the <colour> door
Grounding keeps only the options that are possible in the perceived state, so that even a weak
LLM chooses among sensible ones: no object that was not seen, no pick-up while carrying,
no drop with empty hands, no opening a locked door without its key.
Embodied robots see many objects (a house is full of them), and a prompt naming every one seen
would almost never repeat, so the answer cache could not serve it: their options concern only
the objects the mission names (the mediator only says that there are others). Pick up and drop are offered
only when the mission moves an object (put, bring, carry, move, place, pick): the embedded 135M
model otherwise picks up whatever it sees when told to go somewhere.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from llm_teacher_common.perception import PerceivedObject, Perception

PICKABLE = ('key', 'ball', 'box', 'cylinder', 'cone')
GO_TO_TARGETS = ('key', 'ball', 'box', 'door', 'goal', 'cylinder', 'cone')
MOVING_VERBS = ('put', 'bring', 'carry', 'move', 'place', 'pick')


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


def feasible_options(perception: Perception) -> list[Option]:
    """The options possible in this perceived state, in a stable order (explore first).

    Reads only what mediator.situation keeps (the teacher reuses the options of a situation)."""
    options = [EXPLORE]
    carrying = perception.carrying
    seen = _unique(o for o in perception.objects if o.type in GO_TO_TARGETS
                   and (perception.task_family != 'embodied' or named_in_mission(o, perception.mission)))
    for obj in seen:
        options.append(Option('go to', obj.type, obj.color))
    handles_objects = perception.task_family != 'embodied' or any(
        word in MOVING_VERBS for word in perception.mission.lower().split())
    if carrying is None and handles_objects:
        options += [Option('pick up', o.type, o.color) for o in seen if o.type in PICKABLE]
    elif carrying is not None:
        options.append(Option('drop', carrying.type, carrying.color))
    for door in seen:
        if door.type != 'door' or door.state == 'open':
            continue
        has_key = carrying is not None and carrying.type == 'key' and carrying.color == door.color
        if door.state == 'closed' or has_key:
            options.append(Option('open', 'door', door.color))
    return options


def without_subsumed(options: list[Option], perception: Perception) -> list[Option]:
    """The options less 'go to X' where 'pick up X' or 'open X' is offered (those skills go there
    first), and less 'go to' a locked door whose key the robot does not carry; an object the
    mission names keeps its 'go to'. Measured, not the default (docs/results.md, "A stronger
    embedded teacher"): `python -m llm_teacher.evaluate --drop-subsumed`."""
    acting = {(o.type, o.color) for o in options if o.verb in ('pick up', 'open')}
    carrying = perception.carrying
    held_key = (carrying.color if carrying is not None and carrying.type == 'key' else None)
    locked = {('door', o.color) for o in perception.objects
              if o.type == 'door' and o.state == 'locked' and o.color != held_key}

    def kept(option: Option) -> bool:
        if option.verb != 'go to' or named_in_mission(option, perception.mission):
            return True
        return (option.type, option.color) not in acting | locked
    return [o for o in options if kept(o)]


def named_in_mission(obj: PerceivedObject, mission: str) -> bool:
    return f'{obj.color} {obj.type}' in mission.lower()


def _unique(objects) -> list[PerceivedObject]:
    seen, out = set(), []
    for obj in objects:
        if (obj.type, obj.color) not in seen:
            seen.add((obj.type, obj.color))
            out.append(obj)
    return out


def parse_option(answer: str, options: list[Option]) -> Option | None:
    """The option an LLM answer names: exact match, then normalised match, else None (rejected).

    Normalised: lower case, punctuation and articles dropped, whitespace collapsed; an answer
    that contains exactly one option's normalised text counts as naming it.
    """
    stripped = answer.strip()
    for option in options:
        if stripped == option.text:
            return option
    norm = _normalise(stripped)
    exact = [o for o in options if _normalise(o.text) == norm]
    if len(exact) == 1:
        return exact[0]
    contained = [o for o in options if re.search(rf'\b{re.escape(_normalise(o.text))}\b', norm)]
    longest = max((len(_normalise(o.text)) for o in contained), default=0)
    contained = [o for o in contained if len(_normalise(o.text)) == longest]
    return contained[0] if len(contained) == 1 else None


def _normalise(text: str) -> str:
    text = re.sub(r'[^a-z ]+', ' ', text.lower())
    words = [w for w in text.split() if w not in ('the', 'a', 'an')]
    return ' '.join(words)
