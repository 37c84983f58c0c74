"""policy_node: the deployed student for grid simulators, inference only (no LLM, no training code,
no simulator on its path). A robot with a camera runs robot_policy_node instead.

Loads an exported policy (run_dir/policy.pt or .onnx), and answers each observation batch on
`step_batch` with actions on `action_batch` (greedy, or sampled with greedy:=false). For a mobile
robot it also publishes the action of environment `twist_env` as geometry_msgs/Twist on `cmd_vel`
(mapping in llm_teacher_common.commands: the velocity that does the action in `step_duration` s,
clipped to max_linear / max_angular). A policy that reads the mission takes each env's from the
batch (StepBatch.missions; one with words it never learnt is not answered). A recurrent policy keeps a state per environment (per env group),
zeroed at each episode's start, for a new simulator (epoch), on an std_msgs/Empty on `reset` and
after the input went stale; a resent batch is answered from the same state. Remap the topics to a robot's:

    ros2 run student_deploy policy_node --ros-args -p policy_path:=runs/train/policy.pt -r step_batch:=/robot/observations

It trusts what arrives no more than robot_policy_node does (docs/safety.md, the same pieces of
student_deploy.robot_control): a batch whose observations do not fit the policy, or that the policy
answers with non-finite logits, is not answered and stops the robot; a batch stamped negative,
more than max_clock_skew ahead or older than max_sensor_age is answered but moves nothing; the
robot stops (a zero Twist) within max_sensor_age + step_duration of the last batch that moved it,
and on shutdown.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from geometry_msgs.msg import Twist
from llm_teacher_msgs.msg import ActionBatch, StepBatch
from rclpy.duration import Duration
from rclpy.node import Node
from std_msgs.msg import Empty

from llm_teacher_common.commands import MOTIONS
from llm_teacher_common.node import parameter, spin
from student_deploy.inference import load_policy
from student_deploy.robot_control import (BatchStates, SensorWatchdog, VelocityCommands, batch_observations,
                                          checked_actions, stamp_ns)

QOS_DEPTH = 10


class PolicyNode(Node):

    def __init__(self):
        super().__init__('policy_node')
        p = functools.partial(parameter, self)
        path = p('policy_path', 'runs/train/policy.pt', 'Exported policy (TorchScript .pt or .onnx)')
        self.greedy = p('greedy', False, 'true: the most likely action; false: sample from the policy (escapes loops)')
        self.twist_env = p('twist_env', 0, 'Environment (robot) whose action goes out on cmd_vel; -1: publish no Twist')
        try:  # every parameter is checked before anything moves
            step_duration = p('step_duration', 1.0, 'Seconds one action takes on the robot (> 0); the watchdog '
                                                    'checks the input this often')
            self.commands = VelocityCommands(
                action_set=p('action_set', 'minigrid', f'Meaning of the action indices: {", ".join(MOTIONS)}'),
                step_length=p('step_length', 0.5, 'Metres one forward action moves (> 0)'),
                turn_angle=p('turn_angle', 1.5707963, 'Radians one turn action turns (> 0)'),
                step_duration=step_duration,
                max_linear=p('max_linear', 1.0, 'Largest |linear.x| sent (m/s, > 0)'),
                max_angular=p('max_angular', 2.0, 'Largest |angular.z| sent (rad/s, > 0)'))
            self.sensors = SensorWatchdog(
                p('max_sensor_age', 2.0, 'Stop the robot when the newest batch that moved it is older (s, > 0)'),
                p('max_clock_skew', 0.05, 'Batches stamped more than this ahead of this node\'s clock move nothing '
                                          '(s, 0..max_sensor_age)'))
            torch.set_num_threads(1)
            self.policy = load_policy(path)
        except (ValueError, OverflowError) as err:
            raise SystemExit(f'policy_node: {err}') from err
        self.policy_shape = tuple(self.policy.info.obs_shape) if self.policy.info is not None else None
        self.states = BatchStates(self.policy)
        self.action_pub = self.create_publisher(ActionBatch, 'action_batch', QOS_DEPTH)
        self.twist_pub = self.create_publisher(Twist, 'cmd_vel', QOS_DEPTH)
        self.create_subscription(StepBatch, 'step_batch', self.on_step, QOS_DEPTH)
        self.create_subscription(Empty, 'reset', lambda _: self.states.reset(), QOS_DEPTH)
        if self.twist_env >= 0:
            self.create_timer(step_duration, self.watchdog)
        self.stopped = True
        self.get_logger().info(f'serving {path}')

    def on_step(self, batch: StepBatch) -> None:
        try:
            obs = batch_observations(batch.observations, batch.num_envs, batch.obs_shape, self.policy_shape)
            ended = episode_ends(batch)
            missions = self.policy.encode_missions(list(batch.missions)) if self.policy.reads_mission else None
            if missions is not None and len(missions) != batch.num_envs:
                raise ValueError(f'{len(missions)} missions for {batch.num_envs} environments: this policy reads '
                                 f'one per environment')
            logits, state = self.policy.step(obs, self.states.before(batch.group, batch.epoch, batch.seq, ended),
                                             missions)
            actions, _ = checked_actions(logits, None, self.greedy)
            self.states.after(batch.group, state)
            moving = 0 <= self.twist_env < len(actions)
            if moving:
                twist = Twist()
                twist.linear.x, twist.angular.z = self.commands.velocity(int(actions[self.twist_env]))
        except Exception as err:  # noqa: BLE001 - nothing on the domain may end the node; in doubt, stand still
            self.get_logger().error(f'step batch {batch.seq} not answered ({type(err).__name__}: {err})',
                                    throttle_duration_sec=5.0)
            self.stop()
            return
        out = ActionBatch(seq=batch.seq, epoch=batch.epoch, group=batch.group, actions=actions.astype(np.int32).tolist())
        out.header.stamp = self.get_clock().now().to_msg()
        self.action_pub.publish(out)
        if moving:
            now = self.get_clock().now().nanoseconds
            try:
                stamp = stamp_ns(batch.header.stamp.sec, batch.header.stamp.nanosec)
                self.sensors.check(stamp, now)
            except ValueError as err:
                self.get_logger().warning(f'step batch {batch.seq} moves nothing: {err}', throttle_duration_sec=5.0)
                return
            self.twist_pub.publish(twist)
            self.sensors.fed(stamp, now)
            self.stopped = False

    def watchdog(self) -> None:
        if self.sensors.stale(self.get_clock().now().nanoseconds):
            if not self.stopped:
                self.get_logger().warning(f'no step batch moved the robot in the last '
                                          f'{self.sensors.max_age_ns / 1e9:g} s: stopping it')
            self.states.reset()  # what follows is a new episode
            self.stop()

    def stop(self) -> None:
        if self.twist_env >= 0:
            self.twist_pub.publish(Twist())
        self.stopped = True

    def destroy_node(self):
        self.stop()  # the last word to the base: stand still
        # ... and heard: a process that exits at once can take it with it (seen under load)
        self.twist_pub.wait_for_all_acked(Duration(seconds=1.0))
        super().destroy_node()


def episode_ends(batch: StepBatch) -> np.ndarray:
    """Which environments of a batch start a new episode; a publisher that sends no end flags
    (terminated and truncated empty) ends none.

    :raises ValueError: flags for another number of environments.
    """
    flags = [np.asarray(f, bool) for f in (batch.terminated, batch.truncated) if len(f)]
    if any(len(f) != batch.num_envs for f in flags):
        raise ValueError(f'{[len(f) for f in flags]} episode-end flags for {batch.num_envs} environments')
    return np.logical_or.reduce(flags) if flags else np.zeros(batch.num_envs, bool)


def main(args=None):
    spin(PolicyNode, args)


if __name__ == '__main__':
    main()
