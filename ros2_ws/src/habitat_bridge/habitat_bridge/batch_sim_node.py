"""batch_sim_node: the training simulator. N headless environments stepped in lock-step over ROS 2, as
fast as the learner answers: MiniGrid tasks, or
MiniWorld robots (MiniWorld-* task ids: camera rgb + depth observations, perception with the
robot's occupancy map) for training from images.

Publishes `step_batch` (llm_teacher_msgs/StepBatch) after every step and then, while someone (the
teacher) subscribes, `perception_batch` (llm_teacher_msgs/PerceptionBatch, same seq); steps on
`action_batch` (llm_teacher_msgs/ActionBatch) answering the current seq, resets on the `reset_envs`
service, and publishes a throttled rgb rendering of one environment on `image` (sensor_msgs/Image).

With num_groups > 1 the envs form equal groups, each lock-stepped on its own step batches (the
batch says which group it is): the sim steps one group while the policy acts on another, so
neither waits for the other nor for the DDS round trip (double-buffered sampling, as in
Sample Factory).

Scale-out: several sim processes may share one training run, each hosting some of the groups
(`groups`, e.g. '0' on one host and '1' on another, both with the same num_envs and num_groups): a
sim steps only its own groups and ignores action batches for the others. On one host with more
cores, train.launch.py's `sim_processes` starts several, each on its share of the groups.

Perceptions travel apart so that the student, which never reads them, does not wait for their
conversion: the sim publishes them while the student computes its actions. With no teacher they
are not even computed (a plain-PPO graph steps ~1.3 ms faster per batch of 16).

    ros2 run habitat_bridge batch_sim_node --ros-args -p task:=MiniGrid-LavaDoorKey-v0 -p num_envs:=8
"""
from __future__ import annotations

import functools
import secrets

import numpy as np
from llm_teacher_msgs.msg import ActionBatch, PerceptionBatch, StepBatch
from llm_teacher_msgs.srv import ResetEnvs
from rclpy.node import Node
from sensor_msgs.msg import Image

from habitat_bridge.vector import default_observation, make_vec_env
from llm_teacher_common.lockstep import LockstepSim, Verdict
from llm_teacher_common.messages import perception_batch_msg, rgb_image_msg, step_batch_msg
from llm_teacher_common.node import group_list, parameter, spin

BATCH_QOS_DEPTH = 10


