"""Can a camera student imitate the embodied teacher at all? Behaviour cloning, then DAgger, offline.

    .venv/bin/python benchmarks/imitation.py --frames 50000 --encoder small --out /tmp/bc-small

Records teacher-labelled states on a MiniWorld task (the scripted-option teacher: options from the
robot's perception through the embodied skills), trains a student on them by cross-entropy to the
teacher's action distribution, and reports held-out action agreement (whole episodes held out;
split by what the teacher was doing and whether the target was in view) and closed-loop greedy
success over held-out seeds (EVAL_SEED+). DAgger rounds then drive with the student and label its
own states with the teacher. Prints a JSON line per stage; --out keeps a summary and the students.

What it separates: a student that cannot fit its teacher's labels on held-out episodes lacks an
input or capacity (or has a bug); one that fits them but fails closed-loop drifts off the states
it was shown (what DAgger cures).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from habitat_bridge.embodied.vector import EmbodiedVecEnv
from llm_teacher_common.embodied_skills import EmbodiedSkills
from llm_teacher.option_level import OptionLevelEnv, over_options
from llm_teacher.scripted_options import scripted_option
from llm_teacher_common.map_crop import CROP_RESOLUTIONS, map_crop
from llm_teacher_common.perception import Perception
from llm_teacher_common.stats import rate_text
from student_deploy.missions import MissionVocabulary
from student_policy.networks import ImageEncoder, MissionEncoder, small_frame_cnn

EVAL_SEED = 20_000  # closed-loop seeds; training episodes come from seeds 0.. and their streams
CROP_CELLS = 48  # the map input: 12 m and 24 m square round the robot (llm_teacher_common.map_crop)


def map_inputs(perceptions: list[Perception], use_map: str) -> np.ndarray | None:
    """The map input of each robot (see map_crop), (N, cells, cells, C); None without one."""
    if not use_map:
        return None
    return np.stack([map_crop(p, CROP_CELLS, mark_target=use_map == 'target') for p in perceptions])


def target_in_view(perception: Perception, option) -> bool:
    return any(o.visible and o.type == option.type and o.color == option.color for o in perception.objects)


class Teacher:
    """The scripted-option teacher through the embodied skills: pi_T(a|s) and what it was doing.
    options: its distribution over the mission's options instead (an option-level student's labels)."""

    def __init__(self, turn_angle: float, options: bool = False):
        self.skills, self.options = EmbodiedSkills(turn_angle), options

    def __call__(self, perception: Perception) -> tuple[np.ndarray, str, bool]:
        option = scripted_option(perception)
        probs = (over_options({option.text: 1.0}, perception.mission) if self.options
                 else self.skills.policy({option: 1.0}, perception))
        return probs, option.verb, target_in_view(perception, option)


def make_envs(task: str, num_envs: int, size: int, perceive: bool, options: bool):
    """The robots, whose actions are motions, or options (llm_teacher.option_level) for an option-level student."""
    envs = EmbodiedVecEnv(task, num_envs, width=size, height=size, perceive=perceive)
    return OptionLevelEnv(envs) if options else envs


# -- students ------------------------------------------------------------------------------------

def atari_cnn(channels: int) -> nn.Module:
    """The student's own camera CNN (networks.ImageEncoder: CleanRL's Atari CNN): 48x48 -> 2x2 features."""
    return ImageEncoder((48, 48, channels)).cnn


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


def impala_cnn(channels: int) -> nn.Module:
    """The IMPALA CNN (Espeholt et al. 2018): three stacks of conv, max-pool and two residual blocks."""
    layers, c = [], channels
    for out in (16, 32, 32):
        layers += [nn.Conv2d(c, out, 3, padding=1), nn.MaxPool2d(3, stride=2, padding=1),
                   ResidualBlock(out), ResidualBlock(out)]
        c = out
    return nn.Sequential(*layers, nn.ReLU(), nn.Flatten())


ENCODERS = {'atari': atari_cnn, 'small': small_frame_cnn, 'impala': impala_cnn}


def crop_channels(use_map: str) -> int:
    return len(CROP_RESOLUTIONS) * (2 if use_map == 'target' else 1)


class Student(nn.Module):
    """Camera (and optionally the map crop, the mission) -> features -> (GRU) -> action logits."""

    def __init__(self, obs_shape, num_actions: int, encoder: str, use_map: str, recurrent: int, mission: bool = False,
                 features: int = 256):
        super().__init__()
        height, width, channels = obs_shape
        self.camera = ENCODERS[encoder](channels)
        self.map = small_frame_cnn(crop_channels(use_map)) if use_map else None
        self.mission = MissionEncoder() if mission else None  # the student's own (student_policy.networks)
        with torch.no_grad():
            flat = self.camera(torch.zeros(1, channels, height, width)).shape[1]
            if self.map is not None:
                flat += self.map(torch.zeros(1, crop_channels(use_map), CROP_CELLS, CROP_CELLS)).shape[1]
            if self.mission is not None:
                flat += self.mission.features
        self.head = nn.Sequential(nn.Linear(flat, features), nn.ReLU())
        self.recurrent = recurrent
        self.core = nn.GRUCell(features, recurrent) if recurrent else None
        self.actor = nn.Linear(recurrent or features, num_actions)

    def encode(self, obs, crop, mission):
        x = self.camera(obs.permute(0, 3, 1, 2).float() / 255.0)
        if self.map is not None:
            x = torch.cat([x, self.map(crop.permute(0, 3, 1, 2).float() / 255.0)], dim=1)
        if self.mission is not None:
            x = torch.cat([x, self.mission(mission)], dim=1)
        return self.head(x)

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.recurrent)

    def step(self, obs, crop, mission, state):
        features = self.encode(obs, crop, mission)
        if self.core is not None:
            state = features = self.core(features, state)
        return self.actor(features), state

    def unroll(self, obs, crop, mission, starts):
        """Logits (T, B, A) of sequences (T, B, ...) from a zero state, reset where starts marks one."""
        steps, batch = obs.shape[:2]
        flat = [None if x is None else x.flatten(0, 1) for x in (crop, mission)]
        features = self.encode(obs.flatten(0, 1), *flat).view(steps, batch, -1)
        if self.core is not None:
            state, outputs = self.initial_state(batch), []
            for t in range(steps):
                state = self.core(features[t], state * (1.0 - starts[t]).unsqueeze(-1))
                outputs.append(state)
            features = torch.stack(outputs)
        return self.actor(features)


# -- data ------------------------------------------------------------------------------------------

class Dataset:
    """Teacher-labelled steps, grouped by episode (each a run of consecutive steps of one robot)."""

    def __init__(self):
        self.obs, self.crops, self.missions, self.probs, self.verbs, self.visible = [], [], [], [], [], []
        self.episodes: list[list[int]] = []  # step indices of each episode, in order
        self.vocabulary = MissionVocabulary()

    def __len__(self):
        return len(self.obs)

    def arrays(self):
        return (np.stack(self.obs), np.stack(self.crops) if self.crops else None, np.stack(self.probs),
                np.array(self.verbs), np.array(self.visible), np.stack(self.missions))


def collect(envs: EmbodiedVecEnv, teacher: Teacher, data: Dataset, frames: int, seed: int, use_map: str,
            student: Student | None = None, beta: float = 1.0, rng=None) -> dict:
    """Step until `frames` more labelled steps; the teacher drives with probability beta per step,
    else the student (greedy). Returns the episodes' success counts of this collection."""
    step = envs.reset(seed=seed)
    current = [[] for _ in range(envs.num_envs)]
    state = student.initial_state(envs.num_envs) if student is not None and student.recurrent else None
    ended = successes = 0
    target = len(data) + frames
    while len(data) < target:
        labels = [teacher(p) for p in step.perceptions]
        crops = map_inputs(step.perceptions, use_map)
        missions = data.vocabulary.encode(step.missions, grow=True)
        actions = np.array([int(np.argmax(probs)) for probs, _, _ in labels])
        if student is not None:
            with torch.no_grad():
                logits, state = student.step(torch.from_numpy(step.observations),
                                             None if crops is None else torch.from_numpy(crops),
                                             torch.from_numpy(missions), state)
            mine = logits.argmax(-1).numpy()
            actions = np.where(rng.random(envs.num_envs) < beta, actions, mine)
        for i, (probs, verb, visible) in enumerate(labels):
            current[i].append(len(data))
            data.obs.append(step.observations[i])
            if use_map:
                data.crops.append(crops[i])
            data.missions.append(missions[i])
            data.probs.append(probs)
            data.verbs.append(verb)
            data.visible.append(visible)
        step = envs.step(actions)
        for i in np.flatnonzero(step.terminated | step.truncated):
            data.episodes.append(current[i])
            current[i] = []
            ended += 1
            successes += bool(step.success[i])
            if state is not None:
                state[i] = 0.0
    data.episodes.extend(c for c in current if c)  # cut episodes are sequences too
    return {'episodes_ended': ended, 'successes': successes}


