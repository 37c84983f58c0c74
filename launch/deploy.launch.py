"""Deploy the student alone (no LLM, no training) on a robot's topics.

    ros2 launch llm_teacher deploy.launch.py policy_path:=runs/train/policy.pt observations:=/robot/step_batch actions:=/robot/action_batch
"""
from pathlib import Path

from llm_teacher.launch_runner import NodeSpec, launch_description

CONFIG = Path(__file__).resolve().parent.parent / 'config'

ARGUMENTS = {
    'policy_path': ('runs/train/policy.pt', 'Exported student policy (TorchScript)'),
    'observations': ('step_batch', "Topic of the robot's observation batches (llm_teacher_msgs/StepBatch)"),
    'actions': ('action_batch', 'Topic the actions are published on (llm_teacher_msgs/ActionBatch)'),
}


def nodes(args: dict) -> list:
    return [NodeSpec('student_policy', 'policy_node', 'policy_node',
                     parameters=[CONFIG / 'policy_node.yaml', {'policy_path': args['policy_path']}],
                     remappings=[('step_batch', args['observations']), ('action_batch', args['actions'])])]


def generate_launch_description():
    return launch_description(ARGUMENTS, nodes)
