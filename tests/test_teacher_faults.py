"""Faults the teacher package survives (issue 33): malformed step batches, a slow, redirecting or
flooding LLM server, SQLite errors, a full disk under the recorder, and action batches that would
draw markers without bound. Each against the real thing: nodes as processes, an HTTP server on
localhost, a file size limit (RLIMIT_FSIZE) for the full disk."""
import http.server
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from llm_teacher_msgs.msg import ActionBatch, PerceptionBatch, StepBatch, SuggestionBatch
from ros_helpers import spin_until
from sensor_msgs.msg import Image
from visualization_msgs.msg import MarkerArray

from llm_teacher_common.commands import NUM_EMBODIED_ACTIONS
from llm_teacher_common.messages import perception_batch_msg, step_batch_msg
from llm_teacher_common.perception import FREE, OccupancyGrid, PerceivedObject, Perception
from llm_teacher_common.steps import VecStep
from habitat_bridge.minigrid.vector import make_env
from llm_teacher.backends import MAX_REPLY_BYTES, LLMError, OpenAIBackend
from llm_teacher.cache import AnswerCache
from llm_teacher_common.launch_runner import executable_path
from llm_teacher.mediator import Mediator
from llm_teacher.options import feasible_options
from llm_teacher.planner import Planner
from llm_teacher.report import read_recording
from llm_teacher.teacher import Teacher

KEY = PerceivedObject('key', 'yellow', grid_x=2, grid_y=2)
DOOR = PerceivedObject('door', 'yellow', 'locked', grid_x=5, grid_y=0)
REPLY = json.dumps({'choices': [{'message': {'content': 'explore'}}]}).encode()


