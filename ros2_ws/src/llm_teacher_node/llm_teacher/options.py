"""The teacher's affordance grounding of its options (llm_teacher_common.options: an option is a
verb and, except for explore, an object the robot has perceived).

Grounding keeps only the options that are possible in the perceived state, so that even a weak
LLM chooses among sensible ones: no object that was not seen, no pick-up while carrying,
no drop with empty hands, no opening a locked door without its key; and of those, none that
cannot help (feasible_options says which).
Embodied robots see many objects (a house is full of them), and a prompt naming every one seen
would almost never repeat, so the answer cache could not serve it: their options concern only
the objects the mission names (the mediator only says that there are others). Pick up and drop are offered
only when the mission moves an object (put, bring, carry, move, place, pick): the embedded 135M
model otherwise picks up whatever it sees when told to go somewhere. And pick up only the object
the mission says to move, where it names one (mission_roles): told to put the red box next to the
yellow box, the model ranks picking up either box alike (0.48 / 0.46).
"""
from __future__ import annotations

import re

from llm_teacher_common.options import EXPLORE, GO_TO_TARGETS, MOVING_VERBS, Option, mission_roles, named_in_mission
from llm_teacher_common.perception import PerceivedObject, Perception

PICKABLE = ('key', 'ball', 'box', 'cylinder', 'cone')


def feasible_options(perception: Perception) -> list[Option]:
    """The options offered in this perceived state, in a stable order (explore first, if offered).

    Possible ones only, and of those, none that cannot help (measured on the five grid tasks and
    the three MiniWorld ones: docs/results/teacher-prompt.md):
    - no explore when the object of the next step is known (next_step_known): the embedded model
      otherwise ranks explore first with the door's key in hand and the door in view, or with the
      box to move in hand and the one to put it next to in view;
    - embodied, no pick-up of an object the mission does not say to move, where it names one;
    - no drop of a key that opens a locked door seen: that is the next step's key;
    - no 'go to X' where 'pick up X' or 'open X' is offered (those skills walk there first), nor
      to a locked door (opened with its key, or not reachable through it), nor to a thing to
      pick up while the hands are full; unless the mission names X. A go-to ranked first stops
      the robot there, and a greedy teacher stands still.
    Reads only what mediator.situation keeps (the teacher reuses the options of a situation).
    """
    carrying, mission = perception.carrying, perception.mission
    known = [o for o in perception.objects if o.type in GO_TO_TARGETS
             and (perception.task_family != 'embodied' or named_in_mission(o, mission))]
    seen = _unique(known)  # one go-to per (type, colour): its skill goes to the nearest
    held_key = carrying.color if carrying is not None and carrying.type == 'key' else None
    handles_objects = perception.task_family != 'embodied' or any(
        word in MOVING_VERBS for word in mission.lower().split())
    moved = mission_roles(mission)[0] if perception.task_family == 'embodied' else None
    picks = [Option('pick up', o.type, o.color) for o in seen if carrying is None and handles_objects
             and o.type in PICKABLE and moved in (None, (o.type, o.color))]
    opens = list(dict.fromkeys(Option('open', 'door', o.color) for o in known if o.type == 'door'
                               and (o.state == 'closed' or (o.state == 'locked' and o.color == held_key))))
    acting = {(o.type, o.color) for o in picks + opens}

    def worth_going_to(obj: PerceivedObject) -> bool:
        if named_in_mission(obj, mission):
            return True
        if (obj.type, obj.color) in acting or (obj.type == 'door' and obj.state == 'locked'):
            return False
        return carrying is None or obj.type not in PICKABLE

    options = [] if next_step_known(perception) else [EXPLORE]
    options += [Option('go to', o.type, o.color) for o in seen if worth_going_to(o)]
    options += picks
    if carrying is not None and not opens_a_seen_door(carrying, perception):
        options.append(Option('drop', carrying.type, carrying.color))
    return options + opens


def next_step_known(perception: Perception) -> bool:
    """Whether the object of a robot's next step is known, so that exploring cannot help (as
    grounding drops impossible options, this drops a useless one): the locked door whose key it
    carries (open it), the key of a locked door seen (pick it up, or first drop a wrong one), a
    goal where no locked door is seen (go to it). Embodied robots: _embodied_next_step_known."""
    if perception.task_family == 'embodied':
        return _embodied_next_step_known(perception)
    locked = {o.color for o in perception.objects if o.type == 'door' and o.state == 'locked'}
    if perception.carrying is not None and opens_a_seen_door(perception.carrying, perception):
        return True
    if any(o.type == 'key' and o.color in locked for o in perception.objects):
        return True
    return not locked and any(o.type == 'goal' for o in perception.objects)


def _embodied_next_step_known(perception: Perception) -> bool:
    """An embodied robot's next step is known when the mission's object to go to is seen, the
    object it says to move is seen with nothing in hand (pick it up), or that object is in hand
    and the one to put it next to is seen (go there)."""
    moved, next_to = mission_roles(perception.mission)
    seen = {(o.type, o.color) for o in perception.objects}
    held = perception.carrying
    if moved is None:
        return any(named_in_mission(o, perception.mission) for o in perception.objects)
    if held is None:
        return moved in seen
    return (held.type, held.color) == moved and next_to in seen


def opens_a_seen_door(obj: PerceivedObject, perception: Perception) -> bool:
    """Whether `obj` is the key of a locked door the robot has seen."""
    return obj.type == 'key' and any(o.type == 'door' and o.state == 'locked' and o.color == obj.color
                                     for o in perception.objects)


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
