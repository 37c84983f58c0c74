"""Train a student policy online through the ROS 2 graph: simulator -> LLM teacher -> student.

    ros2 launch llm_teacher train.launch.py task:=MiniGrid-LavaDoorKey-v0 total_frames:=600000
    ros2 launch llm_teacher train.launch.py task:=MiniWorld-GoToObject-v0 num_envs:=8   # from camera images
    python -m llm_teacher.launch_runner train.launch.py task:=MiniGrid-LavaDoorKey-v0   # without ROS 2 launch

Every argument has a default; list them with `ros2 launch llm_teacher train.launch.py --show-args`.
"""
from pathlib import Path

from llm_teacher.launch_runner import NodeSpec, flag, launch_description

CONFIG = Path(__file__).resolve().parent.parent / 'config'

PLAIN_PPO = {'teacher_initial': 0.0, 'teacher_final': 0.0}

ARGUMENTS = {
    'task': ('MiniGrid-SimpleDoorKey-v0', 'MiniGrid task id (the paper tasks or any standard one), or a MiniWorld id '
             '(MiniWorld-GoToObject-v0, MiniWorld-PutNext-v0): an embodied robot learning from its rgb + depth camera'),
    'num_envs': ('16', 'Environments stepped in lock-step'),
    'num_groups': ('1', 'Env groups in flight: 2 lets the sim step one half of the envs while the student acts on the '
                   'other (double-buffered sampling); num_envs must split evenly'),
    'seed': ('0', 'Seed of the environments and of the student'),
    'total_frames': ('450000', 'Environment frames to train for (450k: ~25 min on 2 cores)'),
    'run_dir': ('runs/train', 'Where checkpoints, logs and the exported policy go'),
    'plain_ppo': ('false', 'true: train without the teacher term and without a teacher node (the baseline)'),
    'llm_backend': ('transformers', "'transformers' (local model) or 'openai' (OpenAI-compatible server)"),
    'llm_model': ('embedded', "transformers: model directory or 'embedded'; openai: served model name"),
    'llm_url': ('http://127.0.0.1:8000', 'openai backend: server base URL'),
    'planner_mode': ('score', "'score' (option log-likelihoods) or 'sample' (K sampled answers)"),
    'avoid_lava': ('true', "The teacher's grid skills never step into lava; false: the paper's lava-blind teacher "
                   '(an ablation)'),
    'record': ('true', 'Record a sample of the run to run_dir/recordings/ (MCAP)'),
    'foxglove_port': ('8765', 'Foxglove WebSocket port of the live view (-1: off, 0: any free port)'),
}


def nodes(args: dict) -> list:
    plain_ppo = flag(args, 'plain_ppo')
    graph = [
        NodeSpec('habitat_bridge', 'minigrid_sim_node', 'minigrid_sim_node',
                 parameters=[CONFIG / 'minigrid_sim_node.yaml',
                             {'task': args['task'], 'num_envs': int(args['num_envs']), 'num_groups': int(args['num_groups']),
                              'seed': int(args['seed'])}]),
        NodeSpec('student_policy', 'student_node', 'student_node',
                 parameters=[CONFIG / 'student_node.yaml',
                             {'run_dir': args['run_dir'], 'total_frames': int(args['total_frames']),
                              'seed': int(args['seed']), 'task': args['task']},
                             PLAIN_PPO if plain_ppo else {}]),
    ]
    if not plain_ppo:
        graph.append(NodeSpec('llm_teacher', 'teacher_node', 'teacher_node',
                              parameters=[CONFIG / 'teacher_node.yaml',
                                          {'backend': args['llm_backend'], 'model': args['llm_model'],
                                           'base_url': args['llm_url'], 'planner_mode': args['planner_mode'],
                                           'avoid_lava': flag(args, 'avoid_lava'),
                                           'cache_path': str(Path(args['run_dir']) / 'answers.sqlite')}]))
    graph.append(NodeSpec('llm_teacher', 'visualization_node', 'visualization_node',
                          parameters=[{'foxglove_port': int(args['foxglove_port'])}]))
    if flag(args, 'record'):
        graph.append(NodeSpec('llm_teacher', 'recorder_node', 'recorder_node',
                              parameters=[{'run_dir': args['run_dir'], 'perceptions': not plain_ppo}]))
    return graph


def generate_launch_description():
    return launch_description(ARGUMENTS, nodes)