def chunks(episodes: list[list[int]], length: int) -> list[list[int]]:
    """Episodes cut into sequences of at most `length` steps (a recurrent student starts each from
    a zero state: it learns to remember at most `length` steps back)."""
    return [e[k:k + length] for e in episodes for k in range(0, len(e), length)]


def batches(data_arrays, sequences: list[list[int]], batch: int, rng, shuffle=True):
    """(obs, crops, missions, probs, mask, starts, index) of `batch` sequences, padded to the longest,
    time first."""
    obs, crops, probs, missions = *data_arrays[:3], data_arrays[5]
    order = rng.permutation(len(sequences)) if shuffle else np.arange(len(sequences))
    for k in range(0, len(order), batch):
        chosen = [sequences[e] for e in order[k:k + batch]]
        length = max(len(e) for e in chosen)
        index = np.zeros((length, len(chosen)), int)
        mask = np.zeros((length, len(chosen)), bool)
        for b, steps in enumerate(chosen):
            index[:len(steps), b], mask[:len(steps), b] = steps, True
        starts = np.zeros((length, len(chosen)), np.float32)
        starts[0] = 1.0
        yield (torch.from_numpy(obs[index]), None if crops is None else torch.from_numpy(crops[index]),
               torch.from_numpy(missions[index]), torch.from_numpy(probs[index]), torch.from_numpy(mask),
               torch.from_numpy(starts), index)


