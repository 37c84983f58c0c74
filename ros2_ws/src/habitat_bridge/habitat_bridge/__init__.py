"""Simulator nodes and environments of the LLM-teacher stack. The paper's MiniGrid tasks
(MiniGrid-SimpleDoorKey-v0, -LavaDoorKey-v0, -ColoredDoorKey-v0, -TwoDoor-v0) are registered with
gymnasium by `register_tasks()`, which every vector env and evaluator calls before making one."""
from habitat_bridge.minigrid.tasks import register_tasks

__all__ = ['register_tasks']