class Server(http.server.ThreadingHTTPServer):
    """An LLM server on localhost whose every answer is `handle(handler)`; it notes the requests."""
    daemon_threads = True

    def __init__(self, handle):
        self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.server.requests.append((self.path, dict(self.headers)))
                # read the request body first, as a real server does: closing with it unread makes
                # the kernel reset the connection, and the client may lose the reply to that reset
                self.rfile.read(int(self.headers.get('Content-Length', 0)))
                handle(self)

            def log_message(self, *args):
                pass
        super().__init__(('127.0.0.1', 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f'http://127.0.0.1:{self.server_address[1]}'


def drip(handler):
    """A status line, then one byte every 0.1 s, for ever (until the client hangs up)."""
    handler.wfile.write(b'HTTP/1.1 200 OK\r\n')
    try:
        while True:
            handler.wfile.write(b'X')
            handler.wfile.flush()
            time.sleep(0.1)
    except OSError:
        pass


@pytest.fixture
def server():
    servers = []

    def start(handle):
        servers.append(Server(handle))
        return servers[-1]
    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def finishes(call, within: float):
    """Run `call` in a thread; (True, its result or exception) if it ended within `within` s."""
    outcome = []

    def run():
        try:
            outcome.append(call())
        except Exception as err:  # noqa: BLE001 - handed to the test
            outcome.append(err)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within)
    return (not thread.is_alive()), (outcome[0] if outcome else None)


def test_a_dripping_server_ends_at_the_deadline(server):
    slow = server(drip)
    backend = OpenAIBackend(slow.url, 'm', timeout_s=1.0, retries=0)
    start = time.monotonic()
    done, error = finishes(lambda: backend.generate('hello', 1, 0.0, 4), within=20)
    assert done, 'the request outlived its deadline'
    assert isinstance(error, LLMError) and 'no complete reply within 1.0 s' in str(error)
    assert time.monotonic() - start < 5


def test_close_aborts_a_request_in_flight(server):
    slow = server(drip)
    backend = OpenAIBackend(slow.url, 'm', timeout_s=60, retries=2)
    thread = threading.Thread(target=lambda: pytest.raises(LLMError, backend.generate, 'hello', 1, 0.0, 4), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not slow.requests:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    backend.close()
    thread.join(5)
    assert not thread.is_alive(), 'close() did not end the request'


def test_a_redirect_is_not_followed_and_the_key_stays_home(server):
    elsewhere = server(lambda h: (h.send_response(200), h.end_headers(), h.wfile.write(REPLY)))
    other_host = elsewhere.url.replace('127.0.0.1', 'localhost')

    def redirect(handler):
        handler.send_response(302)
        handler.send_header('Location', other_host + handler.path)
        handler.end_headers()
    home = server(redirect)
    backend = OpenAIBackend(home.url, 'm', api_key='secret', timeout_s=10)
    with pytest.raises(LLMError, match='redirect .* not followed'):
        backend.generate('hello', 1, 0.0, 4)
    assert home.requests[0][1]['Authorization'] == 'Bearer secret' and not elsewhere.requests
    assert len(home.requests) == 1  # not retried


def test_a_reply_is_read_up_to_a_size_limit(server):
    def flood(handler):
        handler.send_response(200)
        handler.end_headers()
        handler.wfile.write(b'[' + b'0,' * MAX_REPLY_BYTES + b'0]')
    backend = OpenAIBackend(server(flood).url, 'm', timeout_s=10, retries=0)
    with pytest.raises(LLMError, match=f'larger than {MAX_REPLY_BYTES} bytes'):
        backend.generate('hello', 1, 0.0, 4)


class ScoreByLength:
    name = 'test:score-by-length'

    def score(self, prompt, continuations):
        return [-len(c) / 10 for c in continuations]

    def close(self):
        pass


def test_an_sqlite_error_is_logged_and_the_teacher_goes_on(tmp_path):
    """Another program renames the cache's table under the running teacher: reading and storing
    fail (SQLite errors), each is logged, and the teacher answers from what it holds."""
    path, logged = tmp_path / 'c.sqlite', []
    teacher = Teacher(Planner(ScoreByLength()), AnswerCache(path), Mediator.from_file(), log_error=logged.append)
    obs, _ = make_env('MiniGrid-SimpleDoorKey-v0').reset(seed=1)
    with sqlite3.connect(path) as other_program:
        other_program.execute('ALTER TABLE answers RENAME TO old_answers')
    perception = Perception('m', objects=[KEY, DOOR])
    assert not teacher.suggest(perception, obs).valid and teacher.wait_idle(10)
    assert 'reading failed (OperationalError: no such table' in logged[0]
    assert 'storing an answer failed' in logged[-1] and 'kept in memory' in logged[-1]
    assert teacher.suggest(perception, obs).valid
    teacher.close()


FULL_DISK_CHILD = textwrap.dedent('''
    import resource, signal, sys
    from test_teacher_faults import DOOR, KEY, AnswerCache, Mediator, Perception, Planner, ScoreByLength, Teacher, make_env

    teacher = Teacher(Planner(ScoreByLength()), AnswerCache(sys.argv[1]), Mediator.from_file(),
                      log_error=lambda text: print('LOG', text, flush=True))
    obs, _ = make_env('MiniGrid-SimpleDoorKey-v0').reset(seed=1)
    for i in range(40):
        if i == 20:  # the disk is full from here on: no file of this process may grow
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
        perception = Perception(f'mission {i}', objects=[KEY, DOOR])
        teacher.suggest(perception, obs)
        teacher.wait_idle(10)
        print('VALID', i, teacher.suggest(perception, obs).valid, flush=True)
    teacher.close()
''')


def test_a_full_disk_under_the_cache_is_logged_and_loses_nothing_stored(tmp_path):
    path = tmp_path / 'answers.sqlite'
    child = subprocess.run([sys.executable, '-c', FULL_DISK_CHILD, str(path)], capture_output=True, text=True,
                           timeout=120, cwd=os.path.dirname(__file__))
    assert child.returncode == 0, child.stdout + child.stderr
    assert child.stdout.count('True') == 40  # every state answered, stored or not
    assert 'storing an answer failed (OperationalError' in child.stdout, child.stdout
    cache, mediator = AnswerCache(path), Mediator.from_file()
    stored = [i for i in range(40) if cache.get(ScoreByLength.name, 'score', mediator.prompt(
        p := Perception(f'mission {i}', objects=[KEY, DOOR]), feasible_options(p))) is not None]
    assert stored[:20] == list(range(20))  # what was stored before the disk filled is all there


# --- the teacher node ---------------------------------------------------------------------

def start_node(package, executable, tmp_path, parameters=(), preexec_fn=None, env=None):
    """A node process whose output is collected (line by line, in a list) as it comes."""
    args = [a for key, value in parameters for a in ('-p', f'{key}:={value}')]
    process = subprocess.Popen([executable_path(package, executable), '--ros-args', *args], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               preexec_fn=preexec_fn, env=env)
    process.lines = []
    threading.Thread(target=lambda: process.lines.extend(process.stdout), daemon=True).start()
    return process


def stop_node(process, within: float = 20) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=within)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def embodied(resolution: float) -> Perception:
    cells = np.full((64, 64), FREE, np.int8)
    return Perception('go to the red box', objects=[PerceivedObject('box', 'red', forward=3.0, left=1.0)], x=8.0,
                      y=8.0, heading=0.5, task_family='embodied', occupancy=OccupancyGrid(cells, (0.0, 0.0), resolution))


def batch(seq, perception, obs):
    step = VecStep(obs[None], np.zeros(1, np.float32), np.zeros(1, bool), np.zeros(1, bool), np.zeros(1, bool),
                   np.zeros(1, np.int64), [perception], [perception.mission])
    stamp = Time(sec=1)
    num_actions = NUM_EMBODIED_ACTIONS if perception.task_family == 'embodied' else 7  # MiniGrid's 7
    return step_batch_msg(step, seq, stamp, 'memory_map', num_actions), perception_batch_msg([perception], seq, stamp)


def test_the_teacher_node_refuses_what_it_cannot_plan_on_and_answers_the_next_batch(tmp_path, ros_node):
    """theta=inf (OverflowError in the conversion), a map resolution of 0 (ZeroDivisionError in the
    skills) and of 1e-9 (a clearance of ~4.5e8 dilations: a stall): each batch is refused with a
    log line, and the good batch after them is answered, from the cache, within seconds."""
    cache, source = tmp_path / 'answers.sqlite', 'openai:nobody'
    good = embodied(0.25)
    options = feasible_options(good)
    AnswerCache(cache).put(source, 'sample', Mediator.from_file().prompt(good, options),
                           {o.text: 1 / len(options) for o in options})
    grid_obs, _ = make_env('MiniGrid-SimpleDoorKey-v0').reset(seed=1)
    camera_obs = np.zeros((8, 8, 3), np.uint8)
    bad = [batch(1, Perception('m', objects=[KEY, DOOR], heading=float('inf')), grid_obs),
           batch(2, embodied(0.0), camera_obs), batch(3, embodied(1e-9), camera_obs),
           batch(4, embodied(float('nan')), camera_obs)]
    suggestions = []
    ros_node.create_subscription(SuggestionBatch, 'suggestion_batch', suggestions.append, 10)
    steps = ros_node.create_publisher(StepBatch, 'step_batch', 10)
    perceptions = ros_node.create_publisher(PerceptionBatch, 'perception_batch', 10)
    node = start_node('llm_teacher', 'teacher_node', tmp_path, [
        ('backend', 'openai'), ('model', 'nobody'), ('base_url', 'http://127.0.0.1:9'), ('planner_mode', 'sample'),
        ('cache_path', cache)])
    try:
        spin_until(ros_node, lambda: steps.get_subscription_count() and perceptions.get_subscription_count()
                   or node.poll() is not None, 60, 'teacher_node subscriptions')
        for step_msg, perception_msg in bad + [batch(5, good, camera_obs)]:
            steps.publish(step_msg)
            perceptions.publish(perception_msg)
        spin_until(ros_node, lambda: suggestions or node.poll() is not None, 30, 'the good batch answered')
        assert node.poll() is None, ''.join(node.lines)
        assert [b.seq for b in suggestions] == [5] and suggestions[0].valid[0]
        assert 'step batch 1 not answered' in ''.join(node.lines)  # the next ones within 5 s: throttled
    finally:
        assert stop_node(node) == 0, ''.join(node.lines)


def test_ctrl_c_ends_a_teacher_node_waiting_on_a_dripping_server(tmp_path, ros_node, server):
    slow = server(drip)
    steps = ros_node.create_publisher(StepBatch, 'step_batch', 10)
    perceptions = ros_node.create_publisher(PerceptionBatch, 'perception_batch', 10)
    node = start_node('llm_teacher', 'teacher_node', tmp_path, [
        ('backend', 'openai'), ('model', 'm'), ('base_url', slow.url), ('planner_mode', 'sample'), ('timeout_s', 300.0),
        ('cache_path', tmp_path / 'answers.sqlite')])
    try:
        spin_until(ros_node, lambda: steps.get_subscription_count() and perceptions.get_subscription_count()
                   or node.poll() is not None, 60, 'teacher_node subscriptions')
        obs, _ = make_env('MiniGrid-SimpleDoorKey-v0').reset(seed=1)
        for seq in range(1, 100):  # until the teacher asks the server (a lost batch is sent again)
            for message, publisher in zip(batch(seq, Perception('m', objects=[KEY]), obs), (steps, perceptions)):
                publisher.publish(message)
            try:
                spin_until(ros_node, lambda: slow.requests, 0.2, 'a request')
                break
            except TimeoutError:
                continue
        assert slow.requests, ''.join(node.lines)
        start = time.monotonic()
        assert stop_node(node, within=15) == 0, ''.join(node.lines)
        assert time.monotonic() - start < 15
    finally:
        stop_node(node)


# --- the recorder and visualization nodes ---------------------------------------------------

def full_disk_after(limit: int):
    """In the child: every file it writes may grow to `limit` bytes, then writes fail (EFBIG, as
    ENOSPC on a full disk), and SIGXFSZ does not end it."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_stops_the_recording_not_the_recorder(tmp_path, ros_node):
    """Images of 300 kB into a recorder whose files may not grow past 2.5 MB: the write that fails
    is logged, the node goes on (and stops cleanly), and the recording reads back up to its last
    complete chunk (MCAP chunks are ~1 MB)."""
    env = dict(os.environ, FASTDDS_BUILTIN_TRANSPORTS='UDPv4')  # no shared-memory files, which the limit would hit
    node = start_node('llm_teacher', 'recorder_node', tmp_path, [('run_dir', tmp_path)],
                      preexec_fn=full_disk_after(2_500_000), env=env)
    images = ros_node.create_publisher(Image, 'image', 10)
    try:
        spin_until(ros_node, lambda: images.get_subscription_count() or node.poll() is not None, 60, 'recorder')
        for i in range(40):
            images.publish(Image(height=100, width=1000, encoding='rgb8', step=3000, data=bytes([i]) * 300_000))
            time.sleep(0.05)  # paced, so that the reliable topic's history of 10 drops none
            if any('recording stopped' in line for line in node.lines):
                break
        deadline = time.monotonic() + 30
        while not any('recording stopped' in line for line in node.lines):
            assert node.poll() is None and time.monotonic() < deadline, ''.join(node.lines)
            time.sleep(0.05)
        images.publish(Image(height=1, width=1, encoding='rgb8', step=3, data=bytes(3)))
        time.sleep(0.5)
        assert node.poll() is None, ''.join(node.lines)
    finally:
        assert stop_node(node) == 0, ''.join(node.lines)
    recorded = read_recording(tmp_path)['/image']
    numbers = [m.data[0] for _, m in recorded]
    assert len(numbers) >= 4 and numbers == sorted(numbers) and numbers[-1] < 40
    assert any('messages kept' in line for line in node.lines), ''.join(node.lines)


def test_markers_per_action_batch_are_bounded(tmp_path, ros_node):
    """An action batch whose probabilities do not fit the task's 7 actions is not drawn (it would
    be two markers per number); the next good one is."""
    arrays = []
    ros_node.create_subscription(MarkerArray, 'teacher_markers', arrays.append, 10)
    actions = ros_node.create_publisher(ActionBatch, 'action_batch', 10)
    node = start_node('llm_teacher', 'visualization_node', tmp_path, [('foxglove_port', -1)])
    try:
        spin_until(ros_node, lambda: actions.get_subscription_count() or node.poll() is not None, 60, 'subscription')
        actions.publish(ActionBatch(seq=1, actions=[0], action_probs=[0.001] * 10_000))
        actions.publish(ActionBatch(seq=2, actions=[0], action_probs=[1 / 7] * 7))
        spin_until(ros_node, lambda: arrays or node.poll() is not None, 30, 'markers')
        assert node.poll() is None, ''.join(node.lines)
        assert [len(a.markers) for a in arrays] == [14]
    finally:
        assert stop_node(node) == 0, ''.join(node.lines)


def test_markers_are_redrawn_at_most_max_rate_hz(tmp_path, ros_node):
    """Action batches come at hundreds a second: the bars are redrawn at most max_rate_hz a second
    (here once in 100 s: 20 batches, one drawing); a negative rate stops the node at start-up."""
    arrays = []
    ros_node.create_subscription(MarkerArray, 'teacher_markers', arrays.append, 10)
    actions = ros_node.create_publisher(ActionBatch, 'action_batch', 10)
    node = start_node('llm_teacher', 'visualization_node', tmp_path, [('foxglove_port', -1), ('max_rate_hz', 0.01)])
    try:
        spin_until(ros_node, lambda: actions.get_subscription_count() or node.poll() is not None, 60, 'subscription')
        for seq in range(20):
            actions.publish(ActionBatch(seq=seq, actions=[0], action_probs=[1 / 7] * 7))
            time.sleep(0.01)
        spin_until(ros_node, lambda: arrays or node.poll() is not None, 30, 'markers')
        with pytest.raises(TimeoutError):
            spin_until(ros_node, lambda: len(arrays) > 1 or node.poll() is not None, 2, 'a second drawing')
        assert node.poll() is None, ''.join(node.lines)
    finally:
        assert stop_node(node) == 0, ''.join(node.lines)
    bad = start_node('llm_teacher', 'visualization_node', tmp_path, [('foxglove_port', -1), ('max_rate_hz', -1.0)])
    assert bad.wait(timeout=60) != 0
    time.sleep(0.2)  # the last output lines
    assert 'max_rate_hz must be >= 0, got -1.0' in ''.join(bad.lines)


def test_a_recording_cut_by_a_kill_reads_back_up_to_its_last_chunk(tmp_path):
    """A recorder killed with SIGKILL writes no summary: the report still reads what reached disk."""
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    bag = tmp_path / 'run' / 'recordings' / 'cut'
    writer = Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    connection = writer.add_connection('/image', 'sensor_msgs/msg/Image', typestore=get_typestore(Stores.ROS2_JAZZY))
    frame = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8).tobytes()  # ~200 kB each
    for i in range(40):  # several chunks
        message = Image(height=256, width=256, encoding='rgb8', step=768, data=frame)
        message.header.stamp.sec = i
        writer.write(connection, i, serialize_message(message))
    writer.close()
    whole = next(bag.glob('*.mcap'))
    assert len(read_recording(tmp_path / 'run')['/image']) == 40
    whole.write_bytes(whole.read_bytes()[:int(whole.stat().st_size * 0.7)])  # the kill: no end, half a chunk
    images = read_recording(tmp_path / 'run')['/image']
    assert 0 < len(images) < 40 and [m.header.stamp.sec for _, m in images] == list(range(len(images)))
