"""policy_node: the deployed student, inference only (no LLM, no training code on its path).

Loads an exported policy (TorchScript, run_dir/policy.pt), and answers each observation batch on
`step_batch` with actions on `action_batch` (greedy, or sampled with greedy:=false). For a mobile
robot it also publishes the action of environment `twist_env` as geometry_msgs/Twist on `cmd_vel`
(mapping in habitat_bridge.commands: the velocity that does the action in `step_duration` s).
Remap the topics to a robot's:

    ros2 run student_policy policy_node --ros-args -p policy_path:=runs/train/policy.pt -r step_batch:=/robot/observations
"""
from __future__ import annotations

import numpy as np
import torch
from geometry_msgs.msg import Twist
from llm_teacher_msgs.msg import ActionBatch, StepBatch
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node

from habitat_bridge.commands import MOTIONS, velocity_for_action
from habitat_bridge.spin import spin
from habitat_bridge.messages import observations_from_msg
from student_policy.evaluate import choose_actions, load_policy

QOS_DEPTH = 10


class PolicyNode(Node):

    def __init__(self):
        super().__init__('policy_node')
        path = self.declare_parameter('policy_path', 'runs/train/policy.pt',
                                      ParameterDescriptor(description='Exported policy (TorchScript)')).value
        self.greedy = self.declare_parameter('greedy', False, ParameterDescriptor(
            description='true: the most likely action; false: sample from the policy (escapes loops)')).value
        self.twist_env = self.declare_parameter('twist_env', 0, ParameterDescriptor(
            description='Environment (robot) whose action goes out on cmd_vel; -1: publish no Twist')).value
        self.twist_mapping = {name: self.declare_parameter(name, default, ParameterDescriptor(description=text)).value
                              for name, default, text in (
                                  ('action_set', 'minigrid', f'Meaning of the action indices: {", ".join(MOTIONS)}'),
                                  ('step_length', 0.5, 'Metres one forward action moves'),
                                  ('turn_angle', 1.5707963, 'Radians one turn action turns'),
                                  ('step_duration', 1.0, 'Seconds one action takes on the robot'))}
        try:
            velocity_for_action(0, **self.twist_mapping)
        except ValueError as err:
            raise SystemExit(f'policy_node: {err}') from err
        torch.set_num_threads(1)
        try:
            self.policy = load_policy(path)
        except ValueError as err:
            raise SystemExit(f'policy_node: {err}') from err
        self.action_pub = self.create_publisher(ActionBatch, 'action_batch', QOS_DEPTH)
        self.twist_pub = self.create_publisher(Twist, 'cmd_vel', QOS_DEPTH)
        self.create_subscription(StepBatch, 'step_batch', self.on_step, QOS_DEPTH)
        self.get_logger().info(f'serving {path}')

    def on_step(self, batch: StepBatch) -> None:
        obs = observations_from_msg(batch)
        with torch.no_grad():
            actions = choose_actions(self.policy(torch.from_numpy(obs.copy())), self.greedy)
        out = ActionBatch(seq=batch.seq, group=batch.group, actions=actions.astype(np.int32).tolist())
        out.header.stamp = self.get_clock().now().to_msg()
        self.action_pub.publish(out)
        if 0 <= self.twist_env < len(actions):
            twist = Twist()
            twist.linear.x, twist.angular.z = velocity_for_action(int(actions[self.twist_env]), **self.twist_mapping)
            self.twist_pub.publish(twist)


def main(args=None):
    spin(PolicyNode, args)


if __name__ == '__main__':
    main()
