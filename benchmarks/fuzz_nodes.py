"""Long property-based fuzzing of every subscription of every node through DDS (issue 33): the
harness of tests/test_fuzz_nodes.py with many more messages (10,000 per subscription by default).
Prints, per node, how many messages of each kind it sent to each subscription, whether the node
died or stopped answering, its memory before and after, and for the deploy nodes the Twists seen,
the non-finite ones, and whether the last word was a zero Twist. Goal: 0 deaths and 0 non-finite
Twists.

    .venv/bin/python benchmarks/fuzz_nodes.py                       # every node, 10,000 each
    .venv/bin/python benchmarks/fuzz_nodes.py --examples 2000 --nodes robot_policy_node,policy_node
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'tests'))
# As tests/conftest.py: a domain of its own, discovery on this machine only (set before rclpy starts).
os.environ.setdefault('ROS_DOMAIN_ID', str(10 + os.getpid() % 90))
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'

import rclpy  # noqa: E402

from test_fuzz_nodes import NODES, fuzz_nodes  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--examples', type=int, default=10_000, help='messages per subscription')
    parser.add_argument('--nodes', default='', help='comma-separated node names (default: all)')
    args = parser.parse_args()
    chosen = [n for n in NODES if not args.nodes or n.name in args.nodes.split(',')]
    rclpy.init()
    driver = rclpy.create_node('fuzz_benchmark')
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as workdir:
        reports = fuzz_nodes(driver, chosen, Path(workdir), args.examples)
    failures = 0
    for report in reports:
        before, after = report.rss_mb
        print(f'\n{report.node}: {"DIED: " + report.died.splitlines()[0] if report.died else "alive, answering"}; '
              f'RSS {before:.0f} -> {after:.0f} MB')
        for topic in dict.fromkeys(t for t, _ in report.sent):
            kinds = {kind: n for (t, kind), n in sorted(report.sent.items()) if t == topic}
            print(f'  {topic}: {sum(kinds.values())} sent ({", ".join(f"{k}: {n}" for k, n in kinds.items())})')
        if report.last_twist_zero is not None:
            print(f'  cmd_vel: {report.twists} Twists, {report.non_finite_twists} non-finite, '
                  f'last a zero Twist: {report.last_twist_zero}')
        if report.died:
            print('  ' + report.died.replace('\n', '\n  '))
        failures += bool(report.died) + report.non_finite_twists + (report.last_twist_zero is False)
    print(f'\n{len(reports)} nodes, {sum(sum(r.sent.values()) for r in reports)} messages in '
          f'{time.monotonic() - started:.0f} s; deaths/stalls: {sum(bool(r.died) for r in reports)}, '
          f'non-finite Twists: {sum(r.non_finite_twists for r in reports)}')
    driver.destroy_node()
    rclpy.shutdown()
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
