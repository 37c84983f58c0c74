"""Waiting on ROS with deadlines (a timeout names what did not happen), the robot's policy node
as a robot runs it, and recordings made with an older layout of our messages."""
import subprocess
import sys
import time

import rclpy


def spin_until(node, predicate, timeout: float, what: str):
    """Spin `node` until `predicate()` is truthy; raise TimeoutError naming `what` after `timeout` s."""
    executor = rclpy.executors.SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    try:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f'no {what} within {timeout:.0f} s')
            executor.spin_once(timeout_sec=0.05)
        return predicate()
    finally:
        executor.remove_node(node)


BLOCKED = ('gymnasium', 'minigrid', 'miniworld', 'transformers', 'habitat_bridge', 'stable_baselines3')
# The robot node as a robot runs it: importing any of BLOCKED raises ImportError.
ROBOT_NODE = (f'import sys; sys.modules.update(dict.fromkeys({BLOCKED!r})); '
              'from student_deploy.robot_policy_node import main; main()')


def robot_node(path, *params, log=None) -> subprocess.Popen:
    """robot_policy_node serving the policy at `path` (control_rate_hz 20 unless a param says),
    with no simulator, LLM or training library importable; params are 'name:=value'."""
    args = ['--ros-args', '-p', f'policy_path:={path}', '-p', 'control_rate_hz:=20.0']
    for param in params:
        args += ['-p', param]
    return subprocess.Popen([sys.executable, '-c', ROBOT_NODE, *args], stdout=log or subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def old_layout_typestore(layout: dict[str, str]):
    """A rosbags typestore that knows llm_teacher_msgs in an older layout: {name: .msg text}."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    typestore = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for name, text in layout.items():
        types.update(get_types_from_msg(text, f'llm_teacher_msgs/msg/{name}'))
    typestore.register(types)
    return typestore


def write_recording(runs_dir, topic: str, msgtype: str, message, typestore, time_ns: int = 10) -> None:
    """One message as the recorder writes it (an MCAP under runs_dir/recordings/), serialised
    with `typestore`'s definitions of its type."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    path = runs_dir / 'recordings' / '20261201-000000'
    path.parent.mkdir(parents=True)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection(topic, msgtype, typestore=typestore)
        writer.write(connection, time_ns, typestore.serialize_cdr(message, msgtype))
