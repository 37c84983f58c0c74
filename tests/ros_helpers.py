"""Waiting on ROS with deadlines: a timeout names what did not happen."""
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
