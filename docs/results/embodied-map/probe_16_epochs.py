"""Probe (#31, 2026-12-07): does using each teacher label more (16 PPO epochs, the teacher weight
held at 10) make the camera + map student learn GoToRedBall? (reproduce.py's expert arm otherwise.)

    .venv/bin/python docs/results/embodied-map/probe_16_epochs.py 60000 16   # frames, PPO epochs
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / 'benchmarks'))  # reproduce.py's teacher
import torch
torch.set_num_threads(1)
from reproduce import scripted_motion_teacher
from habitat_bridge.vector import make_vec_env
from student_policy.evaluate import evaluate, env_options_for
from student_policy.lockstep import train
from student_policy.networks import eager_copy
from student_policy.ppo import PPOConfig, TeacherSchedule
task, frames = 'MiniWorld-GoToRedBall-v0', int(sys.argv[1])
epochs = int(sys.argv[2])
envs = make_vec_env(task, 8, perceive=True, width=48, height=48, observation='rgbd_map')
curve = []
def record(learner, metrics):
    curve.append((learner.frames, round(metrics['charts/success_rate'], 3), round(metrics['losses/distill_loss'], 3)))
    if len(curve) % 10 == 0:
        print(curve[-1], flush=True)
    return True
start = time.time()
config = PPOConfig(encoder='image_map', recurrent=128, total_frames=frames, num_steps=64, minibatch_size=128,
                   learning_rate=5e-4, update_epochs=epochs, seed=0,
                   teacher=TeacherSchedule(initial=10.0, final=10.0, decay_frames=1, off_frames=10**9))
learner = train(config, envs, teacher=scripted_motion_teacher(), callbacks=[record])
envs.close()
student = eager_copy(learner.policy)
opts = env_options_for(student.obs_shape, 'image_map')
g = evaluate(student, task, 50, seed=10_000, env_options=opts)
s = evaluate(student, task, 50, seed=10_000, greedy=False, env_options=opts)
print(json.dumps({'frames': frames, 'epochs': epochs, 'greedy': g['success_rate'], 'sampled': s['success_rate'],
                  'curve': curve, 'seconds': time.time() - start}), flush=True)
