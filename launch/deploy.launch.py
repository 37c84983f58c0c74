"""Deploy the student alone (no LLM, no training, no simulator) on a robot's own topics.

    ros2 launch student_deploy deploy.launch.py policy_path:=runs/train/policy.pt rgb:=/camera/color/image_raw depth:=/camera/depth/image_rect_raw cmd_vel:=/cmd_vel

robot:=true (default) runs robot_policy_node: rgb + depth images in, geometry_msgs/Twist out.
robot:=false runs policy_node for grid simulators: StepBatch in, ActionBatch out.
"""
from pathlib import Path

from llm_teacher_common.launch_runner import NodeSpec, flag, launch_description

CONFIG = Path(__file__).resolve().parent.parent / 'config'

ARGUMENTS = {
    'policy_path': ('runs/train/policy.pt', 'Exported student policy (TorchScript .pt, or .onnx)'),
    'robot': ('true', 'true: a camera robot (robot_policy_node); false: a grid simulator (policy_node)'),
    'rgb': ('camera/image_raw', "The robot's colour image topic (sensor_msgs/Image rgb8/bgr8)"),
    'depth': ('camera/depth/image_raw', "The robot's depth image topic (sensor_msgs/Image 32FC1 m or 16UC1 mm)"),
    'cmd_vel': ('cmd_vel', 'Where velocity commands go (geometry_msgs/Twist)'),
    'mission': ('mission', 'Where the mission comes from (std_msgs/String), for a policy that reads one'),
    'observation': ('', "What the policy was trained on: rgbd, rgb, or rgbd_map (the camera and the robot's map: "
                        "then map, odom, /tf and targets are read); '' the config's"),
    'map': ('map', 'observation rgbd_map: the mapper\'s nav_msgs/OccupancyGrid'),
    'odom': ('odom', 'observation rgbd_map: the robot\'s nav_msgs/Odometry'),
    'targets': ('targets', 'observation rgbd_map: where the objects the mission names were last seen '
                           '(geometry_msgs/PoseArray in the map frame, from a detector)'),
    'obstacles': ('obstacles', 'a policy that chooses options: where the other objects were last seen '
                               '(geometry_msgs/PoseArray in the map frame; the skills keep off them)'),
    'control_rate_hz': ('10.0', 'Actions per second; one action is carried out in 1 / rate s'),
    'device': ('cpu', 'cpu or cuda'),
    'observations': ('step_batch', 'robot:=false: topic of the observation batches (llm_teacher_msgs/StepBatch)'),
    'actions': ('action_batch', 'robot:=false: topic the actions go to (llm_teacher_msgs/ActionBatch)'),
}


def nodes(args: dict) -> list:
    if flag(args, 'robot'):
        return [NodeSpec('student_deploy', 'robot_policy_node', 'robot_policy_node',
                         parameters=[CONFIG / 'robot_policy_node.yaml',
                                     {'policy_path': args['policy_path'], 'device': args['device'],
                                      'control_rate_hz': float(args['control_rate_hz']),
                                      **({'observation': args['observation']} if args['observation'] else {})}],
                         remappings=[('camera/image_raw', args['rgb']), ('camera/depth/image_raw', args['depth']),
                                     ('cmd_vel', args['cmd_vel']), ('mission', args['mission']), ('map', args['map']),
                                     ('odom', args['odom']), ('targets', args['targets']),
                                     ('obstacles', args['obstacles'])])]
    return [NodeSpec('student_deploy', 'policy_node', 'policy_node',
                     parameters=[CONFIG / 'policy_node.yaml', {'policy_path': args['policy_path']}],
                     remappings=[('step_batch', args['observations']), ('action_batch', args['actions'])])]


def generate_launch_description():
    return launch_description(ARGUMENTS, nodes)
