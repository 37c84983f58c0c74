"""habitat-lab's PointNav task (its gym interface) as an embodied backend, where habitat-lab, habitat-sim
and the task's scenes and episodes are installed.

None of the three installs on a pip-only machine (habitat-sim is conda-only; the episodes and scenes
are downloads), so its tests skip there with the reason. The conversions (the goal sensor to a
perception, normalised depth to metres, our actions to the task's) are plain functions, tested
everywhere.

API followed (habitat-lab 0.3.x, https://github.com/facebookresearch/habitat-lab, habitat/gym):
- habitat.get_config(path, overrides=[...]) and habitat.gym.make_gym_from_config(config) give a gym
  env (old gym API: step -> obs, reward, done, info) whose obs is a dict of the config's sensors
  ('rgb' (H, W, 3) uint8, 'depth' (H, W, 1) float32, 'pointgoal_with_gps_compass') and whose
  discrete action is an index into the task's actions (stop, move_forward, turn_left, turn_right).
- `unwrapped` is the habitat RLEnv; `.habitat_env.sim.get_agent_state()` has the agent's position
  and rotation (habitat frame: y up, looking down -z), `.habitat_env.task.actions` the action names.
- pointgoal_with_gps_compass (PointGoalSensor, POLAR, 2-D) is [rho, -phi] with phi = atan2(agent x,
  -agent z) = the goal's bearing to the right (habitat/tasks/nav/nav.py, _compute_pointgoal); so
  -phi is its bearing to the left, as REP-103 counts yaw.
- Success is measured when the agent calls STOP within the task's success distance (0.2 m).
"""
from __future__ import annotations

import math

import numpy as np

from habitat_bridge.embodied.habitat_backend import habitat_to_map, yaw_of
from habitat_bridge.embodied.types import CameraSpec, EmbodiedStep, Pose, vfov_deg
from habitat_bridge.embodied.mapping import OccupancyMapper
from llm_teacher_common.commands import DONE, FORWARD, TURN_LEFT, TURN_RIGHT
from llm_teacher_common.perception import PerceivedObject, Perception

# Task id -> habitat-lab config (its own benchmark configs; the test one uses habitat-test-scenes).
TASKS = {'Habitat-PointNav-v0': 'benchmark/nav/pointnav/pointnav_habitat_test.yaml'}
MISSION = 'go to the goal'
# Our (MiniWorld-ordered) actions -> habitat-lab PointNav action names; the rest do nothing there.
ACTION_NAMES = {TURN_LEFT: 'turn_left', TURN_RIGHT: 'turn_right', FORWARD: 'move_forward', DONE: 'stop'}
SENSORS = 'habitat.simulator.agents.main_agent.sim_sensors'


def goal_perception(pointgoal: np.ndarray, pose: Pose, carrying=None) -> Perception:
    """The point goal (habitat-lab's [rho, -phi]) as a perceived object relative to base_link."""
    rho, bearing_left = float(pointgoal[0]), float(pointgoal[1])
    goal = PerceivedObject(type='goal', forward=rho * math.cos(bearing_left), left=rho * math.sin(bearing_left),
                           visible=True)  # GPS + compass: always known, whether in view or not
    return Perception(mission=MISSION, task_family='embodied', objects=[goal], carrying=carrying,
                      x=pose.x, y=pose.y, heading=pose.yaw)


def depth_in_metres(depth: np.ndarray, min_depth: float, max_depth: float, normalized: bool) -> np.ndarray:
    """habitat-lab's DepthSensor output (H, W, 1), [0, 1] when normalised, as metres (H, W)."""
    depth = np.asarray(depth, np.float32)[..., 0]
    return depth * (max_depth - min_depth) + min_depth if normalized else depth


