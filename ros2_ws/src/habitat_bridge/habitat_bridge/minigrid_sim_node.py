"""minigrid_sim_node: N headless environments stepped in lock-step over ROS 2: MiniGrid tasks, or
MiniWorld robots (MiniWorld-* task ids: camera rgb + depth observations, perception with the
robot's occupancy map) for training from images.

Publishes `step_batch` (llm_teacher_msgs/StepBatch) after every step and then, while someone (the
teacher) subscribes, `perception_batch` (llm_teacher_msgs/PerceptionBatch, same seq); steps on
`action_batch` (llm_teacher_msgs/ActionBatch) answering the current seq, resets on the `reset_envs`
service, and publishes a throttled rgb rendering of one environment on `image` (sensor_msgs/Image).

Perceptions travel apart so that the student, which never reads them, does not wait for their
conversion: the sim publishes them while the student computes its actions. With no teacher they
are not even computed (a plain-PPO graph steps ~1.3 ms faster per batch of 16).

    ros2 run habitat_bridge minigrid_sim_node --ros-args -p task:=MiniGrid-LavaDoorKey-v0 -p num_envs:=8
"""
from __future__ import annotations

import functools

import numpy as np
from llm_teacher_msgs.msg import ActionBatch, PerceptionBatch, StepBatch
from llm_teacher_msgs.srv import ResetEnvs
from rclpy.node import Node
from sensor_msgs.msg import Image

from habitat_bridge.spin import parameter, spin
from habitat_bridge.messages import perception_batch_msg, rgb_image_msg, step_batch_msg
from habitat_bridge.vector import default_observation, make_vec_env

BATCH_QOS_DEPTH = 10


class MiniGridSimNode(Node):

    def __init__(self):
        super().__init__('minigrid_sim_node')
        param = functools.partial(parameter, self)
        task = param('task', 'MiniGrid-SimpleDoorKey-v0', 'Registered MiniGrid id (the paper tasks or any standard one)')
        num_envs = param('num_envs', 16, 'Environments stepped in lock-step per batch')
        self.seed = param('seed', 0, 'Environment i starts with seed + i')
        self.observation = param('observation', '', "'memory_map' (the paper's) or 'egocentric' on MiniGrid; 'rgbd' or "
                                 "'rgb' (camera) on MiniWorld; '' the task's default (memory_map, rgbd)")
        render_hz = param('render_hz', 2.0, 'Rate of the rgb rendering on `image` (0 turns it off)')
        self.render_env = param('render_env', 0, 'Which environment `image` shows')
        republish_s = param('republish_period', 1.0, 'Resend the last step batch when unanswered this long (s)')
        try:
            self.envs = make_vec_env(task, num_envs, self.observation,
                                     render_env=self.render_env if render_hz > 0 else None)
            self.observation = self.observation or default_observation(task)
        except ValueError as err:
            raise SystemExit(f'minigrid_sim_node: {err}') from err
        if not 0 <= self.render_env < num_envs:
            raise SystemExit(f'minigrid_sim_node: render_env {self.render_env} is not in 0..{num_envs - 1}')

        self.step_pub = self.create_publisher(StepBatch, 'step_batch', BATCH_QOS_DEPTH)
        self.perception_pub = self.create_publisher(PerceptionBatch, 'perception_batch', BATCH_QOS_DEPTH)
        self.image_pub = self.create_publisher(Image, 'image', 1)
        self.create_subscription(ActionBatch, 'action_batch', self.on_actions, BATCH_QOS_DEPTH)
        self.create_service(ResetEnvs, 'reset_envs', self.on_reset)
        if render_hz > 0:
            self.create_timer(1.0 / render_hz, self.publish_image)
        self.create_timer(republish_s, self.republish_if_unanswered)
        self.seq = -1
        self.rejected = 0
        self._answered = False
        self.last_perceptions = None
        self.publish_step(functools.partial(self.envs.reset, self.seed))
        self.get_logger().info(f'{num_envs} x {task} ({self.observation}), {self.envs.num_actions} actions')

    def publish_step(self, advance) -> None:
        """Step or reset the envs (`advance()`) and publish the step batch, then the perceptions."""
        perceive = self.envs.perceive = self.perception_pub.get_subscription_count() > 0
        step = advance()
        self.seq += 1
        self._answered = False
        self.last_batch = step_batch_msg(step, self.seq, self.get_clock().now().to_msg(), self.observation,
                                         self.envs.num_actions)
        self.step_pub.publish(self.last_batch)
        self.last_perceptions = None
        if perceive:
            self.last_perceptions = perception_batch_msg(step.perceptions, self.seq, self.last_batch.header.stamp)
            self.perception_pub.publish(self.last_perceptions)

    def on_actions(self, batch: ActionBatch) -> None:
        if batch.seq == self.seq - 1:
            return  # a repeated answer to the batch just stepped (after our own resend): harmless
        error = self.check_actions(batch)
        if error:
            self.rejected += 1
            self.get_logger().error(f'rejected action batch: {error}', throttle_duration_sec=1.0)
            return
        self._answered = True
        self.publish_step(functools.partial(self.envs.step, np.asarray(batch.actions)))

    def check_actions(self, batch: ActionBatch) -> str | None:
        """Why `batch` must not be stepped, or None when it is good."""
        if batch.seq != self.seq:
            return f'seq {batch.seq} does not answer the current step batch {self.seq} (stale or from the future)'
        if len(batch.actions) != self.envs.num_envs:
            return f'{len(batch.actions)} actions for {self.envs.num_envs} environments'
        bad = [a for a in batch.actions if not 0 <= a < self.envs.num_actions]
        if bad:
            return f'actions {bad[:5]} out of range 0..{self.envs.num_actions - 1}'
        return None

    def on_reset(self, request: ResetEnvs.Request, response: ResetEnvs.Response) -> ResetEnvs.Response:
        self.publish_step(functools.partial(self.envs.reset, request.seed if request.seed >= 0 else None))
        response.success, response.seq = True, self.seq
        response.message = f'reset {self.envs.num_envs} environments'
        return response

    def republish_if_unanswered(self) -> None:
        # A subscriber that joined after the last step batch would otherwise wait forever.
        if not self._answered:
            self.step_pub.publish(self.last_batch)
            if self.last_perceptions is not None:
                self.perception_pub.publish(self.last_perceptions)

    def publish_image(self) -> None:
        frame = self.envs.render(self.render_env)
        self.image_pub.publish(rgb_image_msg(frame, self.get_clock().now().to_msg(), f'env_{self.render_env}'))


def main(args=None):
    spin(MiniGridSimNode, args)


if __name__ == '__main__':
    main()
