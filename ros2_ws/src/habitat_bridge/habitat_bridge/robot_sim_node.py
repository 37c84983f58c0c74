"""robot_sim_node: one simulated robot in real time, on a robot's standard ROS 2 topics (the stand-in
robot for deploying and for viewing).

Backends: 'miniworld' (MiniWorld 2.1, CPU, headless), 'habitat' (habitat-sim 0.3, where it is
installed: env Habitat-GoToObject-v0 or Habitat-PutNext-v0) and 'habitat_lab' (habitat-lab's
PointNav, where it and its data are installed: env Habitat-PointNav-v0). Every control period
(1 / rate_hz) the node applies the newest command, steps the simulator and publishes, all with one
stamp:

    camera/image_raw, camera/depth/image_raw   sensor_msgs/Image rgb8 and 32FC1 (metres)
    camera/camera_info                         sensor_msgs/CameraInfo (pinhole from the field of view)
    odom                                       nav_msgs/Odometry (odom -> base_link)
    /tf, /tf_static                            map -> odom -> base_link -> camera_link -> camera_optical_frame
    perception                                 llm_teacher_msgs/Perception (what the teacher reads)
    map                                        nav_msgs/OccupancyGrid (the robot's map from depth and odometry)
    mission                                    std_msgs/String: what the episode asks for ("go to the red ball")
    targets                                    geometry_msgs/PoseArray: where the objects the mission names
                                               were last seen (map frame; what a detector gives a robot)
    obstacles                                  geometry_msgs/PoseArray: where the other objects were
                                               last seen (map frame; the skills keep off them)
    reset                                      std_msgs/Empty, when a new episode starts (the robot is
                                               carried elsewhere)

Commands: `action` (std_msgs/Int32, one discrete action, applied once) and `cmd_vel`
(geometry_msgs/Twist, held until it is zero or older than cmd_vel_timeout; mapped to the nearest
discrete motion by llm_teacher_common.commands). With no command the robot stands still and the
sensors keep publishing.
"""
from __future__ import annotations

import time

from geometry_msgs.msg import Point, Pose, PoseArray, Twist
from llm_teacher_msgs.msg import Perception
from nav_msgs.msg import OccupancyGrid, Odometry
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Empty, Header, Int32, String
from tf2_msgs.msg import TFMessage

from llm_teacher_common.commands import MOTIONS, action_for_velocity, velocity_for_action
from habitat_bridge.embodied import sensors
from habitat_bridge.embodied.backend import BACKENDS, make_backend
from llm_teacher_common.map_crop import named_positions
from llm_teacher_common.messages import occupancy_grid_msg, perception_msg, rgb_image_msg
from llm_teacher_common.node import parameter, spin

