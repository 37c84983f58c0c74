"""Train a student policy online through the ROS 2 graph: simulator -> LLM teacher -> student.

    ros2 launch llm_teacher train.launch.py task:=MiniGrid-LavaDoorKey-v0 total_frames:=600000
    ros2 launch llm_teacher train.launch.py task:=MiniWorld-GoToObject-v0 num_envs:=8   # from camera images
    ros2 launch llm_teacher train.launch.py task:=MiniWorld-GoToObject-v0 num_envs:=8 observation:=rgbd_map \
        recurrent:=128 mission:=true   # camera + the robot's map, a memory, the mission in words
    python -m llm_teacher_common.launch_runner train.launch.py task:=MiniGrid-LavaDoorKey-v0   # without ROS 2 launch

Across machines (DDS is the transport; docs/ros2.md "Training across machines"): each host starts the roles
it plays, and each sim or teacher host the env groups it serves:

    ros2 launch llm_teacher train.launch.py roles:=learner num_envs:=32 num_groups:=2      # the GPU host
    ros2 launch llm_teacher train.launch.py roles:=sim,teacher groups:=0 num_envs:=32 num_groups:=2
    ros2 launch llm_teacher train.launch.py roles:=sim,teacher groups:=1 num_envs:=32 num_groups:=2

More cores on one host: `sim_processes:=N` starts N sim processes, each stepping its share of the env groups
(of `groups` where given) while the others step theirs:

    ros2 launch llm_teacher train.launch.py task:=MiniWorld-GoToObject-v0 num_envs:=16 num_groups:=4 sim_processes:=4

Every argument has a default; list them with `ros2 launch llm_teacher train.launch.py --show-args`.
"""
import math
from pathlib import Path

from llm_teacher_common.launch_runner import NodeSpec, flag, launch_description, yaml_parameters
from llm_teacher_common.node import group_list

CONFIG = Path(__file__).resolve().parent.parent / 'config'

PLAIN_PPO = {'teacher_initial': 0.0, 'teacher_final': 0.0}
ROLES = {'sim', 'teacher', 'learner'}

ARGUMENTS = {
    'task': ('MiniGrid-SimpleDoorKey-v0', 'MiniGrid task id (the paper tasks or any standard one), or a MiniWorld id '
             '(MiniWorld-GoToObject-v0, MiniWorld-PutNext-v0): an embodied robot learning from its rgb + depth camera'),
    'num_envs': ('16', 'Environments stepped in lock-step'),
    'num_groups': ('1', 'Env groups in flight: 2 lets the sim step one half of the envs while the student acts on the '
                   'other (double-buffered sampling); num_envs must split evenly'),
    'seed': ('0', 'Seed of the environments and of the student'),
    'observation': ('', "What the sim gives the student; '' the config's (the task's default). MiniWorld: rgbd, rgb, "
                    "or rgbd_map (the camera and the robot's map crop with the mission's object marked)"),
    'recurrent': ('', "Units of the student's GRU memory (0: reactive); '' the config's"),
    'teacher_replay': ('', "Frames of teacher-labelled states the teacher term revisits (0: off; camera students: "
                       "100000, ~1.8 GB at 48x48 rgbd_map); '' the config's"),
    'mission': ('', "true: the student reads the mission text (tasks whose mission varies, e.g. GoToObject); '' the "
                "config's"),
    'total_frames': ('450000', 'Environment frames to train for (450k: about 7 minutes on 2 cores)'),
    'run_dir': ('runs/train', 'Where checkpoints, logs and the exported policy go'),
    'plain_ppo': ('false', 'true: train without the teacher term and without a teacher node (the baseline)'),
    'llm_backend': ('transformers', "'transformers' (local model) or 'openai' (OpenAI-compatible server)"),
    'llm_model': ('embedded', "transformers: model directory or 'embedded'; openai: served model name"),
    'llm_url': ('http://127.0.0.1:8000', 'openai backend: server base URL'),
    'planner_mode': ('score', "'score' (each feasible option's log-likelihood, one batched pass) or 'sample' (K sampled answers, the paper's)"),
    'avoid_lava': ('true', "The teacher's grid skills never step into lava; false: the paper's lava-blind teacher "
                   '(an ablation)'),
    'roles': ('sim,teacher,learner', 'What this launch starts: any of sim, teacher (the LLM teacher node) and learner '
              '(student, visualisation, recorder), comma-separated; other hosts start the rest'),
    'groups': ('', "Env groups the sim and teacher started here serve, e.g. '0' or '1,3'; '' all (one host)"),
    'sim_processes': ('1', 'Sim processes started here, each hosting an equal share of those groups, all stepping '
                      'at once (a core each); must divide the groups, e.g. num_groups:=4 sim_processes:=4'),
    'record': ('true', 'Record a sample of the run to run_dir/recordings/ (MCAP)'),
    'foxglove_port': ('8765', 'Foxglove WebSocket port of the live view (-1: off, 0: any free port)'),
}


