"""Watch a trained student act alone in the simulator: sim node + deploy node, no teacher, no training.

    ros2 launch llm_teacher eval.launch.py policy_path:=runs/train/policy.pt task:=MiniGrid-SimpleDoorKey-v0
    python -m llm_teacher_common.launch_runner eval.launch.py policy_path:=runs/train/policy.pt

For figures (success rate, return) use `python -m student_policy.evaluate POLICY`.
"""
from pathlib import Path

from llm_teacher_common.launch_runner import NodeSpec, launch_description

CONFIG = Path(__file__).resolve().parent.parent / 'config'

ARGUMENTS = {
    'policy_path': ('runs/train/policy.pt', 'Exported student policy (TorchScript)'),
    'task': ('MiniGrid-SimpleDoorKey-v0', 'MiniGrid task id'),
    'num_envs': ('4', 'Environments stepped in lock-step'),
    'seed': ('10000', 'Environment i starts with seed + i (training used 0..)'),
}


def nodes(args: dict) -> list:
    return [
        NodeSpec('habitat_bridge', 'batch_sim_node', 'batch_sim_node',
                 parameters=[CONFIG / 'batch_sim_node.yaml',
                             {'task': args['task'], 'num_envs': int(args['num_envs']), 'seed': int(args['seed'])}]),
        NodeSpec('student_deploy', 'policy_node', 'policy_node',
                 parameters=[CONFIG / 'policy_node.yaml', {'policy_path': args['policy_path']}]),
    ]


def generate_launch_description():
    return launch_description(ARGUMENTS, nodes)
