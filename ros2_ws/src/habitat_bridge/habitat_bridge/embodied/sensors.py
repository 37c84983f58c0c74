"""ROS messages of an embodied robot's sensors (REP-103/105), from plain backend results.

Frames: map -> odom -> base_link -> camera_link -> camera_optical_frame. The simulators localise
perfectly, so map -> odom is the identity and odometry carries the true pose.
"""
from __future__ import annotations

import math

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Quaternion, TransformStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from habitat_bridge.embodied.types import CameraSpec, Pose

MAP, ODOM, BASE, CAMERA, OPTICAL = 'map', 'odom', 'base_link', 'camera_link', 'camera_optical_frame'
# camera_link (x forward, y left, z up) -> optical frame (z forward, x right, y down), REP-103.
OPTICAL_ROTATION = Quaternion(x=-0.5, y=0.5, z=-0.5, w=0.5)


def hfov_deg(camera: CameraSpec) -> float:
    return math.degrees(2 * math.atan((camera.width / 2) / camera.focal_length_px))


def camera_info_msg(camera: CameraSpec, stamp: Time) -> CameraInfo:
    """Ideal pinhole intrinsics; the principal point is the image centre in ROS pixel coordinates
    (the first pixel's centre is 0, so the centre is (W-1)/2, (H-1)/2)."""
    f = camera.focal_length_px
    cx, cy = (camera.width - 1) / 2, (camera.height - 1) / 2
    return CameraInfo(header=Header(stamp=stamp, frame_id=OPTICAL), width=camera.width, height=camera.height,
                      distortion_model='plumb_bob', d=[0.0] * 5,
                      k=[f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0],
                      r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                      p=[f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0])


def depth_image_msg(depth: np.ndarray, stamp: Time) -> Image:
    """sensor_msgs/Image 32FC1 in metres (REP-118)."""
    height, width = depth.shape[:2]
    return Image(header=Header(stamp=stamp, frame_id=OPTICAL), height=height, width=width, encoding='32FC1',
                 is_bigendian=0, step=width * 4, data=np.ascontiguousarray(depth, np.float32).tobytes())


def yaw_quaternion(yaw: float) -> Quaternion:
    return Quaternion(z=math.sin(yaw / 2), w=math.cos(yaw / 2))


def odometry_msg(pose: Pose, velocity: tuple[float, float], stamp: Time) -> Odometry:
    """Pose of base_link in odom, and the commanded (linear.x, angular.z) twist in base_link."""
    out = Odometry(header=Header(stamp=stamp, frame_id=ODOM), child_frame_id=BASE)
    out.pose.pose.position.x, out.pose.pose.position.y = pose.x, pose.y
    out.pose.pose.orientation = yaw_quaternion(pose.yaw)
    out.twist.twist.linear.x, out.twist.twist.angular.z = velocity
    return out


def _transform(parent: str, child: str, stamp: Time, xyz=(0.0, 0.0, 0.0), rotation=None) -> TransformStamped:
    out = TransformStamped(header=Header(stamp=stamp, frame_id=parent), child_frame_id=child)
    out.transform.translation.x, out.transform.translation.y, out.transform.translation.z = xyz
    out.transform.rotation = rotation or Quaternion(w=1.0)
    return out


def dynamic_transforms(pose: Pose, stamp: Time) -> list[TransformStamped]:
    """map -> odom (identity: perfect localisation) and odom -> base_link (the robot's pose)."""
    return [_transform(MAP, ODOM, stamp),
            _transform(ODOM, BASE, stamp, (pose.x, pose.y, 0.0), yaw_quaternion(pose.yaw))]


def static_transforms(camera: CameraSpec, stamp: Time) -> list[TransformStamped]:
    """base_link -> camera_link (where the camera sits) -> camera_optical_frame."""
    return [_transform(BASE, CAMERA, stamp, (camera.forward_m, 0.0, camera.height_m)),
            _transform(CAMERA, OPTICAL, stamp, rotation=OPTICAL_ROTATION)]
