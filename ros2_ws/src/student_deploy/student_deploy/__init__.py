"""The distilled student on a robot: an exported policy, the checks before motion, the deploy nodes."""
