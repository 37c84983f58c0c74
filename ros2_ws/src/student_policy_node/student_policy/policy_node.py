"""policy_node: the deployed student for grid simulators, inference only (no LLM, no training code,
no simulator on its path). A robot with a camera runs robot_policy_node instead.

Loads an exported policy (run_dir/policy.pt or .onnx), and answers each observation batch on
`step_batch` with actions on `action_batch` (greedy, or sampled with greedy:=false). For a mobile
robot it also publishes the action of environment `twist_env` as geometry_msgs/Twist on `cmd_vel`
(mapping in llm_teacher_common.commands: the velocity that does the action in `step_duration` s).
Remap the topics to a robot's:

    ros2 run student_policy policy_node --ros-args -p policy_path:=runs/train/policy.pt -r step_batch:=/robot/observations
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from geometry_msgs.msg import Twist
from llm_teacher_msgs.msg import ActionBatch, StepBatch
from rclpy.node import Node

from llm_teacher_common.commands import MOTIONS, velocity_for_action
from llm_teacher_common.messages import observations_from_msg
from llm_teacher_common.node import parameter, spin
from student_policy.inference import choose_actions, load_policy

QOS_DEPTH = 10


class PolicyNode(Node):

    def __init__(self):
        super().__init__('policy_node')
        p = functools.partial(parameter, self)
        path = p('policy_path', 'runs/train/policy.pt', 'Exported policy (TorchScript .pt or .onnx)')
        self.greedy = p('greedy', False, 'true: the most likely action; false: sample from the policy (escapes loops)')
        self.twist_env = p('twist_env', 0, 'Environment (robot) whose action goes out on cmd_vel; -1: publish no Twist')
        self.twist_mapping = {
            'action_set': p('action_set', 'minigrid', f'Meaning of the action indices: {", ".join(MOTIONS)}'),
            'step_length': p('step_length', 0.5, 'Metres one forward action moves'),
            'turn_angle': p('turn_angle', 1.5707963, 'Radians one turn action turns'),
            'step_duration': p('step_duration', 1.0, 'Seconds one action takes on the robot'),
        }
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
        actions = choose_actions(self.policy(obs), self.greedy)
        out = ActionBatch(seq=batch.seq, epoch=batch.epoch, group=batch.group, actions=actions.astype(np.int32).tolist())
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
