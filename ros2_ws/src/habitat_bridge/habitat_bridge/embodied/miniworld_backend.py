"""MiniWorld 2.1 as an embodied backend: a CPU 3D stand-in for habitat-sim that runs headless.

MiniWorld renders with OpenGL; headless it needs EGL (Mesa llvmpipe on machines without a GPU:
Debian packages libegl1 libegl-mesa0 libgl1-mesa-dri), selected by setting
pyglet.options['headless'] before miniworld is first imported.

Frames: MiniWorld's world is x right, y up, z towards the viewer, with the agent's heading
`dir` turning x towards -z; in REP-103 map coordinates that is (x, -z) on the floor and yaw = dir.
"""
from __future__ import annotations

import contextlib
import io
import math

import numpy as np

from habitat_bridge.embodied.types import CameraSpec, EmbodiedStep, Pose, visible_in_depth
from habitat_bridge.embodied.mapping import OccupancyMapper
from llm_teacher_common.perception import PerceivedObject, Perception

Z_NEAR, Z_FAR = 0.04, 100.0  # MiniWorld's projection (render_obs)


def import_miniworld():
    """Import miniworld rendering headless (EGL); a clear error when that cannot work here."""
    import pyglet
    pyglet.options['headless'] = True
    # pyglet checks glGetError after every GL call by default: ~30% of a MiniWorld step here.
    pyglet.options['debug_gl'] = False
    try:
        import miniworld  # noqa: F401  (registers the MiniWorld-* gymnasium ids)
        from miniworld.entity import Agent

        from habitat_bridge.embodied import tasks
    except ImportError as err:
        raise RuntimeError(f'MiniWorld cannot start headless ({err}): install the project requirements and '
                           'the EGL packages (apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri)') from err
    tasks.register_tasks()
    return Agent, tasks


