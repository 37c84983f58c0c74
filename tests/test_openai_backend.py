"""The OpenAI-compatible backend against real servers on localhost serving the embedded model:
`transformers serve` (sampling; it sends no prompt log-probabilities) and llama-cpp-python's server
(exact scoring, checked against the local backend), and what the teacher does when a server dies."""
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from llm_teacher_msgs.msg import PerceptionBatch, StepBatch, SuggestionBatch, TeacherStatus
from ros_helpers import spin_until

from llm_teacher_common.messages import perception_batch_msg, step_batch_msg, suggestions_from_msg
from llm_teacher_common.perception import PerceivedObject, Perception
from habitat_bridge.minigrid.vector import MiniGridVecEnv
from llm_teacher.backends import (LLMError, OpenAIBackend, TransformersBackend, embedded_gguf_f32,
                                  embedded_model_dir)
from llm_teacher.cache import AnswerCache
from llm_teacher_common.launch_runner import LaunchRunner, NodeSpec
from llm_teacher.mediator import Mediator
from llm_teacher.options import feasible_options
from llm_teacher.planner import Planner
from llm_teacher.teacher import Teacher

# Two keys and no door: the teacher has a choice to ask the LLM about (a single feasible option is
# not asked), here and with the yellow key in hand or out of sight.
PERCEPTION = Perception('open the locked door', objects=[PerceivedObject('key', 'yellow', grid_x=2, grid_y=2),
                                                         PerceivedObject('key', 'red', grid_x=5, grid_y=1)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f'{what} did not come up on {url}:\n{process.communicate()[0]}')
            time.sleep(1)


@pytest.fixture(scope='module')
def server():
    model = embedded_model_dir()
    port = free_port()
    command = [str(Path(sys.executable).parent / 'transformers'), 'serve', '--host', '127.0.0.1', '--port', str(port), str(model)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f'http://127.0.0.1:{port}'
    wait_for(url + '/health', process, 'transformers serve')
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


@pytest.fixture(scope='module')
def scoring_server():
    """llama-cpp-python's server (it echoes prompt log-probabilities) on the embedded model's weights
    in F32, with an F32 KV cache (its default F16 cache alone moves log p by ~3e-3), serving it as
    'embedded' so that OpenAIBackend finds the same tokenizer as the local backend."""
    port = free_port()
    command = [sys.executable, '-m', 'llama_cpp.server', '--model', str(embedded_gguf_f32()), '--model_alias',
               'embedded', '--type_k', '0', '--type_v', '0', '--host', '127.0.0.1', '--port', str(port),
               '--verbose', 'false']
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f'http://127.0.0.1:{port}'
    wait_for(url + '/v1/models', process, 'llama-cpp-python server')
    yield url
    process.terminate()
    process.wait(timeout=20)


@pytest.mark.slow  # ~1 min on a quiet machine: llama-cpp-python sorts the vocabulary at each echoed token
def test_exact_scoring_over_http_gives_the_local_backends_distribution(scoring_server):
    """planner_mode score through the server: the same distribution as the local backend's."""
    local = TransformersBackend('embedded')
    remote = OpenAIBackend(scoring_server, 'embedded', timeout_s=300)
    mediator = Mediator.from_file()
    carrying = Perception('open the locked door', objects=PERCEPTION.objects[1:], carrying=PERCEPTION.objects[0])
    for perception in (PERCEPTION, carrying):
        options = feasible_options(perception)
        prompt = mediator.prompt(perception, options)
        here = Planner(local, 'score').plan(prompt, options).distribution
        served = Planner(remote, 'score').plan(prompt, options).distribution
        assert served.keys() == here.keys()
        assert max(abs(served[o] - here[o]) for o in here) < 1e-3, (here, served)


def test_a_server_without_prompt_logprobs_is_told_to_sample(server):
    url, model, _ = server
    with pytest.raises(LLMError, match='sent no log-probabilities of the prompt.*use planner_mode sample'):
        OpenAIBackend(url, model, timeout_s=120).score('Say the word explore.', ['explore', 'go to the key'])


class EchoJoinedHandler(http.server.BaseHTTPRequestHandler):
    """Echoes the prompt as two tokens, the second spanning the prompt's end and the option."""

    def do_POST(self):
        prompt = json.loads(self.rfile.read(int(self.headers['Content-Length'])))['prompt']
        body = json.dumps({'choices': [{'text': prompt, 'logprobs': {
            'tokens': [prompt[:-25], prompt[-25:]], 'token_logprobs': [None, -1.0]}}],
            'usage': {'completion_tokens': 0}}).encode()
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_an_option_not_tokenised_apart_from_the_prompt_is_not_scored():
    stub = http.server.ThreadingHTTPServer(('127.0.0.1', 0), EchoJoinedHandler)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        with pytest.raises(LLMError, match="do not end in 'explore' but in .*a token spans the prompt and the option"):
            OpenAIBackend(f'http://127.0.0.1:{stub.server_address[1]}', 'embedded').score('prompt', ['explore'])
    finally:
        stub.shutdown()


def test_scoring_needs_the_served_models_tokenizer():
    with pytest.raises(LLMError, match="names no model directory here.*use planner_mode sample"):
        OpenAIBackend(f'http://127.0.0.1:{free_port()}', 'qwen2.5-7b').score('prompt', ['explore'])


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
    for batch in suggestions:  # one option: not asked
        read = suggestions_from_msg(batch)
        assert not (read.valid & (np.bincount(read.option_env, minlength=len(read.valid)) > 1)).any()
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
    red_key_only = Perception('open the locked door', objects=PERCEPTION.objects[1:])
    assert not teacher.suggest(red_key_only, obs).valid  # a new prompt: asked, and the dead server fails
    assert teacher.wait_idle(60) and teacher.counters.llm_errors == 1 and 'did not answer' in errors[-1]
    assert 'Possible actions' in errors[-1]  # the error names the prompt
    teacher.close()
