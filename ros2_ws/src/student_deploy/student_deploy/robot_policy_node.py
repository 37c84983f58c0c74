"""robot_policy_node: the distilled student driving a robot from its own camera topics.

Subscribes to an rgb image (rgb8, bgr8, rgba8, bgra8) and a depth image (32FC1 metres or 16UC1
millimetres), pairs them by stamp (within `slop` s), builds the observation the student was
trained on (llm_teacher_common.camera, the function the simulators use), runs the exported policy
(policy.pt or policy.onnx) and publishes:

    cmd_vel          geometry_msgs/Twist: the velocity that carries out the action in one control
                     period (llm_teacher_common.commands), clipped to max_linear / max_angular
    policy_action    llm_teacher_msgs/ActionBatch: the action and its distribution (stamp = the
                     frames'), for rviz2 / Foxglove and for checking

A recurrent policy (policy.json "recurrent" > 0) remembers the episode: an std_msgs/Empty on
`reset` (the robot was carried elsewhere), a new mission on `mission` and sensors gone stale start
it afresh.

A policy trained with the robot's map beside the camera (observation rgbd_map) reads, besides
the frames: the mapper's nav_msgs/OccupancyGrid on `map`, nav_msgs/Odometry on `odom` (the pose at
each frame's stamp, within `slop`), map -> odom on /tf (none needed where the map is in the
odometry frame), and geometry_msgs/PoseArray on `targets`: where the objects the mission names
were last seen, in the map frame (a detector that reads the mission publishes it; robot_sim_node
does; at most MapInput.MAX_TARGETS of them). It acts only once each has come; a map older than
max_map_age stops the robot. The map's origin may be turned about z (Nav2's map_server origin
[x, y, yaw]); one that rolls or pitches the map is refused. A refused map or targets message
stops the robot until a valid one comes, as does a pose that is not finite or off the map.

A policy that chooses among its mission's options (policy.json "chooses_options": an option-level
student, trained with benchmarks/reproduce.py --option-level) reads what a map policy reads, and the
embodied skills (llm_teacher_common.embodied_skills) turn the option it chooses into the motion:
on the map, from the pose on it, to the targets, keeping off the geometry_msgs/PoseArray on
`obstacles` (where the other objects were last seen, map frame; optional: without it the skills
keep off what the map holds). It runs missions that name one object to go to
("go to the red ball": targets carry no labels, and a base cannot pick up); it waits for a mission,
and refuses others, naming why. It chooses an option every option_hold frames and runs the skill
of the one it holds in between (greedy, choosing every frame it can flip between two options whose
skills undo each other's turns). Its policy_action holds that motion, the options' probabilities
and the option held.

A policy that reads the mission (policy.json "mission_length" > 0) takes it as std_msgs/String on
`mission` (volatile, so `ros2 topic pub` reaches it; a publisher repeats it, as robot_sim_node
does with every frame, or publishes it after this node started). Until a mission
comes the robot does not move; a mission with words the policy never learnt is refused, naming
them, and the robot stays stopped until a readable one comes.

It trusts nothing it receives (docs/safety.md): a frame stamped negative, more than
max_clock_skew ahead of this node's clock or older than max_sensor_age, an empty, oversized or
short image, an unknown encoding, are refused; a pair whose depth image is mostly invalid, or
that the policy answers with non-finite logits, stops the robot at once. It stops the robot (a
zero Twist) within max_sensor_age + one control period of the last pair acted on, whatever
arrives after it, and on shutdown. Parameters that are not finite, or out of range, end it at
start-up with an error naming them. Imports rclpy, numpy, torch, opencv and the interfaces only.

    ros2 run student_deploy robot_policy_node --ros-args -p policy_path:=runs/train/policy.pt \
        -r camera/image_raw:=/robot/rgb -r camera/depth/image_raw:=/robot/depth -r cmd_vel:=/robot/cmd_vel
"""
from __future__ import annotations

import functools

import torch
from geometry_msgs.msg import PoseArray, Twist
from llm_teacher_msgs.msg import ActionBatch
from nav_msgs.msg import OccupancyGrid, Odometry
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
from rclpy.time import Time
from sensor_msgs.msg import Image
from std_msgs.msg import Empty, String
from tf2_msgs.msg import TFMessage