class BatchSimNode(Node):

    def __init__(self):
        super().__init__('batch_sim_node')
        param = functools.partial(parameter, self)
        task = param('task', 'MiniGrid-SimpleDoorKey-v0', 'Registered MiniGrid id (the paper tasks or any standard one)')
        num_envs = param('num_envs', 16, 'Environments, stepped in lock-step (per group, see num_groups)')
        self.seed = param('seed', 0, 'Environment i starts with seed + i')
        self.observation = param('observation', '', "'memory_map' (the paper's) or 'egocentric' on MiniGrid; 'rgbd', "
                                 "'rgb' (camera) or 'rgbd_map' (camera and the robot's map crop) on MiniWorld; "
                                 "'' the task's default (memory_map, rgbd)")
        render_hz = param('render_hz', 2.0, 'Rate of the rgb rendering on `image` (0 turns it off)')
        self.render_env = param('render_env', 0, 'Which environment `image` shows')
        num_groups = param('num_groups', 1, 'Env groups in flight (num_envs / num_groups per step batch): with 2 the '
                           'sim steps one group while the policy acts on the other (double-buffered sampling)')
        groups = param('groups', '', "Env groups this process hosts, e.g. '0' or '1,2' (several sim processes, on "
                       "several hosts or cores, share a run); '' all of them")
        republish_s = param('republish_period', 1.0, 'Resend a step batch when unanswered this long (s)')
        if num_groups < 1 or num_envs % num_groups:
            raise SystemExit(f'batch_sim_node: num_groups {num_groups} does not divide num_envs {num_envs} '
                             'into equal groups')
        try:
            owned = group_list(groups, num_groups)
        except ValueError as err:
            raise SystemExit(f'batch_sim_node: {err}') from err
        self.num_groups = num_groups
        if not 0 <= self.render_env < num_envs:
            raise SystemExit(f'batch_sim_node: render_env {self.render_env} is not in 0..{num_envs - 1}')
        self.group_size = num_envs // num_groups
        render_group, render_index = divmod(self.render_env, self.group_size)
        try:
            self.groups = {g: make_vec_env(task, self.group_size, self.observation,
                                           render_env=render_index if render_hz > 0 and g == render_group else None)
                           for g in owned}
            self.observation = self.observation or default_observation(task)
        except ValueError as err:
            raise SystemExit(f'batch_sim_node: {err}') from err
        self.num_actions = self.groups[owned[0]].num_actions

        self.step_pub = self.create_publisher(StepBatch, 'step_batch', BATCH_QOS_DEPTH)
        self.perception_pub = self.create_publisher(PerceptionBatch, 'perception_batch', BATCH_QOS_DEPTH)
        self.image_pub = self.create_publisher(Image, 'image', 1)
        self.create_subscription(ActionBatch, 'action_batch', self.on_actions, BATCH_QOS_DEPTH)
        self.create_service(ResetEnvs, 'reset_envs', self.on_reset)
        if render_hz > 0 and render_group in self.groups:
            self.create_timer(1.0 / render_hz, self.publish_image)
        self.create_timer(republish_s, self.republish_if_unanswered)
        # A random epoch per process start tells the learner and the teacher that this is a new sim.
        self.protocol = LockstepSim(owned, self.group_size, self.num_actions, epoch=secrets.randbits(63))
        self.on_reset(ResetEnvs.Request(seed=self.seed), ResetEnvs.Response())
        self.get_logger().info(f'{num_envs} x {task} ({self.observation}) in {num_groups} group(s), hosting '
                               f'group(s) {owned} here, {self.num_actions} actions, epoch {self.protocol.epoch:x}')

    def publish_step(self, group: int, advance) -> None:
        """Step or reset env group `group` (`advance()`), publish its step batch, then its perceptions."""
        envs = self.groups[group]
        perceive = envs.perceive = self.perception_pub.get_subscription_count() > 0
        step = advance(envs)
        seq, epoch = self.protocol.next_seq(), self.protocol.epoch
        batch = step_batch_msg(step, seq, self.get_clock().now().to_msg(), self.observation,
                               self.num_actions, group=group, num_groups=self.num_groups, epoch=epoch)
        self.step_pub.publish(batch)
        perceptions = None
        if perceive:
            perceptions = perception_batch_msg(step.perceptions, seq, batch.header.stamp, epoch=epoch)
            self.perception_pub.publish(perceptions)
        self.protocol.publish(group, (batch, perceptions))

    def on_actions(self, batch: ActionBatch) -> None:
        verdict, why = self.protocol.take(batch.epoch, batch.seq, batch.group, batch.actions)
        if verdict is Verdict.REJECT:
            self.get_logger().error(f'rejected action batch {batch.seq}: {why}', throttle_duration_sec=1.0)
        elif verdict is Verdict.STEP:
            self.publish_step(batch.group, lambda envs: envs.step(np.asarray(batch.actions)))

    def on_reset(self, request: ResetEnvs.Request, response: ResetEnvs.Response) -> ResetEnvs.Response:
        self.protocol.reset()
        for group in self.groups:
            seed = request.seed + group * self.group_size if request.seed >= 0 else None
            self.publish_step(group, lambda envs: envs.reset(seed))
        response.success, response.seq = True, self.protocol.seq
        response.message = f'reset {len(self.groups) * self.group_size} environments'
        return response

    def republish_if_unanswered(self) -> None:
        # A subscriber that joined after a step batch would otherwise wait forever for it.
        for batch, perceptions in self.protocol.due_for_resend():
            self.step_pub.publish(batch)
            if perceptions is not None:
                self.perception_pub.publish(perceptions)

    def publish_image(self) -> None:
        group, index = divmod(self.render_env, self.group_size)
        frame = self.groups[group].render(index)
        self.image_pub.publish(rgb_image_msg(frame, self.get_clock().now().to_msg(), f'env_{self.render_env}'))


def main(args=None):
    spin(BatchSimNode, args)


if __name__ == '__main__':
    main()
