"""Embodied simulation behind one small interface (`backend.EmbodiedBackend`): MiniWorld here,
habitat-sim where it is installed; `sensors` turns their plain results into REP-105 ROS messages."""
