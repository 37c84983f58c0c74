"""Simulator nodes and environments of the LLM-teacher stack. Importing it registers the paper's
MiniGrid tasks (MiniGrid-SimpleDoorKey-v0, -LavaDoorKey-v0, -ColoredDoorKey-v0, -TwoDoor-v0)."""
from habitat_bridge.minigrid.tasks import register_tasks

register_tasks()
