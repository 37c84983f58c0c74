"""Waiting on ROS with deadlines (a timeout names what did not happen), and the robot's policy node
as a robot runs it."""
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
