"""habitat-sim 0.3 as an embodied backend: rooms built from primitive assets, no download.

habitat-sim installs only from conda (or a source build), so nothing on a pip-only machine runs
this file's simulator calls; its tests skip with the reason when `import habitat_sim` fails. The
geometry around them (frames, visibility, the room layout, success) is plain functions, tested
everywhere.

API followed (habitat-sim 0.3.x, https://aihabitat.org/docs/habitat-sim/):
- habitat_sim.SimulatorConfiguration with scene_id "NONE" (an empty stage) and enable_physics,
  habitat_sim.agent.AgentConfiguration with CameraSensorSpec rgb (SensorType.COLOR) and depth
  (SensorType.DEPTH), `hfov` in degrees, resolution [height, width], position [0, height, 0];
  habitat_sim.Configuration(sim_cfg, [agent_cfg]) -> habitat_sim.Simulator.
- Walls, floor and objects: the object template manager's primitive templates ("cubeSolid",
  "icosphereSolid", ...), scaled copies registered under new handles, instanced with the rigid
  object manager (add_object_by_template_handle), MotionType.STATIC so that
  recompute_navmesh(pathfinder, NavMeshSettings(include_static_objects=True)) carves them out.
- The agent moves on the navmesh (its default actions move_forward / turn_left / turn_right with
  ActuationSpec amounts); its state's rotation is a numpy-quaternion (w, x, y, z).
Primitives render in one material colour in 0.3 (no per-object colour API), so objects here
differ by shape, and missions name the shape: "go to the cone".

Frames: habitat is y-up with the agent looking down -z. Map (REP-103) x = -z, y = -x, z = y, so a
yaw theta about habitat's +y is the same yaw theta about map +z.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from habitat_bridge.embodied.types import CameraSpec, EmbodiedStep, Pose, vfov_deg, visible_in_depth
from habitat_bridge.embodied.mapping import OccupancyMapper
from llm_teacher_common.commands import BACK, DROP, FORWARD, PICKUP, TURN_LEFT, TURN_RIGHT
from llm_teacher_common.perception import PerceivedObject, Perception

# Object kinds and the primitive template each is built from.
KINDS = {'ball': 'icosphereSolid', 'box': 'cubeSolid', 'cylinder': 'cylinderSolid', 'cone': 'coneSolid'}
ROOM = 6.0  # m: side of each of the four rooms
DOORWAY = 2.0  # m
WALL = 0.2  # m thick, 2.5 m high
REACH = 1.0  # m: success distance of GoToObject, and how near an object must be to pick it up
TASKS = ('Habitat-GoToObject-v0', 'Habitat-PutNext-v0')
MAX_STEPS = 400


def habitat_to_map(position) -> tuple[float, float]:
    """Habitat (x, y-up, z) -> map (x, y) on the floor."""
    return -float(position[2]), -float(position[0])


def map_to_habitat(x: float, y: float, height: float = 0.0) -> np.ndarray:
    return np.array([-y, height, -x], np.float32)


def yaw_of(rotation) -> float:
    """Yaw (rad, map frame) of a rotation about habitat's up axis, given as a quaternion (w, x, y, z)."""
    return math.remainder(2 * math.atan2(float(rotation.y), float(rotation.w)), math.tau)


@dataclass
class Placed:
    kind: str
    x: float  # map frame
    y: float
    size: float
    floor: float = 0.0  # habitat height of the floor under it


