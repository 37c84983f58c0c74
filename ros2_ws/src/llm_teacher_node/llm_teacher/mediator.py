"""Mediator: what the robot perceives -> a short, exact text, and the prompt built from it.

The text names the objects seen this episode with their states, and what the robot carries;
it leaves out positions (the skills handle where things are), so that the same situation gives
the same prompt and the answer cache serves it. Lava is not described: as in the paper, the
teacher is not told about it (the skills still never step into it).
Prompt templates are text files with {mission}, {observation} and {options}; the defaults are
in llm_teacher/prompts/ and a user can point the teacher at their own.
"""
from __future__ import annotations

from pathlib import Path

from habitat_bridge.minigrid.observation import Perception
from llm_teacher.options import Option

PROMPTS = Path(__file__).resolve().parent / 'prompts'
DESCRIBED_TYPES = ('key', 'door', 'ball', 'box', 'goal')


def describe(perception: Perception) -> str:
    """E.g. 'You have seen: a locked yellow door, a yellow key. You carry nothing.'"""
    names = set()
    for obj in perception.objects:
        if obj.type in DESCRIBED_TYPES:
            state = f'{obj.state} ' if obj.state else ''
            color = f'{obj.color} ' if obj.color and obj.type != 'goal' else ''
            names.add(f'a {state}{color}{obj.type}')
    seen = f'You have seen: {", ".join(sorted(names))}.' if names else 'You have not seen any object yet.'
    carrying = perception.carrying
    held = f'You carry a {carrying.color} {carrying.type}.' if carrying is not None else 'You carry nothing.'
    return f'{seen} {held}'


class Mediator:
    """Builds the prompt for a perceived state from a template file."""

    def __init__(self, template: str):
        missing = [field for field in ('{mission}', '{observation}', '{options}') if field not in template]
        if missing:
            raise ValueError(f'prompt template lacks {", ".join(missing)}; it needs {{mission}}, {{observation}} and {{options}}')
        self.template = template

    @classmethod
    def from_file(cls, path: str | Path | None = None, task_family: str = 'gridworld') -> 'Mediator':
        """The template at `path`, or the default one for the task family."""
        path = Path(path) if path else PROMPTS / f'{task_family}.txt'
        if not path.is_file():
            raise ValueError(f'prompt file {path} does not exist')
        return cls(path.read_text())

    def prompt(self, perception: Perception, options: list[Option]) -> str:
        listed = '\n'.join(f'- {option.text}' for option in options)
        return self.template.format(mission=perception.mission, observation=describe(perception), options=listed)
