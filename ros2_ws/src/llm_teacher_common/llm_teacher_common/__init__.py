"""Shared by every package of the LLM-teacher stack and by a robot: message <-> numpy conversions, the
camera observation, motion commands, perception and step types, node helpers. No simulator, no
learning library."""