def four_rooms(rng: np.random.Generator, objects: int) -> tuple[list[tuple[float, float, float, float]], list[Placed], tuple[float, float, float]]:
    """Walls (x0, y0, x1, y1 boxes in map metres) of four ROOM-square rooms round the origin joined by
    doorways, `objects` distinct-kind objects placed inside rooms, and the robot's start (x, y, yaw)."""
    walls = []
    half, gap = ROOM, DOORWAY / 2
    for c in (-half, 0.0, half):  # three lines each way; the middle ones have two doorways
        for start, end in (((-half, c), (half, c)), ((c, -half), (c, half))):
            horizontal = start[1] == end[1]
            if c == 0.0:  # inner wall: leave a doorway in the middle of each room's side
                segments = [(-half, -half / 2 - gap), (-half / 2 + gap, half / 2 - gap), (half / 2 + gap, half)]
            else:
                segments = [(-half, half)]
            for a, b in segments:
                if horizontal:
                    walls.append((a, c - WALL / 2, b, c + WALL / 2))
                else:
                    walls.append((c - WALL / 2, a, c + WALL / 2, b))
    rooms = [(-half, -half), (0.0, -half), (-half, 0.0), (0.0, 0.0)]  # lower-left corners
    kinds = rng.choice(list(KINDS), size=min(objects, len(KINDS)), replace=False)
    placed = []
    for kind in kinds:
        rx, ry = rooms[rng.integers(len(rooms))]
        placed.append(Placed(str(kind), rx + rng.uniform(1.0, ROOM - 1.0), ry + rng.uniform(1.0, ROOM - 1.0), 0.5))
    rx, ry = rooms[rng.integers(len(rooms))]
    start = (rx + rng.uniform(1.0, ROOM - 1.0), ry + rng.uniform(1.0, ROOM - 1.0), rng.uniform(-math.pi, math.pi))
    return walls, placed, start