def nodes(args: dict) -> list:
    plain_ppo = flag(args, 'plain_ppo')
    roles = {role.strip() for role in args['roles'].split(',')}
    if not roles or not roles <= ROLES:
        raise ValueError(f"roles {args['roles']!r}: choose among {', '.join(sorted(ROLES))}, comma-separated")
    suffix = group_suffix(args['groups'])
    graph = []
    if 'sim' in roles:
        observation = {'observation': args['observation']} if args['observation'] else {}
        for groups in sim_process_groups(args):
            graph.append(NodeSpec('habitat_bridge', 'batch_sim_node', 'batch_sim_node' + group_suffix(groups),
                                  parameters=[config('batch_sim_node', group_suffix(groups)),
                                              {'task': args['task'], 'num_envs': int(args['num_envs']),
                                               'num_groups': int(args['num_groups']), 'seed': int(args['seed']),
                                               'groups': groups, **observation}]))
    if 'learner' in roles:
        graph.append(NodeSpec('student_policy', 'student_node', 'student_node',
                              parameters=[config('student_node'),
                                          {'run_dir': args['run_dir'], 'total_frames': int(args['total_frames']),
                                           'seed': int(args['seed']), 'task': args['task'],
                                           **({'recurrent': int(args['recurrent'])} if args['recurrent'] else {}),
                                           **({'mission': flag(args, 'mission')} if args['mission'] else {}),
                                           **({'teacher_replay': int(args['teacher_replay'])}
                                              if args['teacher_replay'] else {})},
                                          PLAIN_PPO if plain_ppo else {}]))
    if 'teacher' in roles and not plain_ppo:
        graph.append(NodeSpec('llm_teacher', 'teacher_node', 'teacher_node' + suffix,
                              parameters=[config('teacher_node', suffix),
                                          {'backend': args['llm_backend'], 'model': args['llm_model'],
                                           'base_url': args['llm_url'], 'planner_mode': args['planner_mode'],
                                           'avoid_lava': flag(args, 'avoid_lava'), 'groups': args['groups'],
                                           'cache_path': str(Path(args['run_dir']) / 'answers.sqlite')}]))
    if 'learner' in roles:
        graph.append(NodeSpec('llm_teacher', 'visualization_node', 'visualization_node',
                              parameters=[config('visualization_node'), {'foxglove_port': int(args['foxglove_port']),
                                                                     'task': args['task']}]))
        if flag(args, 'record'):
            graph.append(NodeSpec('llm_teacher', 'recorder_node', 'recorder_node',
                                  parameters=[config('recorder_node'),
                                              {'run_dir': args['run_dir'], 'perceptions': not plain_ppo}]))
    return graph


def group_suffix(groups: str) -> str:
    """Several sims and teachers on one ROS graph need their own node names (and services): '0,2' -> '_0_2'."""
    return '_' + groups.replace(',', '_') if groups else ''


def sim_process_groups(args: dict) -> list[str]:
    """The `groups` parameter of each of the `sim_processes` sims started here: consecutive equal shares."""
    count, num_groups = args['sim_processes'], int(args['num_groups'])
    served = group_list(args['groups'], num_groups)
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f'sim_processes {count!r}: give a number of sim processes, 1 or more (1: one hosts '
                         'every group)')
    count = int(count)
    if len(served) % count:
        fix = (f'groups to a list of a multiple of {count} groups' if args['groups'] else
               f'num_groups:={math.lcm(count, num_groups)} (num_envs must split into it too)')
        raise ValueError(f'sim_processes {count} does not divide the {len(served)} env group(s) served here '
                         f"({','.join(map(str, served))}), and each sim hosts an equal share: set {fix}, or "
                         f'sim_processes to a divisor of {len(served)}')
    if count == 1 or not served:  # (no groups: the sim node says why)
        return [args['groups']]  # one sim keeps its name
    share = len(served) // count
    return [','.join(map(str, served[i:i + share])) for i in range(0, len(served), share)]


def config(node: str, suffix: str = ''):
    """config/<node>.yaml; for a node renamed with `suffix`, its values (the file names the node)."""
    path = CONFIG / f'{node}.yaml'
    return yaml_parameters(path, node) if suffix else path


def generate_launch_description():
    return launch_description(ARGUMENTS, nodes)
