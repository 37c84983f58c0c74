"""robot_policy_node: the distilled student driving a robot from its own camera topics.

Subscribes to an rgb image (rgb8, bgr8, rgba8, bgra8) and a depth image (32FC1 metres or 16UC1
millimetres), pairs them by stamp (within `slop` s), builds the observation the student was
trained on (llm_teacher_common.camera, the function the simulators use), runs the exported policy
(policy.pt or policy.onnx) and publishes:

    cmd_vel          geometry_msgs/Twist: the velocity that carries out the action in one control
                     period (llm_teacher_common.commands), clipped to max_linear / max_angular
    policy_action    llm_teacher_msgs/ActionBatch: the action and its distribution (stamp = the
                     frames'), for rviz2 / Foxglove and for checking

It stops the robot (a zero Twist) when the newest frame pair is older than max_sensor_age, when
inference fails, and on shutdown. Imports rclpy, numpy, torch, opencv and the interfaces only.

    ros2 run student_policy robot_policy_node --ros-args -p policy_path:=runs/train/policy.pt \
        -r camera/image_raw:=/robot/rgb -r camera/depth/image_raw:=/robot/depth -r cmd_vel:=/robot/cmd_vel
"""
from __future__ import annotations

import functools

import torch
from geometry_msgs.msg import Twist
from llm_teacher_msgs.msg import ActionBatch
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rclpy.time import Time
from sensor_msgs.msg import Image

from llm_teacher_common.commands import MOTIONS
from llm_teacher_common.messages import depth_from_image, rgb_from_image
from llm_teacher_common.node import parameter, spin
from student_policy.inference import load_policy
from student_policy.robot_control import CameraPolicy, FramePair, StampPairer


class RobotPolicyNode(Node):

    def __init__(self):
        super().__init__('robot_policy_node')
        p = functools.partial(parameter, self)
        path = p('policy_path', 'runs/train/policy.pt', 'Exported student policy (TorchScript .pt or .onnx)')
        device = p('device', 'cpu', 'Where the policy runs: cpu, or cuda (.pt only)')
        rate = p('control_rate_hz', 10.0, 'Most actions per second; one action lasts 1 / rate s (the Twist carries '
                                          'it out in that time), and the watchdog checks the sensors at this rate')
        self.max_sensor_age = p('max_sensor_age', 0.5, 'Stop the robot when the newest rgb+depth pair is older (s)')
        slop = p('slop', 0.02, 'Largest stamp difference (s) between an rgb and a depth frame taken together')
        try:
            if rate <= 0:
                raise ValueError(f'control_rate_hz must be > 0, got {rate}')
            torch.set_num_threads(1)
            self.controller = CameraPolicy(
                load_policy(path, device),
                observation=p('observation', 'rgbd', "What the policy sees: 'rgbd' (rgb + depth) or 'rgb'"),
                action_set=p('action_set', 'miniworld', f'Meaning of the action indices: {", ".join(MOTIONS)}'),
                greedy=p('greedy', True, 'true: the most likely action; false: sample from the policy'),
                motion_only=p('motion_only', True, 'Choose only among actions that move the base'),
                step_length=p('step_length', 0.15, 'Metres one forward action moves (MiniWorld: 0.15)'),
                turn_angle=p('turn_angle', 0.2617994, 'Radians one turn action turns (MiniWorld: 15 deg)'),
                step_duration=1.0 / rate,
                max_linear=p('max_linear', 2.0, 'Largest |linear.x| sent (m/s)'),
                max_angular=p('max_angular', 3.0, 'Largest |angular.z| sent (rad/s)'),
                seed=p('seed', 0, 'Seed of sampled actions (greedy: false)'))
            self.pairer = StampPairer(slop)
        except ValueError as err:
            raise SystemExit(f'robot_policy_node: {err}') from err
        self.min_period_ns = int(0.5e9 / rate)  # frames faster than twice the control rate are skipped
        self.cmd_pub = self.create_publisher(Twist, 'cmd_vel', 10)
        self.action_pub = self.create_publisher(ActionBatch, 'policy_action', 10)
        self.create_subscription(Image, 'camera/image_raw', self.on_rgb, qos_profile_sensor_data)
        self.create_subscription(Image, 'camera/depth/image_raw', self.on_depth, qos_profile_sensor_data)
        self.create_timer(1.0 / rate, self.watchdog)
        self.newest_ns: int | None = None  # stamp of the newest pair acted on
        self.last_action_ns = -self.min_period_ns
        self.seq = 0
        self.stopped = True
        info = self.controller.policy.info
        self.get_logger().info(f'serving {path} ({info.task or "task unknown"}, input {tuple(info.obs_shape)}) '
                               f'at up to {rate:g} Hz on {device}')

    def on_rgb(self, msg: Image) -> None:
        self.take(msg, rgb_from_image, self.pairer.add_rgb)

    def on_depth(self, msg: Image) -> None:
        self.take(msg, depth_from_image, self.pairer.add_depth)

    def take(self, msg: Image, convert, add) -> None:
        try:
            frame = convert(msg)
        except ValueError as err:
            self.get_logger().error(f'{err}; frame dropped', throttle_duration_sec=5.0)
            return
        pair = add(Time.from_msg(msg.header.stamp).nanoseconds, frame)
        if pair is not None:
            self.act(pair)

    def act(self, pair: FramePair) -> None:
        if pair.stamp_ns - self.last_action_ns < self.min_period_ns:
            return
        self.newest_ns = self.last_action_ns = pair.stamp_ns
        if self.too_old(pair.stamp_ns):
            return  # the watchdog stops the robot
        try:
            action, probs = self.controller.act(self.controller.observe(pair))
        except (ValueError, FloatingPointError, RuntimeError) as err:
            self.get_logger().error(f'inference failed ({err}); stopping the robot', throttle_duration_sec=5.0)
            self.stop()
            return
        twist = Twist()
        twist.linear.x, twist.angular.z = self.controller.velocity(action)
        self.cmd_pub.publish(twist)
        self.stopped = False
        out = ActionBatch(seq=self.seq, actions=[action], action_probs=probs.tolist())
        out.header.stamp = Time(nanoseconds=pair.stamp_ns).to_msg()
        self.seq += 1
        self.action_pub.publish(out)

    def too_old(self, stamp_ns: int) -> bool:
        return self.get_clock().now().nanoseconds - stamp_ns > self.max_sensor_age * 1e9

    def watchdog(self) -> None:
        if self.newest_ns is None or self.too_old(self.newest_ns):
            if not self.stopped:
                self.get_logger().warning(f'no rgb+depth pair newer than {self.max_sensor_age:g} s: stopping the robot')
            self.stop()

    def stop(self) -> None:
        self.cmd_pub.publish(Twist())
        self.stopped = True

    def destroy_node(self):
        self.stop()  # the last word to the base: stand still
        super().destroy_node()


def main(args=None):
    spin(RobotPolicyNode, args)


if __name__ == '__main__':
    main()
