"""student_node: trains a PPO student online from the simulator's step batches, distilling the teacher.

Subscribes to `step_batch` and `suggestion_batch` (matched by seq), publishes `action_batch`
and `training_status`, writes checkpoints, TensorBoard logs and the exported policy to run_dir,
and exits when total_frames are done.

It never waits for the teacher: it acts on each step batch at once, and a suggestion attaches to
the stored sample of its seq whenever it arrives before that rollout's update. So the teacher
works in parallel (on another core or machine) and a slow one only lowers coverage.

    ros2 run student_policy student_node --ros-args -p run_dir:=runs/demo -p total_frames:=200000
"""
from __future__ import annotations

import array
import functools

import numpy as np
from llm_teacher_msgs.msg import ActionBatch, StepBatch, SuggestionBatch, TeacherStatus, TrainingStatus
from rclpy.node import Node

from llm_teacher_common.lockstep import suggestion_arrays
from llm_teacher_common.messages import observations_from_msg, suggestions_from_msg
from llm_teacher_common.node import parameter, spin
from student_policy.callbacks import (CheckpointCallback, EvalCallback, MetricsLogCallback, checkpoint_path,
                                     progress_line, run_callbacks)
from student_policy.checkpoints import CheckpointError, load_learner
from student_policy.lockstep import LockstepLearner, StepIn
from student_policy.networks import encoder_for
from student_policy.ppo import PPOConfig, PPOLearner, TeacherSchedule, warm_up_compile

QOS_DEPTH = 10
COMPILE_CHOICES = {'auto': None, 'true': True, 'false': False}


