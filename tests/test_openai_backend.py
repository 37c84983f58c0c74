"""The OpenAI-compatible backend against a real server on localhost (`transformers serve` with the
embedded model), and what the teacher does when the server dies."""
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from llm_teacher_msgs.msg import PerceptionBatch, StepBatch, SuggestionBatch, TeacherStatus
from ros_helpers import spin_until

from llm_teacher_common.messages import perception_batch_msg, step_batch_msg
from llm_teacher_common.perception import PerceivedObject, Perception
from habitat_bridge.minigrid.vector import MiniGridVecEnv
from llm_teacher.backends import LLMError, OpenAIBackend, embedded_model_dir
from llm_teacher.cache import AnswerCache
from llm_teacher_common.launch_runner import LaunchRunner, NodeSpec
from llm_teacher.mediator import Mediator
from llm_teacher.options import feasible_options
from llm_teacher.planner import Planner
from llm_teacher.teacher import Teacher

PERCEPTION = Perception('open the locked door', objects=[PerceivedObject('key', 'yellow', grid_x=2, grid_y=2),
                                                         PerceivedObject('door', 'yellow', 'locked', grid_x=5, grid_y=0)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def server():
    model = embedded_model_dir()
    port = free_port()
    command = [str(Path(sys.executable).parent / 'transformers'), 'serve', '--host', '127.0.0.1', '--port', str(port), str(model)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f'http://127.0.0.1:{port}'
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url + '/health', timeout=2).read()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f'transformers serve did not come up on {url}:\n{process.stdout.read()}')
            time.sleep(1)
    yield url, str(model), process
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=20)


def test_sampling_through_a_real_server(server):
    url, model, _ = server
    backend = OpenAIBackend(url, model, timeout_s=120)
    answers = backend.generate('Say the word explore.', n=3, temperature=1.0, max_tokens=8)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    options = feasible_options(PERCEPTION)
    result = Planner(backend, 'sample', samples=3).plan(Mediator.from_file().prompt(PERCEPTION, options), options)
    assert set(result.distribution) <= {o.text for o in options}
    assert len(result.rejected_answers) <= 3


def test_scoring_is_refused_with_what_to_do_instead(server):
    url, model, _ = server
    with pytest.raises(LLMError, match='use planner_mode sample'):
        OpenAIBackend(url, model).score('prompt', ['explore'])


def test_a_dead_server_gives_a_clear_error_after_retries():
    backend = OpenAIBackend(f'http://127.0.0.1:{free_port()}', 'm', timeout_s=2, retries=1)
    with pytest.raises(LLMError, match=r'did not answer after 2 tries: ConnectionRefusedError'):
        backend.generate('hello', 1, 0.0, 4)


def test_teacher_node_survives_a_dead_server_and_reports_errors(tmp_path, ros_node):
    spec = NodeSpec('llm_teacher', 'teacher_node', 'teacher_node', parameters=[{
        'backend': 'openai', 'model': 'nobody', 'base_url': f'http://127.0.0.1:{free_port()}', 'timeout_s': 1.0,
        'planner_mode': 'sample', 'samples': 2, 'cache_path': str(tmp_path / 'answers.sqlite')}])
    suggestions, statuses = [], []
    ros_node.create_subscription(SuggestionBatch, 'suggestion_batch', suggestions.append, 10)
    ros_node.create_subscription(TeacherStatus, 'teacher_status', statuses.append, 10)
    publisher = ros_node.create_publisher(StepBatch, 'step_batch', 10)
    perception_publisher = ros_node.create_publisher(PerceptionBatch, 'perception_batch', 10)
    envs = MiniGridVecEnv('MiniGrid-SimpleDoorKey-v0', 2)
    step = envs.reset(seed=0)
    logs = []
    with LaunchRunner([spec], log=logs.append) as runner:
        for seq in range(200):
            stamp = ros_node.get_clock().now().to_msg()
            publisher.publish(step_batch_msg(step, seq, stamp, 'memory_map', 7))
            perception_publisher.publish(perception_batch_msg(step.perceptions, seq, stamp))
            step = envs.step(np.zeros(2, int))
            try:
                spin_until(ros_node, lambda: statuses and statuses[-1].llm_errors > 0, 0.2, 'an LLM error')
                break
            except TimeoutError:
                continue
        spin_until(ros_node, lambda: suggestions, 10, 'suggestion_batch from teacher_node')
        assert runner.processes['teacher_node'].poll() is None, '\n'.join(logs)
    assert statuses[-1].llm_errors > 0 and statuses[-1].llm_calls == 0
    assert not any(s.valid for batch in suggestions for s in batch.suggestions)
    assert any('did not answer' in line and 'Possible actions' in '\n'.join(logs) for line in logs)


def test_when_the_server_dies_new_prompts_count_logged_errors(server, tmp_path):
    """Runs last in this module: it kills the module's server."""
    url, model, process = server
    errors = []
    teacher = Teacher(Planner(OpenAIBackend(url, model, timeout_s=120, retries=0), 'sample', samples=2),
                      AnswerCache(tmp_path / 'answers.sqlite'), Mediator.from_file(), log_error=errors.append)
    envs = MiniGridVecEnv('MiniGrid-SimpleDoorKey-v0', 1)
    obs = envs.reset(seed=0).observations[0]
    seen = Perception('open the locked door', objects=PERCEPTION.objects)
    teacher.suggest(seen, obs)
    assert teacher.wait_idle(300) and teacher.counters.llm_calls == 1
    process.terminate()
    process.wait(timeout=20)
    door_only = Perception('open the locked door', objects=PERCEPTION.objects[1:])
    assert not teacher.suggest(door_only, obs).valid  # a new prompt: asked, and the dead server fails
    assert teacher.wait_idle(60) and teacher.counters.llm_errors == 1 and 'did not answer' in errors[-1]
    assert 'Possible actions' in errors[-1]  # the error names the prompt
    teacher.close()