class RobotSimNode(Node):
    def __init__(self):
        super().__init__('robot_sim_node')
        backend = parameter(self, 'backend', 'miniworld', f'Simulator: {", ".join(BACKENDS)}')
        env = parameter(self, 'env', 'MiniWorld-PutNext-v0', 'Environment id of the backend')
        width = parameter(self, 'width', 64, 'Camera width in pixels')
        height = parameter(self, 'height', 64, 'Camera height in pixels')
        scene = parameter(self, 'scene', '', "habitat backend: a .glb scene instead of the primitive rooms ('' for those)")
        config = parameter(self, 'config', '', "habitat_lab backend: a habitat-lab task config instead of the env's")
        rate_hz = parameter(self, 'rate_hz', 10.0, 'Control and sensor rate (one simulator step per period)')
        self.seed = parameter(self, 'seed', 0, 'Seed of the first episode; each next episode adds 1')
        self.cmd_vel_timeout = parameter(self, 'cmd_vel_timeout', 0.5, 'A cmd_vel older than this (s) stops the robot')
        if rate_hz <= 0:
            raise SystemExit(f'robot_sim_node: rate_hz must be > 0, got {rate_hz}')
        try:
            self.sim = make_backend(env, width, height, backend=backend, scene=scene, config=config)
        except (ValueError, RuntimeError) as err:
            raise SystemExit(f'robot_sim_node: {err}') from err
        self.period = 1.0 / rate_hz
        self.rgb_pub = self.create_publisher(Image, 'camera/image_raw', 2)
        self.depth_pub = self.create_publisher(Image, 'camera/depth/image_raw', 2)
        self.info_pub = self.create_publisher(CameraInfo, 'camera/camera_info', 2)
        self.odom_pub = self.create_publisher(Odometry, 'odom', 10)
        self.perception_pub = self.create_publisher(Perception, 'perception', 10)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.map_pub = self.create_publisher(OccupancyGrid, 'map', latched)  # as mappers publish it
        self.tf_pub = self.create_publisher(TFMessage, '/tf', 10)
        self.create_publisher(TFMessage, '/tf_static', latched).publish(
            TFMessage(transforms=sensors.static_transforms(self.sim.camera, self.get_clock().now().to_msg())))
        self.mission_pub = self.create_publisher(String, 'mission', 10)
        self.targets_pub = self.create_publisher(PoseArray, 'targets', 10)
        self.obstacles_pub = self.create_publisher(PoseArray, 'obstacles', 10)
        self.reset_pub = self.create_publisher(Empty, 'reset', 10)
        self.create_subscription(Int32, 'action', self.on_action, 10)
        self.create_subscription(Twist, 'cmd_vel', self.on_cmd_vel, 10)
        self.pending_action: int | None = None
        self.cmd_vel: tuple[float, float, float] | None = None  # linear.x, angular.z, receive time
        self.episode = 0
        self.last = self.sim.reset(seed=self.seed)
        self.create_timer(self.period, self.tick)
        self.get_logger().info(f'{backend} {env} at {rate_hz:g} Hz, camera {width}x{height}, '
                               f'hfov {sensors.hfov_deg(self.sim.camera):.1f} deg')

    def on_action(self, msg: Int32) -> None:
        motions = MOTIONS[self.sim.action_set]
        if not 0 <= msg.data < len(motions):
            self.get_logger().error(f'action {msg.data} is outside the {self.sim.action_set} action set '
                                    f'(0..{len(motions) - 1}); ignored')
            return
        self.pending_action = msg.data

    def on_cmd_vel(self, msg: Twist) -> None:
        self.cmd_vel = (msg.linear.x, msg.angular.z, time.monotonic())

    def next_action(self) -> int | None:
        if self.pending_action is not None:
            action, self.pending_action = self.pending_action, None
            return action
        if self.cmd_vel is None or time.monotonic() - self.cmd_vel[2] > self.cmd_vel_timeout:
            return None
        return action_for_velocity(self.cmd_vel[0], self.cmd_vel[1], self.sim.action_set,
                                   self.sim.step_length, self.sim.turn_angle, self.period)

    def tick(self) -> None:
        action = self.next_action()
        velocity = (0.0, 0.0)
        if action is not None:
            self.last = self.sim.step(action)
            velocity = velocity_for_action(action, self.sim.action_set, self.sim.step_length,
                                           self.sim.turn_angle, self.period)
            if self.last.terminated or self.last.truncated:
                self.episode += 1
                self.get_logger().info(f'episode {self.episode} ended (reward {self.last.reward:.2f}); new episode')
                self.last = self.sim.reset(seed=self.seed + self.episode)
                self.reset_pub.publish(Empty())
        stamp = self.get_clock().now().to_msg()
        step = self.last
        # The mission, map and targets first: a listener then has them before the frames they go with
        # (usually: topics are not ordered with each other; they come again with every frame).
        self.mission_pub.publish(String(data=step.perception.mission))
        if step.perception.occupancy is not None:
            grid = occupancy_grid_msg(step.perception.occupancy)
            grid.header.stamp = stamp
            self.map_pub.publish(grid)
        for publisher, named in ((self.targets_pub, True), (self.obstacles_pub, False)):
            publisher.publish(PoseArray(header=Header(stamp=stamp, frame_id=sensors.MAP), poses=[
                Pose(position=Point(x=x, y=y)) for x, y in named_positions(step.perception, named)]))
        self.rgb_pub.publish(rgb_image_msg(step.rgb, stamp, sensors.OPTICAL))
        self.depth_pub.publish(sensors.depth_image_msg(step.depth, stamp))
        self.info_pub.publish(sensors.camera_info_msg(self.sim.camera, stamp))
        self.odom_pub.publish(sensors.odometry_msg(step.pose, velocity, stamp))
        self.tf_pub.publish(TFMessage(transforms=sensors.dynamic_transforms(step.pose, stamp)))
        self.perception_pub.publish(perception_msg(step.perception))

    def destroy_node(self):
        self.sim.close()
        super().destroy_node()


def main(args=None):
    spin(RobotSimNode, args)


if __name__ == '__main__':
    main()
