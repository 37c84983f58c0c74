"""The LLM teacher: mediators, LLM backends, planner, option skills, the teacher node; and the launch runner."""