class HabitatSimBackend:
    """One habitat-sim robot in four rooms of primitives: GoToObject or PutNext (box next to cone)."""

    action_set = 'miniworld'
    num_actions = 8

    def __init__(self, env_id: str = 'Habitat-GoToObject-v0', width: int = 64, height: int = 64,
                 max_episode_steps: int | None = None, hfov: float = 60.0, sensor_height: float = 1.5,
                 scene: str | None = None):
        """scene: a .glb (or a scene of a dataset) to use instead of the four primitive rooms; the
        objects then go to random navigable points of its navmesh."""
        if env_id not in TASKS:
            raise ValueError(f'unknown habitat task {env_id!r}; known: {", ".join(TASKS)}')
        try:
            import habitat_sim
        except ImportError as err:
            raise RuntimeError(f'habitat-sim is not installed ({err}); it installs from conda: '
                               'conda install habitat-sim -c conda-forge -c aihabitat') from err
        self.hs, self.task = habitat_sim, env_id
        self.max_steps = max_episode_steps or MAX_STEPS
        self.camera = CameraSpec(width, height, vfov_deg(hfov, width, height), sensor_height)
        self.step_length, self.turn_angle = 0.15, math.radians(15)
        sensors = []
        for uuid, kind in (('rgb', habitat_sim.SensorType.COLOR), ('depth', habitat_sim.SensorType.DEPTH)):
            spec = habitat_sim.CameraSensorSpec()
            spec.uuid, spec.sensor_type = uuid, kind
            spec.resolution = [height, width]
            spec.position = [0.0, sensor_height, 0.0]
            spec.hfov = hfov
            sensors.append(spec)
        actuation = habitat_sim.agent.ActuationSpec
        agent_cfg = habitat_sim.agent.AgentConfiguration()
        agent_cfg.radius, agent_cfg.height = 0.4, 1.6
        agent_cfg.sensor_specifications = sensors
        agent_cfg.action_space = {
            'move_forward': habitat_sim.agent.ActionSpec('move_forward', actuation(amount=self.step_length)),
            'move_backward': habitat_sim.agent.ActionSpec('move_backward', actuation(amount=self.step_length)),
            'turn_left': habitat_sim.agent.ActionSpec('turn_left', actuation(amount=math.degrees(self.turn_angle))),
            'turn_right': habitat_sim.agent.ActionSpec('turn_right', actuation(amount=math.degrees(self.turn_angle))),
        }
        sim_cfg = habitat_sim.SimulatorConfiguration()
        sim_cfg.scene_id = scene or 'NONE'  # NONE: an empty stage, the rooms are built from primitives
        self.scene = scene
        sim_cfg.enable_physics = True
        self.sim = habitat_sim.Simulator(habitat_sim.Configuration(sim_cfg, [agent_cfg]))
        self.mapper = OccupancyMapper(self.camera)
        self.rng = np.random.default_rng()
        self.objects: dict[str, object] = {}  # kind -> managed rigid object
        self.carrying: str | None = None
        self._last_seen: dict[str, tuple[float, float]] = {}

    # --- scene ---------------------------------------------------------------------------------

    def _template(self, primitive: str, scale, name: str) -> str:
        """A scaled copy of a primitive template, registered as `name` (0.3: templates are edited
        copies; get_template_by_handle returns a copy, register_template stores it)."""
        manager = self.sim.get_object_template_manager()
        template = manager.get_template_by_handle(manager.get_template_handles(primitive)[0])
        template.scale = np.asarray(scale, np.float32)
        manager.register_template(template, name)
        return name

    def _add_static(self, handle: str, position: np.ndarray):
        rigid = self.sim.get_rigid_object_manager()
        obj = rigid.add_object_by_template_handle(handle)
        obj.translation = position
        obj.motion_type = self.hs.physics.MotionType.STATIC
        return obj

    def _build(self, seed: int | None) -> tuple[float, float, float]:
        self.sim.get_rigid_object_manager().remove_all_objects()
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        walls, placed, start = four_rooms(self.rng, 4)
        if self.scene:  # the user's scene: its own walls; objects and robot on its navmesh
            self._recompute_navmesh()
            self.sim.pathfinder.seed(int(self.rng.integers(2**31)))
            points = [self.sim.pathfinder.get_random_navigable_point() for _ in range(len(placed) + 1)]
            placed = [Placed(p.kind, *habitat_to_map(point), p.size, float(point[1])) for p, point in zip(placed, points)]
            start, walls = (*habitat_to_map(points[-1]), start[2]), []
        else:  # primitive cubes span [-1, 1] (0.3's cubeSolid): scale is half the size
            self._add_static(self._template('cubeSolid', [ROOM, 0.05, ROOM], 'floor'), map_to_habitat(0, 0, -0.05))
        for i, (x0, y0, x1, y1) in enumerate(walls):
            sx, sy = (x1 - x0) / 2, (y1 - y0) / 2
            handle = self._template('cubeSolid', [sy, 1.25, sx], f'wall_{i}')  # habitat x = -map y, z = -map x
            self._add_static(handle, map_to_habitat((x0 + x1) / 2, (y0 + y1) / 2, 1.25))
        self.objects = {}
        for obj in placed:
            handle = self._template(KINDS[obj.kind], [obj.size / 2] * 3, f'object_{obj.kind}')
            self.objects[obj.kind] = self._add_static(handle, map_to_habitat(obj.x, obj.y, obj.floor + obj.size / 2))
        self.target = placed[0].kind
        self.mission = (f'go to the {self.target}' if self.task == 'Habitat-GoToObject-v0'
                        else f'put the {placed[0].kind} next to the {placed[1].kind}')
        self._recompute_navmesh()
        return start

    def _recompute_navmesh(self) -> None:
        settings = self.hs.NavMeshSettings()
        settings.set_defaults()
        settings.agent_radius, settings.agent_height = 0.4, 1.6
        settings.include_static_objects = True  # carve walls and objects out of the floor
        self.sim.recompute_navmesh(self.sim.pathfinder, settings)

    # --- episode -------------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> EmbodiedStep:
        x, y, yaw = self._build(seed)
        from habitat_sim.utils.common import quat_from_angle_axis
        state = self.hs.agent.AgentState()
        state.position = self.sim.pathfinder.snap_point(map_to_habitat(x, y))
        state.rotation = quat_from_angle_axis(yaw, np.array([0.0, 1.0, 0.0]))
        self.agent = self.sim.initialize_agent(0, state)
        self.steps, self.carrying = 0, None
        self._last_seen.clear()
        self.mapper.reset(self.pose())
        return self._observe(self.sim.get_sensor_observations(), 0.0, False, False)

    def step(self, action: int) -> EmbodiedStep:
        if not 0 <= action < 8:
            raise ValueError(f'action {action} is outside 0..7')
        names = {TURN_LEFT: 'turn_left', TURN_RIGHT: 'turn_right', FORWARD: 'move_forward', BACK: 'move_backward'}
        if action in names:
            observations = self.sim.step(names[action])
        else:
            if action == PICKUP:
                self._pick_up()
            elif action == DROP:
                self._drop()
            observations = self.sim.get_sensor_observations()
        self._carry()
        self.steps += 1
        success = self._success(action)
        truncated = not success and self.steps >= self.max_steps
        reward = 1.0 - 0.2 * self.steps / self.max_steps if success else 0.0  # MiniWorld's _reward
        return self._observe(observations, reward, success, truncated, {'success': success})

    def close(self) -> None:
        self.sim.close()

    def pose(self) -> Pose:
        state = self.agent.get_state()
        x, y = habitat_to_map(state.position)
        return Pose(x, y, yaw_of(state.rotation))

    def _object_xy(self, kind: str) -> tuple[float, float]:
        return habitat_to_map(self.objects[kind].translation)

    def _pick_up(self) -> None:
        pose = self.pose()
        for kind in self.objects:
            forward, left = pose.relative(*self._object_xy(kind))
            if self.carrying is None and math.hypot(forward, left) <= REACH and abs(math.atan2(left, forward)) < math.radians(30):
                self.carrying = kind
                self.objects[kind].motion_type = self.hs.physics.MotionType.KINEMATIC
                self._recompute_navmesh()  # its footprint is free floor now
                return

    def _drop(self) -> None:
        if self.carrying is not None:
            self.objects[self.carrying].motion_type = self.hs.physics.MotionType.STATIC
            self.carrying = None
            self._recompute_navmesh()

    def _carry(self) -> None:
        if self.carrying is not None:  # held 0.8 m ahead, at floor level
            pose = self.pose()
            x, y = pose.on_map(0.8, 0.0)
            self.objects[self.carrying].translation = map_to_habitat(x, y, 0.25)

    def _success(self, action: int) -> bool:
        if self.task == 'Habitat-GoToObject-v0':
            pose = self.pose()
            return math.hypot(*pose.relative(*self._object_xy(self.target))) <= REACH
        first, second = list(self.objects)[:2]
        near = math.dist(self._object_xy(first), self._object_xy(second)) <= REACH + 0.5
        return action == DROP and self.carrying is None and near

    def _observe(self, observations: dict, reward: float, terminated: bool, truncated: bool,
                 info: dict | None = None) -> EmbodiedStep:
        rgb = np.asarray(observations['rgb'])[..., :3]  # the COLOR sensor gives RGBA
        depth = np.asarray(observations['depth'], np.float32)
        pose = self.pose()
        objects = []
        for kind in self.objects:
            if kind == self.carrying:
                continue
            forward, left = pose.relative(*self._object_xy(kind))
            if visible_in_depth(forward, left, 0.25, depth, self.camera):
                self._last_seen[kind] = self._object_xy(kind)
        for kind, (x, y) in sorted(self._last_seen.items()):
            if kind == self.carrying:
                continue
            forward, left = pose.relative(x, y)
            objects.append(PerceivedObject(type=kind, forward=forward, left=left,
                                           visible=visible_in_depth(forward, left, 0.25, depth, self.camera)))
        holding = PerceivedObject(type=self.carrying) if self.carrying else None
        perception = Perception(mission=self.mission, task_family='embodied', objects=objects, carrying=holding,
                                x=pose.x, y=pose.y, heading=pose.yaw)
        perception.occupancy = self.mapper.update(depth, pose, carrying=holding is not None)
        return EmbodiedStep(rgb, depth, pose, perception, reward, terminated, truncated,
                            info or {'success': False})
