"""The one main() of every node in this project (ros2/examples style), so each node file ends with
`def main(args=None): spin(MyNode, args)`."""
from __future__ import annotations

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor


def spin(node_class, args=None) -> None:
    """Run `node_class()` until Ctrl-C, shutdown, or until it sets `node.done`; then destroy it."""
    rclpy.init(args=args)
    node = None
    try:
        node = node_class()
        executor = SingleThreadedExecutor()  # one for the whole run: rclpy.spin_once re-adds the node each call
        executor.add_node(node)
        while rclpy.ok() and not getattr(node, 'done', False):
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # nodes keep what they wrote last (checkpoints, recordings): see their destroy_node()
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
