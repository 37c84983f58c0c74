"""Point the CMake export files of the ROS 2 wheels at this environment's Python.

The ros-jazzy-* wheels were built under /opt/python/cp311-cp311 and their CMake export files
name that prefix's Python and NumPy include directories, which do not exist here; building
llm_teacher_msgs fails on them. Rewrites them in place (idempotent).
"""
import sys
import sysconfig
from pathlib import Path

import numpy

WHEEL_BUILDER_PREFIX = '/opt/python/cp311-cp311'
REPLACEMENTS = {
    f'{WHEEL_BUILDER_PREFIX}/include/python3.11': sysconfig.get_paths()['include'],
    f'{WHEEL_BUILDER_PREFIX}/lib/python3.11/site-packages/numpy/_core/include': numpy.get_include(),
}


def main() -> int:
    fixed = 0
    for path in Path(sys.prefix, 'share').rglob('*.cmake'):
        text = path.read_text()
        if WHEEL_BUILDER_PREFIX not in text:
            continue
        for old, new in REPLACEMENTS.items():
            text = text.replace(old, new)
        if WHEEL_BUILDER_PREFIX in text:
            print(f'fix_ros_wheel_paths: {path} names {WHEEL_BUILDER_PREFIX} in a way not handled here', file=sys.stderr)
            return 1
        path.write_text(text)
        fixed += 1
    print(f'fix_ros_wheel_paths: rewrote {fixed} CMake export files')
    return 0


if __name__ == '__main__':
    sys.exit(main())
