"""What every node of this project shares: its main() (ros2/examples style), so each node file ends
with `def main(args=None): spin(MyNode, args)`, and how it declares parameters."""
from __future__ import annotations

import signal

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.experimental.events_executor import EventsExecutor
from rclpy.signals import SignalHandlerOptions


def make_executor(context=None):
    """The executor every node and benchmark driver spins with: rclpy's C++ EventsExecutor, ~4x less
    time per callback than the Python SingleThreadedExecutor (0.11 vs 0.47 ms a message round
    trip), which rebuilds its wait set on every spin_once; that showed in lock-step stepping."""
    return EventsExecutor(context=context)


def spin(node_class, args=None) -> None:
    """Run `node_class()` until Ctrl-C or SIGTERM, shutdown, or until it sets `node.done`; then
    destroy it.

    Ctrl-C ends the loop between callbacks rather than raising KeyboardInterrupt wherever the
    process is: raised inside rclpy's C++ message conversion, it surfaced as a RuntimeError
    ("Unable to convert call argument") and the node exited with an error.
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.append(True))
    node = None
    try:
        node = node_class()
        executor = make_executor()  # one for the whole run: rclpy.spin_once re-adds the node each call
        executor.add_node(node)
        while rclpy.ok() and not stop and not getattr(node, 'done', False):
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # nodes keep what they wrote last (checkpoints, recordings): see their destroy_node()
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


def group_list(text: str, num_groups: int | None = None) -> list[int] | None:
    """The env groups a node serves, from a parameter like '1' or '0,2'; '' is all of them
    (0..num_groups-1, or None where the node does not know how many there are).

    :raises ValueError: not a comma-separated list of group numbers (below num_groups, if given).
    """
    if not text.strip():
        return None if num_groups is None else list(range(num_groups))
    try:
        groups = sorted({int(part) for part in text.split(',')})
    except ValueError:
        raise ValueError(f"groups {text!r} is not a comma-separated list of env group numbers, like '0' or '0,1'") from None
    if groups[0] < 0 or (num_groups is not None and groups[-1] >= num_groups):
        bound = f'0..{num_groups - 1}' if num_groups is not None else 'numbered from 0'
        raise ValueError(f'groups {text!r}: env groups are {bound}')
    return groups


def parameter(node, name: str, default, description: str):
    """Declare a parameter with dynamic typing, then cast to the default's type, so that
    `-p rate_hz:=2` works where 2.0 is the default."""
    descriptor = ParameterDescriptor(description=description, dynamic_typing=True)
    return type(default)(node.declare_parameter(name, default, descriptor).value)
