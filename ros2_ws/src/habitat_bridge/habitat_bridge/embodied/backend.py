"""The one way to get an embodied simulator backend (embodied.types says what it gives)."""
from __future__ import annotations

from habitat_bridge.embodied.types import EmbodiedBackend

BACKENDS = ('miniworld', 'habitat', 'habitat_lab')


def make_backend(task: str, width: int = 64, height: int = 64, max_episode_steps: int | None = None,
                 backend: str = '', scene: str = '', config: str = '') -> EmbodiedBackend:
    """The one way to get an embodied simulator: `backend` by name, or '' to pick by task id
    (habitat-lab's tasks on habitat-lab, other Habitat-* on habitat-sim, MiniWorld-* on MiniWorld).

    :param scene: habitat: a .glb scene instead of the primitive rooms.
    :param config: habitat_lab: a habitat-lab task config instead of the task's.
    :raises ValueError: an unknown backend or task id.
    """
    from habitat_bridge.embodied import habitat_lab_backend
    if not backend:
        backend = ('habitat_lab' if task in habitat_lab_backend.TASKS else
                   'habitat' if task.startswith('Habitat-') else 'miniworld')
    if backend == 'miniworld':
        from habitat_bridge.embodied.miniworld_backend import MiniWorldBackend
        return MiniWorldBackend(task, width, height, max_episode_steps)
    if backend == 'habitat':
        from habitat_bridge.embodied.habitat_backend import HabitatSimBackend
        return HabitatSimBackend(task, width, height, max_episode_steps, scene=scene or None)
    if backend == 'habitat_lab':
        return habitat_lab_backend.HabitatLabBackend(task, width, height, max_episode_steps, config_path=config or None)
    raise ValueError(f'unknown backend {backend!r}; available: {", ".join(BACKENDS)}')