class HabitatLabBackend:
    """One habitat-lab PointNav episode stream behind the embodied backend interface."""

    action_set = 'miniworld'
    num_actions = 8

    def __init__(self, env_id: str = 'Habitat-PointNav-v0', width: int = 64, height: int = 64,
                 max_episode_steps: int | None = None, config_path: str | None = None):
        """config_path: a habitat-lab task config to use instead of the task's (e.g. your dataset's)."""
        if env_id not in TASKS:
            raise ValueError(f'unknown habitat-lab task {env_id!r}; known: {", ".join(TASKS)}')
        try:
            import habitat
            from habitat.gym import make_gym_from_config
        except ImportError as err:
            raise RuntimeError(f'habitat-lab is not installed ({err}); it needs habitat-sim (conda install habitat-sim '
                               '-c conda-forge -c aihabitat), then pip install habitat-lab, and the task\'s scenes and '
                               'episodes (python -m habitat_sim.utils.datasets_download --uids habitat_test_scenes '
                               'habitat_test_pointnav_dataset)') from err
        overrides = [f'{SENSORS}.{sensor}.{key}={value}' for sensor in ('rgb_sensor', 'depth_sensor')
                     for key, value in (('width', width), ('height', height))]
        if max_episode_steps:
            overrides.append(f'habitat.environment.max_episode_steps={max_episode_steps}')
        config = habitat.get_config(config_path or TASKS[env_id], overrides=overrides)
        depth_cfg = config.habitat.simulator.agents.main_agent.sim_sensors.depth_sensor
        self.depth_range = (float(depth_cfg.min_depth), float(depth_cfg.max_depth), bool(depth_cfg.normalize_depth))
        self.camera = CameraSpec(width, height, vfov_deg(float(depth_cfg.hfov), width, height), float(depth_cfg.position[1]))
        self.max_steps = int(config.habitat.environment.max_episode_steps)
        self.step_length = float(config.habitat.simulator.forward_step_size)
        self.turn_angle = math.radians(float(config.habitat.simulator.turn_angle))
        self.env = make_gym_from_config(config)
        self.habitat_env = self.env.unwrapped.habitat_env
        task_actions = list(self.habitat_env.task.actions)
        self.action_index = {ours: task_actions.index(name) for ours, name in ACTION_NAMES.items()}
        self.mapper = OccupancyMapper(self.camera)

    def reset(self, seed: int | None = None) -> EmbodiedStep:
        if seed is not None:
            self.env.unwrapped.seed(seed)  # RLEnv.seed: the episode order and the simulator
        observations = self.env.reset()
        self.steps = 0
        self.mapper.reset(self.pose())
        return self._observe(observations, 0.0, False, False, {'success': False})

    def step(self, action: int) -> EmbodiedStep:
        if not 0 <= action < self.num_actions:
            raise ValueError(f'action {action} is outside 0..{self.num_actions - 1}')
        self.steps += 1
        if action not in self.action_index:  # back, pick up, drop, toggle: PointNav has none of them
            truncated = self.steps >= self.max_steps
            return self._observe(self._last, 0.0, False, truncated, {'success': False})
        observations, reward, done, info = self.env.step(self.action_index[action])
        success = bool(info.get('success', False))
        stopped = action == DONE  # STOP ends the episode, a success or not
        terminated = done and (success or stopped)
        return self._observe(observations, float(reward), terminated, done and not terminated, {'success': success})

    def close(self) -> None:
        self.env.close()

    def pose(self) -> Pose:
        state = self.habitat_env.sim.get_agent_state()
        return Pose(*habitat_to_map(state.position), yaw_of(state.rotation))

    def _observe(self, observations: dict, reward: float, terminated: bool, truncated: bool, info: dict) -> EmbodiedStep:
        self._last = observations
        depth = depth_in_metres(observations['depth'], *self.depth_range)
        pose = self.pose()
        perception = goal_perception(observations['pointgoal_with_gps_compass'], pose)
        perception.occupancy = self.mapper.update(depth, pose, carrying=False)
        return EmbodiedStep(np.asarray(observations['rgb'])[..., :3], depth, pose, perception, reward, terminated,
                            truncated, info)