def train(student: Student, arrays, train_episodes, epochs: int, lr: float, chunk: int, rng) -> float:
    """Cross-entropy to the teacher's distribution, minibatches of ~256 steps."""
    sequences = chunks(train_episodes, chunk)
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    for _ in range(epochs):
        losses = []
        for obs, crops, missions, probs, mask, starts, _ in batches(arrays, sequences, max(256 // chunk, 1), rng):
            logits = student.unroll(obs, crops, missions, starts)
            loss = -(probs * torch.log_softmax(logits, -1)).sum(-1)[mask].mean()
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(student.parameters(), 0.5)
            optimizer.step()
            losses.append(loss.item())
    return float(np.mean(losses))


def agreement(student: Student, arrays, episodes, rng) -> dict:
    """Share of held-out steps where the student's argmax is the teacher's, overall and split."""
    verbs, visible = arrays[3], arrays[4]
    hits, where = [], []
    with torch.no_grad():
        for obs, crops, missions, probs, mask, starts, index in batches(arrays, episodes, 8, rng, shuffle=False):
            logits = student.unroll(obs, crops, missions, starts)
            same = (logits.argmax(-1) == probs.argmax(-1))[mask].numpy()
            hits.append(same)
            where.append(index[mask.numpy()])
    hits, where = np.concatenate(hits), np.concatenate(where)
    teacher_actions = arrays[2][where].argmax(-1)
    commonest = np.bincount(teacher_actions).argmax()
    out = {'held_out_steps': int(len(hits)), 'agreement': float(hits.mean()),
           'always_commonest': float((teacher_actions == commonest).mean())}
    for name, sel in (('explore', verbs[where] == 'explore'), ('go_to', verbs[where] != 'explore'),
                      ('target_in_view', visible[where])):
        out[f'agreement_{name}'] = float(hits[sel].mean()) if sel.any() else math.nan
        out[f'share_{name}'] = float(sel.mean())
    return out


def closed_loop(student: Student, task: str, size: int, episodes: int, use_map: str, vocabulary: MissionVocabulary,
                teacher: Teacher | None = None, student_does: str = 'all', num_envs: int = 10,
                options: bool = False) -> dict:
    """Greedy success over seeds EVAL_SEED.. (never seen in training). student_does 'explore' or
    'go to': the student acts only while the teacher does that, the teacher in the other steps
    (which part of the task the student fails)."""
    perceive = use_map or student_does != 'all'
    envs = make_envs(task, num_envs, size, perceive, options)
    n = num_envs
    step = envs.reset(seed=EVAL_SEED)
    played = np.zeros(n, int)
    successes = np.zeros(episodes, bool)
    state = student.initial_state(n)
    with torch.no_grad():
        while (np.arange(n) + n * played < episodes).any():
            crops = map_inputs(step.perceptions, use_map)
            crops = None if crops is None else torch.from_numpy(crops)
            missions = torch.from_numpy(vocabulary.encode(step.missions))
            logits, state = student.step(torch.from_numpy(step.observations), crops, missions, state)
            actions = logits.argmax(-1).numpy()
            if student_does != 'all':
                for i, perception in enumerate(step.perceptions):
                    probs, verb, _ = teacher(perception)
                    if (verb == 'explore') != (student_does == 'explore'):
                        actions[i] = int(np.argmax(probs))
            step = envs.step(actions, reset_seeds=EVAL_SEED + np.arange(n) + n * (played + 1))
            for i in np.flatnonzero(step.terminated | step.truncated):
                k = i + n * played[i]
                if k < episodes:
                    successes[k] = step.success[i]
                played[i] += 1
                if student.recurrent:
                    state[i] = 0.0
    envs.close()
    wins = int(successes.sum())
    key = 'closed_loop' if student_does == 'all' else f'closed_loop_student_{student_does.replace(" ", "_")}_only'
    return {f'{key}_success': wins / episodes, key: rate_text(wins, episodes)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--task', default='MiniWorld-GoToRedBall-v0')
    parser.add_argument('--frames', type=int, default=50_000, help='teacher-driven frames (behaviour cloning)')
    parser.add_argument('--size', type=int, default=48, help='camera frames are size x size')
    parser.add_argument('--encoder', choices=sorted(ENCODERS), default='small')
    parser.add_argument('--map', nargs='?', const='map', default='', choices=('map', 'target'),
                        help='the occupancy map crop as a second input; "--map target" marks the object the '
                             'mission names in it too')
    parser.add_argument('--recurrent', type=int, default=0, help='GRU size (0: reactive)')
    parser.add_argument('--mission', action='store_true', help="the student reads the mission (the student's "
                        'mission encoder, networks.MissionEncoder): GoToObject names its target only there')
    parser.add_argument('--epochs', type=int, default=8)
    parser.add_argument('--chunk', type=int, default=0, help='steps per training sequence (default: 1 reactive, 64 recurrent)')
    parser.add_argument('--lr', type=float, default=5e-4)
    parser.add_argument('--dagger', type=int, default=0, help='DAgger rounds after cloning')
    parser.add_argument('--dagger-frames', type=int, default=20_000, help='student-driven frames per round')
    parser.add_argument('--dagger-epochs', type=int, default=0, help='epochs over all the data per DAgger round '
                        '(default: --epochs; the student goes on from the last round)')
    parser.add_argument('--options', action='store_true',
                        help='an option-level student: it learns the teacher\'s option, the skills act (llm_teacher.option_level)')
    parser.add_argument('--eval-episodes', type=int, default=50)
    parser.add_argument('--envs', type=int, default=8)
    parser.add_argument('--hybrid', action='store_true',
                        help='also evaluate with the student acting only while exploring, and only while going to')
    parser.add_argument('--out', type=Path, help='a folder for summary.json and the student of each round')
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    envs = make_envs(args.task, args.envs, args.size, True, args.options)
    teacher = Teacher(envs.envs[0].turn_angle, args.options)
    data = Dataset()
    start = time.perf_counter()
    teacher_run = collect(envs, teacher, data, args.frames, seed=0, use_map=args.map)
    report = {'stage': 'collect', 'frames': len(data), 'episodes': len(data.episodes),
              'teacher_success': rate_text(teacher_run['successes'], teacher_run['episodes_ended']),
              'seconds': round(time.perf_counter() - start)}
    print(json.dumps(report), flush=True)
    held_out = [e for k, e in enumerate(data.episodes) if k % 10 == 0]
    student = Student(envs.observation_space.shape, envs.num_actions, args.encoder, args.map, args.recurrent,
                      args.mission)
    results = []
    for round_ in range(args.dagger + 1):
        if round_:
            start = time.perf_counter()
            run = collect(envs, teacher, data, args.dagger_frames, seed=1000 * round_, use_map=args.map,
                          student=student, beta=0.5 ** round_, rng=rng)
            print(json.dumps({'stage': f'dagger {round_}', 'frames': len(data), 'student_driven_success':
                              rate_text(run['successes'], run['episodes_ended']),
                              'seconds': round(time.perf_counter() - start)}), flush=True)
        held = {id(e) for e in held_out}
        train_episodes = [e for e in data.episodes if id(e) not in held]
        start = time.perf_counter()
        epochs = args.dagger_epochs if round_ and args.dagger_epochs else args.epochs
        arrays = data.arrays()  # ~1 GB at 100k frames: stacked once a round
        loss = train(student, arrays, train_episodes, epochs, args.lr, args.chunk or (64 if args.recurrent else 1), rng)
        seconds = round(time.perf_counter() - start)
        result = {'stage': f'round {round_}', 'frames': len(data), 'loss': round(loss, 3), 'train_seconds': seconds,
                  **agreement(student, arrays, held_out, rng)}
        start = time.perf_counter()
        result.update(closed_loop(student, args.task, args.size, args.eval_episodes, args.map, data.vocabulary,
                                  options=args.options))
        if args.hybrid:
            for part in ('explore', 'go to'):
                result.update(closed_loop(student, args.task, args.size, args.eval_episodes, args.map, data.vocabulary,
                                          teacher, part, options=args.options))
        result['eval_seconds'] = round(time.perf_counter() - start)
        results.append(result)
        print(json.dumps(result), flush=True)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            torch.save(student.state_dict(), args.out / f'student-round{round_}.pt')
    envs.close()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / 'summary.json').write_text(json.dumps({'args': {k: str(v) for k, v in vars(args).items()},
                                                           'collect': report, 'rounds': results}, indent=1))


if __name__ == '__main__':
    main()
