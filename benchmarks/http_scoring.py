"""Exact option scoring over HTTP against the local backend: the embedded model's option
distributions from TransformersBackend and, through OpenAIBackend, from llama-cpp-python's server
on localhost, on prompts from the scripted expert's episodes of the paper's tasks.

    .venv/bin/python benchmarks/http_scoring.py --per-task 2

Two servers, one after the other: the embedded model's weights dequantised to F32 with an F32 KV
cache (what the test holds to 1e-3), and the GGUF as shipped (Q4_1, llama.cpp's default F16 KV
cache). Prints, per server, the largest and mean |p_http - p_local| over every option of every
prompt (the planner's softmax over the options' summed log p), the largest |log p| difference,
and seconds per scored prompt each way, wall and CPU (all options of a prompt; one request per
option over HTTP).
"""
import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from habitat_bridge.minigrid.expert import ScriptedExpert
from habitat_bridge.minigrid.vector import make_env
from llm_teacher.backends import OpenAIBackend, TransformersBackend, embedded_gguf, embedded_gguf_f32
from llm_teacher.mediator import Mediator
from llm_teacher.options import feasible_options

TASKS = ('MiniGrid-SimpleDoorKey-v0', 'MiniGrid-LavaDoorKey-v0', 'MiniGrid-ColoredDoorKey-v0', 'MiniGrid-TwoDoor-v0')


def expert_prompts(per_task: int) -> list[tuple[str, list[str]]]:
    """Distinct prompts with two or more feasible options along the expert's episodes, per task."""
    mediator, prompts = Mediator.from_file(), {}
    for task in TASKS:
        env, found = make_env(task), 0
        for seed in range(50):
            env.reset(seed=seed)
            expert, done = ScriptedExpert(), False
            while not done and found < per_task:
                perception = env.perception()
                options = feasible_options(perception)
                prompt = mediator.prompt(perception, options)
                if len(options) > 1 and prompt not in prompts:
                    prompts[prompt], found = [o.text for o in options], found + 1
                _, _, terminated, truncated, _ = env.step(expert.act(env))
                done = terminated or truncated
            if found == per_task:
                break
    return list(prompts.items())


def softmax(scores: list[float]) -> np.ndarray:
    p = np.exp(np.array(scores) - max(scores))
    return p / p.sum()


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far (user + system, all its threads)."""
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def timed_scores(backend, prompts, server_pid: int | None = None) -> tuple[list[list[float]], float, float]:
    """Scores of every prompt's options, and the wall and CPU seconds a prompt took (CPU: this
    process and the server's; on a shared machine wall time swings with the load, CPU time less)."""
    server = (lambda: cpu_seconds(server_pid)) if server_pid else (lambda: 0.0)
    wall, cpu = time.perf_counter(), time.process_time() + server()
    scores = [backend.score(prompt, options) for prompt, options in prompts]
    cpu = time.process_time() + server() - cpu
    return scores, (time.perf_counter() - wall) / len(prompts), cpu / len(prompts)


def serve(gguf: str, *extra: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, '-m', 'llama_cpp.server', '--model', gguf, '--model_alias', 'embedded',
                                '--host', '127.0.0.1', '--port', str(port), '--verbose', 'false', *extra],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f'http://127.0.0.1:{port}'
    for _ in range(120):
        try:
            urllib.request.urlopen(url + '/v1/models', timeout=2).read()
            return process, url
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(1)
    process.kill()
    raise SystemExit(f'llama-cpp-python server on {gguf} did not come up')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--per-task', type=int, default=2, help='prompts from each of the four tasks')
    args = parser.parse_args()
    prompts = expert_prompts(args.per_task)
    local = TransformersBackend('embedded')
    local.score(*prompts[0])  # warm-up: the first forward pass pays one-off costs
    here, local_s, local_cpu = timed_scores(local, prompts)
    print(f'{len(prompts)} prompts, {sum(len(o) for _, o in prompts)} options; local backend (transformers, fp32): '
          f'{local_s:.2f} s a prompt ({local_cpu:.2f} CPU s)')
    servers = {'llama-cpp-python, F32 weights + F32 KV cache':
               (str(embedded_gguf_f32()), '--type_k', '0', '--type_v', '0'),
               'llama-cpp-python, Q4_1 GGUF as shipped (F16 KV cache)': (str(embedded_gguf()),)}
    for name, command in servers.items():
        process, url = serve(*command)
        try:
            served, http_s, http_cpu = timed_scores(OpenAIBackend(url, 'embedded', timeout_s=600), prompts, process.pid)
        finally:
            process.terminate()
            process.wait(timeout=20)
        dp = np.concatenate([np.abs(softmax(a) - softmax(b)) for a, b in zip(served, here)])
        dlogp = np.concatenate([np.abs(np.array(a) - np.array(b)) for a, b in zip(served, here)])
        print(f'{name}: max |dp| {dp.max():.1e}, mean |dp| {dp.mean():.1e}, max |d log p| {dlogp.max():.1e}; '
              f'{http_s:.2f} s a prompt over HTTP ({http_cpu:.2f} CPU s, client and server)')


if __name__ == '__main__':
    main()
