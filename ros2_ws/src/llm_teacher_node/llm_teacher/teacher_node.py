"""teacher_node: answers each step batch with a suggestion batch (same seq), never blocking the loop.

Subscribes to `step_batch` and `perception_batch` (paired by seq), publishes `suggestion_batch`
and, every second, `teacher_status`.

    ros2 run llm_teacher teacher_node --ros-args -p backend:=openai -p base_url:=http://localhost:8000 -p model:=qwen
"""
from __future__ import annotations

import functools

from llm_teacher_msgs.msg import PerceptionBatch, StepBatch, SuggestionBatch, TeacherStatus
from rclpy.node import Node

from llm_teacher_common.messages import observations_from_msg, perceptions_from_msg, suggestion_batch_msg
from llm_teacher_common.node import group_list, parameter, spin
from llm_teacher.backends import LLMError, default_cache_dir, make_backend
from llm_teacher.cache import AnswerCache
from llm_teacher.mediator import Mediator
from llm_teacher.planner import Planner
from llm_teacher.teacher import Teacher

QOS_DEPTH = 10


class TeacherNode(Node):

    def __init__(self):
        super().__init__('teacher_node')
        p = functools.partial(parameter, self)
        backend = p('backend', 'transformers', "'transformers' (local model) or 'openai' (any OpenAI-compatible server)")
        model = p('model', 'embedded', "transformers: a model directory or 'embedded'; openai: the served model name")
        base_url = p('base_url', 'http://127.0.0.1:8000', 'openai backend: server base URL')
        api_key_env = p('api_key_env', 'OPENAI_API_KEY', 'openai backend: environment variable holding the API key')
        timeout_s = p('timeout_s', 30.0, 'openai backend: seconds a request may take in all (connect, wait, read) before it is abandoned')
        tokenizer = p('tokenizer', '', "openai backend, planner_mode score: the served model's tokenizer (a model "
                      "directory or 'embedded'); '' the model name's")
        device = p('device', 'cpu', "transformers backend: 'cpu' or 'cuda'")
        mode = p('planner_mode', 'score', "'score' (option log-likelihoods, one batched pass) or 'sample' (K answers, the paper's)")
        samples = p('samples', 10, 'sample mode: answers per prompt')
        cache_path = p('cache_path', '', "Persistent answer cache (SQLite); '' the user's cache directory") or str(
            default_cache_dir() / 'answers.sqlite')
        prompt_file = p('prompt_file', '', 'Prompt template file; empty: the packaged one for the task family')
        groups = p('groups', '', "Env groups this teacher answers, e.g. '0' or '1,3' (several teachers share a run's "
                   "load); '' every group")
        avoid_lava = p('avoid_lava', True, "Grid skills never step into lava; false: the paper's lava-blind teacher")
        try:
            served = group_list(groups)  # the teacher does not know how many groups the sims have
            self.groups = set(served) if served is not None else None
            llm = make_backend(backend, model, device, base_url, api_key_env, timeout_s, tokenizer)
            self.teacher = Teacher(Planner(llm, mode, samples), AnswerCache(cache_path), Mediator.from_file(prompt_file or None),
                                   log_error=lambda text: self.get_logger().error(text, throttle_duration_sec=5.0),
                                   avoid_lava=avoid_lava)
        except (ValueError, LLMError) as err:
            raise SystemExit(f'teacher_node: {err}') from err
        self.suggestion_pub = self.create_publisher(SuggestionBatch, 'suggestion_batch', QOS_DEPTH)
        self.status_pub = self.create_publisher(TeacherStatus, 'teacher_status', QOS_DEPTH)
        # The sim publishes a step's observations and perceptions apart; each waits here for its pair.
        self.steps: dict[tuple[int, int], StepBatch] = {}  # by (epoch, seq)
        self.perceptions: dict[tuple[int, int], PerceptionBatch] = {}
        self.create_subscription(StepBatch, 'step_batch', lambda b: self.on_batch(b, self.steps, self.perceptions),
                                 QOS_DEPTH)
        self.create_subscription(PerceptionBatch, 'perception_batch',
                                 lambda b: self.on_batch(b, self.perceptions, self.steps), QOS_DEPTH)
        self.create_timer(1.0, self.publish_status)
        self.last_key = (0, -1)
        self.get_logger().info(f'teacher {self.teacher.source} ({mode}), cache {cache_path}')

    def on_batch(self, batch: StepBatch | PerceptionBatch, mine: dict, other: dict) -> None:
        if self.groups is not None and isinstance(batch, StepBatch) and batch.group not in self.groups:
            return  # another teacher's group (its perceptions age out of `perceptions` below)
        key = (batch.epoch, batch.seq)  # a restarted sim counts seq from 0 again, in a new epoch
        if key == self.last_key:
            return  # a resend of the batch just answered
        partner = other.pop(key, None)
        if partner is None:
            mine[key] = batch
            while len(mine) > QOS_DEPTH:  # its pair was lost (or the sim restarted its seq)
                mine.pop(next(iter(mine)))
            return
        self.last_key = key
        self.answer(*((batch, partner) if isinstance(batch, StepBatch) else (partner, batch)))

    def answer(self, step: StepBatch, perceptions: PerceptionBatch) -> None:
        try:
            observations = observations_from_msg(step)
            if len(step.missions) != len(observations):  # the perceptions' missions are the step batch's
                raise ValueError(f'{len(step.missions)} missions for {len(observations)} environments')
            perceived = perceptions_from_msg(perceptions, step.missions)
            suggestions = [self.teacher.suggest(perception, obs) for obs, perception in zip(observations, perceived)]
            out = suggestion_batch_msg(suggestions, step.seq, self.get_clock().now().to_msg(), step.num_actions,
                                       self.teacher.source, step.epoch, step.group)
        except Exception as err:  # noqa: BLE001
            # Teacher.suggest refuses what it cannot plan on in bounded time (ValueError); any other
            # fault of a malformed batch is caught too: nothing on the domain may end the teacher.
            self.get_logger().error(f'step batch {step.seq} not answered: {type(err).__name__}: {err}',
                                    throttle_duration_sec=5.0)
            return
        self.suggestion_pub.publish(out)

    def publish_status(self) -> None:
        c = self.teacher.counters
        status = TeacherStatus(source=self.teacher.source, requests=c.requests, cache_hits=c.cache_hits,
                               llm_calls=c.llm_calls, llm_errors=c.llm_errors,
                               parse_failures=c.parse_failures, pending=self.teacher.pending,
                               mean_latency_ms=c.mean_latency_ms)
        status.header.stamp = self.get_clock().now().to_msg()
        self.status_pub.publish(status)

    def destroy_node(self):
        self.teacher.close()
        super().destroy_node()


def main(args=None):
    spin(TeacherNode, args)


if __name__ == '__main__':
    main()
