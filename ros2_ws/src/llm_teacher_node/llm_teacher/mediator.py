"""Mediator: what the robot perceives -> a short, exact text, and the prompt built from it.

The text names the objects seen this episode with their states, and what the robot carries;
it leaves out positions (the skills handle where things are), so that the same situation gives
the same prompt and the answer cache serves it. Lava is not described: as in the paper, the
teacher is not told about it (the skills still never step into it).
Prompt templates are text files with {mission}, {observation} and {options}; the defaults, one
per task family (gridworld.txt, embodied.txt), are in llm_teacher/prompts/ and a user can point
the teacher at their own.
"""
from __future__ import annotations

from pathlib import Path

from llm_teacher_common.perception import Perception
from llm_teacher_common.options import Option, named_in_mission

PROMPTS = Path(__file__).resolve().parent / 'prompts'
DESCRIBED_TYPES = ('key', 'door', 'ball', 'box', 'goal', 'cylinder', 'cone')


def situation(perception: Perception) -> tuple:
    """Everything of a perception that its prompt and its feasible options are made of: task
    family, mission, the objects' type, colour and state (in order), what the robot carries.
    Perceptions alike in these get the same options and prompt (the teacher keeps them by it);
    describe, Mediator.prompt and options.feasible_options must read nothing else."""
    carrying = perception.carrying
    return (perception.task_family, perception.mission,
            tuple([(o.type, o.color, o.state) for o in perception.objects]),
            None if carrying is None else (carrying.type, carrying.color))


def describe(perception: Perception) -> str:
    """E.g. 'You have seen: a locked yellow door, a yellow key. You carry nothing.'

    Embodied: the objects the mission names, then 'other objects' if there were any (not how
    many: each count would be one more prompt for the LLM to answer before the cache can).
    """
    names, others = set(), set()
    for obj in perception.objects:
        if perception.task_family == 'embodied' and not named_in_mission(obj, perception.mission):
            others.add((obj.type, obj.color))
        elif obj.type in DESCRIBED_TYPES:
            state = f'{obj.state} ' if obj.state else ''
            color = f'{obj.color} ' if obj.color and obj.type != 'goal' else ''
            name = f'{state}{color}{obj.type}'
            names.add(f'{"an" if name[0] in "aeiou" else "a"} {name}')
    listed = sorted(names) + (['other objects'] if others else [])
    seen = f'You have seen: {", ".join(listed)}.' if listed else 'You have not seen any object yet.'
    carrying = perception.carrying
    held = f'You carry a {carrying.color} {carrying.type}.' if carrying is not None else 'You carry nothing.'
    return f'{seen} {held}'


class Mediator:
    """Builds the prompt for a perceived state from a template: one for every task family, or
    a template per family (`templates[perception.task_family]`)."""

    def __init__(self, template: str | dict[str, str]):
        self.templates = template if isinstance(template, dict) else {}
        self.default = None if isinstance(template, dict) else template
        for text in self.templates.values() if self.default is None else [self.default]:
            missing = [field for field in ('{mission}', '{observation}', '{options}') if field not in text]
            if missing:
                raise ValueError(f'prompt template lacks {", ".join(missing)}; it needs {{mission}}, {{observation}} and {{options}}')

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> 'Mediator':
        """The template at `path` for every task family, or the defaults (prompts/<family>.txt)."""
        if not path:
            return cls({file.stem: file.read_text() for file in sorted(PROMPTS.glob('*.txt'))})
        path = Path(path)
        if not path.is_file():
            raise ValueError(f'prompt file {path} does not exist')
        return cls(path.read_text())

    def prompt(self, perception: Perception, options: list[Option]) -> str:
        template = self.default or self.templates.get(perception.task_family)
        if template is None:
            raise ValueError(f'no prompt template for task family {perception.task_family!r}; '
                             f'have {", ".join(self.templates)}')
        listed = '\n'.join(f'- {option.text}' for option in options)
        return template.format(mission=perception.mission, observation=describe(perception), options=listed)