from llm_teacher_common.commands import MOTIONS
from llm_teacher_common.messages import depth_from_image, occupancy_grid_from_msg, rgb_from_image
from llm_teacher_common.node import parameter, spin
from llm_teacher_common.options import OPTION_HOLD
from student_deploy.inference import load_policy
from student_deploy.robot_control import (CameraPolicy, FramePair, MapInput, SensorWatchdog, StampPairer,
                                          checked_number, stamp_ns, yaw_of)

MAX_RATE_HZ = 1000.0  # a faster timer would busy the node's one thread


class RobotPolicyNode(Node):

    def __init__(self):
        super().__init__('robot_policy_node')
        p = functools.partial(parameter, self)
        path = p('policy_path', 'runs/train/policy.pt', 'Exported student policy (TorchScript .pt or .onnx)')
        device = p('device', 'cpu', 'Where the policy runs: cpu, or cuda (.pt only)')
        try:  # every parameter, even its type cast (-p seed:=.inf), is checked before anything moves
            rate = checked_number('control_rate_hz', p(
                'control_rate_hz', 10.0, f'Most actions per second (0..{MAX_RATE_HZ:g}); one action lasts 1 / rate s '
                                         '(the Twist carries it out in that time), and the watchdog checks the '
                                         'sensors at this rate'), high=MAX_RATE_HZ)
            self.sensors = SensorWatchdog(
                p('max_sensor_age', 0.5, 'Stop the robot when the newest rgb+depth pair acted on is older (s, > 0)'),
                p('max_clock_skew', 0.05, 'Frames stamped more than this ahead of this node\'s clock are refused '
                                          '(s, 0..max_sensor_age)'))
            slop = p('slop', 0.02, 'Largest stamp difference (s, >= 0) between an rgb and a depth frame taken '
                                   'together (and, with the map, the odometry)')
            self.pairer = StampPairer(slop)
            torch.set_num_threads(1)
            self.controller = CameraPolicy(
                load_policy(path, device),
                observation=p('observation', 'rgbd', "What the policy sees: 'rgbd' (rgb + depth), 'rgb', or "
                                                     "'rgbd_map' (rgbd and the robot's map: reads map, odom, /tf, "
                                                     "targets)"),
                action_set=p('action_set', 'miniworld', f'Meaning of the action indices: {", ".join(MOTIONS)}'),
                greedy=p('greedy', True, 'true: the most likely action; false: sample from the policy'),
                motion_only=p('motion_only', True, 'Choose only among actions that move the base'),
                step_length=p('step_length', 0.15, 'Metres one forward action moves (> 0; MiniWorld: 0.15)'),
                turn_angle=p('turn_angle', 0.2617994, 'Radians one turn action turns (> 0; MiniWorld: 15 deg)'),
                step_duration=1.0 / rate,
                max_linear=p('max_linear', 0.5, 'Largest |linear.x| sent (m/s, > 0)'),
                max_angular=p('max_angular', 1.5, 'Largest |angular.z| sent (rad/s, > 0)'),
                max_invalid_depth=p('max_invalid_depth', 0.5, 'Stop the robot when more than this fraction (0..1) '
                                                               'of a depth image is NaN, inf or <= 0'),
                seed=p('seed', 0, 'Seed of sampled actions (greedy: false)'),
                option_hold=p('option_hold', OPTION_HOLD, 'A policy that chooses options: frames each chosen option '
                                                          'is held (its skill runs) before the next choice (>= 1)'))
            max_map_age = p('max_map_age', 15.0, "observation rgbd_map: stop the robot when the newest map (or map -> "
                                                 "odom) is this much older than the frames (s, > 0)")
            info = self.controller.policy.info
            self.map_input = MapInput(info.obs_shape[1], slop, max_map_age) if self.controller.reads_map else None
        except (ValueError, OverflowError) as err:
            raise SystemExit(f'robot_policy_node: {err}') from err
        self.pending: FramePair | None = None  # a map policy's frames waiting for their odometry
        self.min_period_ns = int(0.5e9 / rate)  # frames faster than twice the control rate are skipped
        self.cmd_pub = self.create_publisher(Twist, 'cmd_vel', 10)
        self.action_pub = self.create_publisher(ActionBatch, 'policy_action', 10)
        self.create_subscription(Image, 'camera/image_raw', self.on_rgb, qos_profile_sensor_data)
        self.create_subscription(Image, 'camera/depth/image_raw', self.on_depth, qos_profile_sensor_data)
        self.create_subscription(Empty, 'reset', self.on_reset, 10)
        self.create_subscription(String, 'mission', self.on_mission, 10)
        if self.map_input is not None:
            latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)  # as mappers and /tf_static publish
            self.create_subscription(OccupancyGrid, 'map', self.on_map, latched)
            self.create_subscription(Odometry, 'odom', self.on_odom, 20)
            self.create_subscription(TFMessage, '/tf', functools.partial(self.on_tf, static=False), 20)
            self.create_subscription(TFMessage, '/tf_static', functools.partial(self.on_tf, static=True),
                                     QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL))
            self.create_subscription(PoseArray, 'targets', functools.partial(self.on_points, 'targets'), 10)
            if self.controller.chooses_options:
                self.create_subscription(PoseArray, 'obstacles', functools.partial(self.on_points, 'obstacles'), 10)
        self.create_timer(1.0 / rate, self.watchdog)
        self.last_action_ns = -self.min_period_ns
        self.seq = 0
        self.stopped = True
        self.get_logger().info(f'serving {path} ({info.task or "task unknown"}, input {tuple(info.obs_shape)}) '
                               f'at up to {rate:g} Hz on {device}' +
                               (': waiting for a mission on the mission topic'
                                if info.mission_length or info.chooses_options else ''))

    def on_rgb(self, msg: Image) -> None:
        self.take(msg, rgb_from_image, self.pairer.add_rgb)

    def on_depth(self, msg: Image) -> None:
        self.take(msg, depth_from_image, self.pairer.add_depth)

    def take(self, msg: Image, convert, add) -> None:
        now = self.get_clock().now().nanoseconds
        try:
            stamp = stamp_ns(msg.header.stamp.sec, msg.header.stamp.nanosec)
            self.sensors.check(stamp, now)
            frame = convert(msg)
        except ValueError as err:
            self.get_logger().warning(f'{msg.encoding[:16]!r} frame refused: {err}', throttle_duration_sec=5.0)
            return
        pair = add(stamp, frame)
        if pair is None:
            return
        if self.map_input is None:
            self.act(pair, now)
            return
        if self.pending is not None:  # newer frames came before the older ones could be acted on
            self.get_logger().info(f'waiting for {self.map_input.waiting_for(self.pending.stamp_ns)} before moving',
                                   throttle_duration_sec=5.0)
        self.pending = pair
        self.act_on_pending(now)

    def act_on_pending(self, now: int) -> None:
        """A map policy acts on its newest frames once their odometry (and the map) has come, if
        they are still fresh."""
        if self.pending is None or self.map_input.waiting_for(self.pending.stamp_ns):
            return
        pair, self.pending = self.pending, None
        try:
            self.sensors.check(pair.stamp_ns, now)
        except ValueError:
            return  # the frames aged while their odometry was on its way
        self.act(pair, now)

    def on_map(self, msg: OccupancyGrid) -> None:
        try:
            stamp = stamp_ns(msg.header.stamp.sec, msg.header.stamp.nanosec)
            self.sensors.check_not_ahead(stamp, self.get_clock().now().nanoseconds)  # it would never grow stale
            q = msg.info.origin.orientation
            self.map_input.add_map(stamp, msg.header.frame_id, occupancy_grid_from_msg(msg), (q.x, q.y, q.z, q.w))
        except ValueError as err:
            self.get_logger().error(f'map refused, stopping the robot until a valid one comes: {err}',
                                    throttle_duration_sec=5.0)
            self.refuse('map', str(err))

    def on_odom(self, msg: Odometry) -> None:
        now = self.get_clock().now().nanoseconds
        try:
            stamp = stamp_ns(msg.header.stamp.sec, msg.header.stamp.nanosec)
            self.sensors.check(stamp, now)
            pose, q = msg.pose.pose.position, msg.pose.pose.orientation
            self.map_input.add_odom(stamp, msg.header.frame_id, pose.x, pose.y, yaw_of(q.z, q.w, q.x, q.y))
        except ValueError as err:
            self.get_logger().warning(f'odometry refused: {err}', throttle_duration_sec=5.0)
            return
        self.act_on_pending(now)

    def on_tf(self, msg: TFMessage, static: bool) -> None:
        now = self.get_clock().now().nanoseconds
        for t in msg.transforms:
            q = t.transform.rotation
            try:
                stamp = None if static else stamp_ns(t.header.stamp.sec, t.header.stamp.nanosec)
                if stamp is not None:  # a correction stamped ahead would never grow older than max_map_age
                    self.sensors.check_not_ahead(stamp, now)
                yaw = yaw_of(q.z, q.w, q.x, q.y)
            except ValueError as err:
                self.get_logger().warning(f'transform {t.header.frame_id[:40]!r} -> {t.child_frame_id[:40]!r} '
                                          f'refused: {err}', throttle_duration_sec=5.0)
                continue
            self.map_input.add_transform(t.header.frame_id, t.child_frame_id, t.transform.translation.x,
                                         t.transform.translation.y, yaw, stamp)

    def on_points(self, what: str, msg: PoseArray) -> None:
        """Targets or obstacles: where the detector last saw the objects the mission names, or the others."""
        try:
            add = self.map_input.set_targets if what == 'targets' else self.map_input.set_obstacles
            add(msg.header.frame_id, [(p.position.x, p.position.y) for p in msg.poses])
        except ValueError as err:
            self.get_logger().error(f'{what} refused, stopping the robot until valid ones come: {err}',
                                    throttle_duration_sec=5.0)
            self.refuse(what, str(err))

    def refuse(self, what: str, reason: str) -> None:
        """The mapper or detector publishes nonsense: what it sent before is not trusted either."""
        self.map_input.refuse(what, reason)
        self.stop()

    def act(self, pair: FramePair, now: int) -> None:
        if pair.stamp_ns - self.last_action_ns < self.min_period_ns:
            return
        if self.controller.waiting_for_mission:
            self.get_logger().info('waiting for a mission (std_msgs/String on `mission`) before moving',
                                   throttle_duration_sec=5.0)
            self.stop()
            return
        self.last_action_ns = pair.stamp_ns
        try:
            crop, perception = (self.map_input.view(pair.stamp_ns, self.controller.mission
                                                    if self.controller.chooses_options else None)
                                if self.map_input is not None else (None, None))
            action, probs = self.controller.act(self.controller.observe(pair, crop), perception)
            twist = Twist()
            twist.linear.x, twist.angular.z = self.controller.velocity(action)
        except Exception as err:  # noqa: BLE001 - whatever went wrong, a robot in doubt stands still
            self.get_logger().error(f'frame pair not acted on ({type(err).__name__}: {err}); stopping the robot',
                                    throttle_duration_sec=5.0)
            self.stop()
            return
        self.cmd_pub.publish(twist)
        self.sensors.fed(pair.stamp_ns, now)
        self.stopped = False
        out = ActionBatch(seq=self.seq, actions=[action], action_probs=probs.tolist(),
                          options=[self.controller.held_option] if self.controller.chooses_options else [])
        out.header.stamp = Time(nanoseconds=pair.stamp_ns).to_msg()
        self.seq += 1
        self.action_pub.publish(out)

    def on_mission(self, msg: String) -> None:
        try:
            if self.controller.set_mission(msg.data):
                if self.map_input is not None:
                    self.map_input.forget()
                self.get_logger().info(f'mission {msg.data[:200]!r}: a new episode starts')
        except ValueError as err:
            self.get_logger().error(f'mission refused, the robot stays stopped: {err}', throttle_duration_sec=5.0)
            self.stop()

    def on_reset(self, _: Empty) -> None:
        self.controller.reset()
        if self.map_input is not None:
            self.map_input.forget()
        self.get_logger().info('reset: the policy starts a new episode')

    def watchdog(self) -> None:
        if self.sensors.stale(self.get_clock().now().nanoseconds):
            if not self.stopped:
                self.get_logger().warning(f'no rgb+depth pair acted on in the last '
                                          f'{self.sensors.max_age_ns / 1e9:g} s: stopping the robot and '
                                          f'starting a new episode')
            self.controller.reset()  # however it stopped, what it remembers may no longer hold
            self.stop()

    def stop(self) -> None:
        self.cmd_pub.publish(Twist())
        self.stopped = True

    def destroy_node(self):
        self.stop()  # the last word to the base: stand still
        # ... and heard: a process that exits at once can take it with it (seen under load)
        self.cmd_pub.wait_for_all_acked(Duration(seconds=1.0))
        super().destroy_node()


def main(args=None):
    spin(RobotPolicyNode, args)


if __name__ == '__main__':
    main()