class MiniWorldBackend:
    """One MiniWorld environment: rgb + depth from the same render, the true pose, perception."""

    action_set = 'miniworld'
    perceive = True
    """False: no perception and no map (only the camera): for training without a teacher, and
    evaluation (perception and map are ~10-25% of a step)."""

    def __init__(self, env_id: str = 'MiniWorld-PutNext-v0', width: int = 64, height: int = 64,
                 max_episode_steps: int | None = None):
        import gymnasium as gym
        agent_class, tasks = import_miniworld()
        self._kind_of = tasks.kind_of
        self.mission = tasks.MISSIONS.get(env_id, '')
        kwargs = {'obs_width': width, 'obs_height': height}
        if max_episode_steps is not None:
            kwargs['max_episode_steps'] = max_episode_steps
        try:
            # MiniWorld prints "Falling back to num_samples=4" for every env it makes on Mesa: once per
            # robot, dozens of lines per run, and nothing to act on.
            with contextlib.redirect_stdout(io.StringIO()):
                self.env = gym.make(env_id, **kwargs)
        except gym.error.Error as err:
            known = ', '.join(sorted(e for e in gym.registry if e.startswith('MiniWorld-')))
            raise ValueError(f'unknown MiniWorld environment {env_id!r} ({err}); known: {known}') from err
        self.world = self.env.unwrapped
        self.num_actions = int(self.env.action_space.n)
        self._agent_class = agent_class
        params = self.world.params
        self.step_length = float(params.sample(None, 'forward_step'))  # the value without domain randomisation
        self.turn_angle = math.radians(params.sample(None, 'turn_step'))
        actions = self.world.actions  # (forward, turn) each action commands: the mapper checks odometry did it
        self._motion = {actions.move_forward: (self.step_length, 0.0), actions.move_back: (-self.step_length, 0.0),
                        actions.turn_left: (0.0, self.turn_angle), actions.turn_right: (0.0, -self.turn_angle)}
        agent = self.world.agent
        self.camera = CameraSpec(width, height, float(agent.cam_fov_y), float(agent.cam_height),
                                 float(agent.cam_fwd_disp))
        self._last_seen: dict[int, tuple[float, float]] = {}  # entity index -> map (x, y)
        self.mapper = OccupancyMapper(self.camera)

    def reset(self, seed: int | None = None) -> EmbodiedStep:
        rgb, info = self.env.reset(seed=seed)
        self._last_seen.clear()
        self.mapper.reset(self.pose())
        return self._observe(rgb, 0.0, False, False, info)

    def step(self, action: int) -> EmbodiedStep:
        if not 0 <= action < self.env.action_space.n:
            raise ValueError(f'action {action} is outside 0..{self.env.action_space.n - 1}')
        rgb, reward, terminated, truncated, info = self.env.step(int(action))
        info['success'] = bool(terminated and reward > 0)  # MiniWorld tasks reward only success
        return self._observe(rgb, float(reward), terminated, truncated, info, self._motion.get(action, (0.0, 0.0)))

    def close(self) -> None:
        self.env.close()

    def pose(self) -> Pose:
        agent = self.world.agent
        return Pose(float(agent.pos[0]), float(-agent.pos[2]), math.remainder(float(agent.dir), math.tau))

    def _observe(self, rgb, reward, terminated, truncated, info, motion=(0.0, 0.0)) -> EmbodiedStep:
        # The step rendered into obs_fb: its depth buffer matches rgb.
        depth = self.world.obs_fb.get_depth_map(Z_NEAR, Z_FAR)[..., 0]
        pose = self.pose()
        if self.perceive:
            perception = self._perceive(pose, depth)
            perception.occupancy = self.mapper.update(depth, pose, perception.carrying is not None, motion)
        else:
            perception = Perception(mission=getattr(self.world, 'mission', self.mission), task_family='embodied',
                                    x=pose.x, y=pose.y, heading=pose.yaw)
        return EmbodiedStep(np.asarray(rgb), depth.astype(np.float32), pose, perception,
                            reward, bool(terminated), bool(truncated), dict(info))

    def _perceive(self, pose: Pose, depth: np.ndarray) -> Perception:
        """Objects in view now, and where the others were last seen."""
        world = self.world
        visible = self._in_view(pose, depth)
        carried = world.agent.carrying
        for index, ent in enumerate(world.entities):
            if ent in visible and not isinstance(ent, self._agent_class):
                self._last_seen[index] = (float(ent.pos[0]), float(-ent.pos[2]))
        objects = []
        for index, (x, y) in sorted(self._last_seen.items()):
            ent = world.entities[index]
            if ent is carried:
                continue
            forward, left = pose.relative(x, y)
            objects.append(PerceivedObject(type=self._kind_of(ent), color=getattr(ent, 'color', '') or '',
                                           forward=forward, left=left, visible=ent in visible))
        holding = None
        if carried is not None:
            holding = PerceivedObject(type=self._kind_of(carried), color=getattr(carried, 'color', '') or '')
        return Perception(mission=getattr(world, 'mission', self.mission), task_family='embodied', objects=objects,
                          carrying=holding, x=pose.x, y=pose.y, heading=pose.yaw)

    def _in_view(self, pose: Pose, depth: np.ndarray) -> list:
        """The objects a detector would see in this depth image (types.visible_in_depth, across
        the object's middle). MiniWorld's own occlusion query renders the world once per object
        (~60% of a step) and tests a point at the object's base, which a camera 1.5 m up never
        sees within ~2.6 m."""
        seen = []
        for ent in self.world.entities:
            if isinstance(ent, self._agent_class) or ent is self.world.agent.carrying:
                continue
            forward, left = pose.relative(float(ent.pos[0]), float(-ent.pos[2]))
            if visible_in_depth(forward, left, float(ent.pos[1]) + ent.height / 2, depth, self.camera,
                                ent.radius, across=(0.0, -0.7, 0.7)):
                seen.append(ent)
        return seen

