"""Test harness: every test run gets its own ROS domain and keeps DDS discovery on this machine."""
import os

import pytest

# Set before any rclpy import or node process: rclpy reads them at init, children inherit them.
os.environ['ROS_DOMAIN_ID'] = str(10 + os.getpid() % 90)
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('PYTHONUNBUFFERED', '1')


@pytest.fixture
def ros_node():
    """A test-side rclpy node in its own context."""
    import rclpy
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node('test_driver', context=context)
    yield node
    node.destroy_node()
    rclpy.shutdown(context=context)