class StudentNode(Node):

    def __init__(self):
        super().__init__('student_node')
        p = functools.partial(parameter, self)
        self.run_dir = p('run_dir', 'runs/student', 'Directory for checkpoints, logs and the exported policy')
        self.resume = p('resume', True, 'Continue from run_dir/checkpoints/last.pt when it exists')
        checkpoint_every = p('checkpoint_every', 10, 'Save a checkpoint every this many PPO updates')
        task = p('task', 'MiniGrid-SimpleDoorKey-v0', "The simulator's task, for greedy evaluation on held-out seeds")
        eval_every = p('eval_every', 25, 'Evaluate greedily every this many updates (and at the end)')
        eval_episodes = p('eval_episodes', 150, 'Episodes per evaluation (150: a 95% interval of +-0.05 at 0.9)')
        test_episodes = p('test_episodes', 200, 'Unseen episodes on which the exported best policy is tested at the end')
        d, t = PPOConfig(), TeacherSchedule()  # the defaults' one home; config/student_node.yaml is tested equal
        try:
            self.config = PPOConfig(
                recurrent=p('recurrent', d.recurrent, "Units of the policy's GRU memory (0: a reactive policy)"),
                mission=p('mission', d.mission, 'The policy reads the mission text too (tasks whose mission changes '
                                                'between episodes, e.g. MiniWorld-GoToObject-v0)'),
                teacher_replay=p('teacher_replay', d.teacher_replay, 'Frames of teacher-labelled states the teacher '
                                 'term revisits (0: off)'),
                total_frames=p('total_frames', d.total_frames, 'Environment frames to train for'),
                num_steps=p('num_steps', d.num_steps, 'Lock-steps per rollout'),
                learning_rate=p('learning_rate', d.learning_rate, 'Adam learning rate'),
                anneal_lr=p('anneal_lr', d.anneal_lr, 'Decay the learning rate linearly to 0 at total_frames'),
                ent_coef=p('ent_coef', d.ent_coef, 'Entropy bonus'),
                update_epochs=p('update_epochs', d.update_epochs, 'PPO epochs per rollout'),
                minibatch_size=p('minibatch_size', d.minibatch_size, 'Samples per gradient step'),
                seed=p('seed', d.seed, 'Seed of torch and numpy'),
                device=p('device', d.device, 'Where the student learns: cpu, or cuda'),
                compile=COMPILE_CHOICES[p('compile', 'auto', 'torch.compile the encoder: auto (where it pays: budgets '
                                          'of 200k frames or more, 20k once the same student compiled on this machine; '
                                          'with a C++ compiler), true or false').lower()],
                teacher=TeacherSchedule(
                    initial=p('teacher_initial', t.initial, 'Teacher weight at frame 0 (0 with teacher_final 0: plain PPO)'),
                    final=p('teacher_final', t.final, 'Teacher weight floor'),
                    decay_frames=p('teacher_decay_frames', t.decay_frames, 'Frames of linear decay to the floor'),
                    off_frames=p('teacher_off_frames', t.off_frames, 'Frame from which the teacher term is off'),
                ),
            )
        except KeyError as err:
            raise SystemExit(f'student_node: compile must be one of {", ".join(COMPILE_CHOICES)}, got {err}') from err
        except ValueError as err:
            raise SystemExit(f'student_node: {err}') from err
        self.compile_warm_up = warm_up_compile(self.config)  # while the simulator starts
        self.evaluation = EvalCallback(self.run_dir, task, eval_every, eval_episodes, test_episodes, background=True)
        self.callbacks = [CheckpointCallback(self.run_dir, checkpoint_every, task), self.evaluation,
                          MetricsLogCallback(self.run_dir)]

        self.action_pub = self.create_publisher(ActionBatch, 'action_batch', QOS_DEPTH)
        self.status_pub = self.create_publisher(TrainingStatus, 'training_status', QOS_DEPTH)
        self.create_subscription(StepBatch, 'step_batch', self.on_step, QOS_DEPTH)
        self.create_subscription(SuggestionBatch, 'suggestion_batch', self.on_suggestions, QOS_DEPTH)
        self.teacher_status: TeacherStatus | None = None  # for the progress line
        self.create_subscription(TeacherStatus, 'teacher_status', lambda msg: setattr(self, 'teacher_status', msg), QOS_DEPTH)

        self.loop = LockstepLearner(self.make_learner, self.after_update,
                                    log=lambda text: self.get_logger().warning(text, throttle_duration_sec=1.0),
                                    task=task, reads_mission=self.config.mission)

    @property
    def done(self) -> bool:
        return self.loop.done

    def on_step(self, batch: StepBatch) -> None:
        try:
            step = StepIn(batch.seq, observations_from_msg(batch), np.asarray(batch.rewards, np.float32),
                          np.asarray(batch.terminated, bool), np.asarray(batch.truncated, bool),
                          np.asarray(batch.success, bool), batch.num_actions, batch.group, batch.num_groups,
                          batch.epoch, encoder_for(batch.obs_encoding), list(batch.missions))
        except ValueError as err:  # observation bytes that do not fill num_envs x obs_shape
            self.loop.counters.rejected_steps += 1
            self.get_logger().warning(f'step batch {batch.seq} refused: {err}', throttle_duration_sec=1.0)
            return
        for answer in self.loop.on_step(step):
            # array.array from the bytes: no Python list of N x A floats (16 -> 9 us a batch of 16 x 7)
            out = ActionBatch(seq=answer.seq, group=answer.group, epoch=answer.epoch,
                              actions=array.array('i', answer.actions.astype(np.int32).tobytes()),
                              action_probs=array.array('f', answer.probs.astype(np.float32).tobytes()))
            out.header.stamp = self.get_clock().now().to_msg()
            self.action_pub.publish(out)

    def on_suggestions(self, batch: SuggestionBatch) -> None:
        if self.loop.learner is None:
            return
        try:
            read = suggestions_from_msg(batch)
        except ValueError as err:
            self.loop.counters.rejected_suggestions += 1
            self.get_logger().warning(f'{err}: refused', throttle_duration_sec=5.0)
            return
        probs, mask, invalid = suggestion_arrays(read.action_probs, read.valid, self.loop.learner.num_actions)
        if invalid:
            self.loop.counters.invalid_suggestions += invalid
            self.get_logger().warning(f'{invalid} suggestion(s) of batch {batch.seq} from {batch.source!r} are not '
                                      f'distributions over the {self.loop.learner.num_actions} actions: ignored',
                                      throttle_duration_sec=5.0)
        self.loop.on_suggestions(batch.epoch, batch.seq, batch.group, probs, mask)

    def make_learner(self, obs_shape, num_envs: int, num_actions: int, encoder: str, num_groups: int) -> PPOLearner:
        self.config.encoder = encoder
        compiler_loaded = self.compile_warm_up is not None
        if compiler_loaded:
            self.compile_warm_up.join()
        path = checkpoint_path(self.run_dir)
        if self.resume and path.exists():
            try:
                learner = load_learner(path, obs_shape, num_envs, num_actions, config=self.config,
                                       num_groups=num_groups, compiler_loaded=compiler_loaded)
            except CheckpointError as err:
                raise SystemExit(f'student_node: {err}') from err
            self.get_logger().info(f'resumed from {path} at frame {learner.frames}, update {learner.updates}')
            return learner
        self.get_logger().info(f'new student for {num_envs} envs ({num_groups} group(s)) of observation '
                               f'{tuple(obs_shape)}')
        return PPOLearner(self.config, tuple(obs_shape), num_envs, num_actions, num_groups, compiler_loaded=compiler_loaded)

    def after_update(self, learner: PPOLearner, metrics: dict) -> bool:
        """Callbacks, status and the progress line after each update; False when training is over."""
        if self.teacher_status is not None:
            metrics.update({'teacher/llm_calls': self.teacher_status.llm_calls,
                            'teacher/cache_hits': self.teacher_status.cache_hits,
                            'teacher/mean_latency_ms': self.teacher_status.mean_latency_ms})
        keep_going = run_callbacks(self.callbacks, learner, metrics,
                                   log=lambda text: self.get_logger().error(text, throttle_duration_sec=10.0))
        self.status_pub.publish(self.status_msg(metrics))
        line = progress_line(learner, metrics)
        if self.teacher_status is not None:
            line += f' | LLM calls {self.teacher_status.llm_calls}, cache hits {self.teacher_status.cache_hits}'
        self.get_logger().info(line)
        if metrics['charts/frames'] >= self.config.total_frames or not keep_going:
            self.get_logger().info(f'training done at frame {metrics["charts/frames"]}: {self.evaluation.summary()}')
            return False
        return True

    def status_msg(self, metrics: dict) -> TrainingStatus:
        learner = self.loop.learner
        msg = TrainingStatus(
            frames=metrics['charts/frames'], updates=learner.updates, episodes=learner.episodes,
            fps=metrics['charts/SPS'], mean_return=metrics['charts/episodic_return'],
            success_rate=metrics['charts/success_rate'], teacher_weight=metrics['teacher/weight'],
            teacher_coverage=metrics['teacher/coverage'], policy_loss=metrics['losses/policy_loss'],
            value_loss=metrics['losses/value_loss'], entropy=metrics['losses/entropy'],
            distill_loss=metrics['losses/distill_loss'], sim_restarts=self.loop.counters.restarts,
            rejected_step_batches=self.loop.counters.rejected_steps,
            invalid_suggestions=self.loop.counters.invalid_suggestions, skipped_gradient_steps=learner.skipped_steps)
        msg.header.stamp = self.get_clock().now().to_msg()
        return msg


def main(args=None):
    spin(StudentNode, args)


if __name__ == '__main__':
    main()
