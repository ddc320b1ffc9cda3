"""An OpenAI-compatible chat-completions server over a rollout engine (``thinktune serve``).

Endpoints: ``POST /v1/chat/completions`` and ``GET /v1/models``, in the OpenAI wire format, so that the
official ``openai`` client (and ``thinktune distill``) can use a local checkpoint as a teacher.

- Messages are rendered with the model's chat template (``data.chat.render_prompt``), which adds the
  configured system prompt when the request has no system message, as in training.
- The ``<think>`` part is returned in ``message.reasoning_content`` and the rest in ``message.content``
  (DeepSeek's and vLLM's convention) by default; ``reasoning="inline"`` returns the whole text, tags
  included, in ``content``.
- Request fields: ``model``, ``messages``, ``n``, ``temperature`` (0: greedy), ``top_p``, ``max_tokens`` or
  ``max_completion_tokens``, ``stop``, ``seed``, ``stream``. Every value is checked (a 400 names the field);
  fields that would change the reply but are not implemented (``logprobs``, ``tools``, penalties, ...) are a 400
  when set, others are ignored. ``max_tokens`` above the cap (``max_new_tokens``, or what the context leaves) is a
  400 naming the cap, or clamped to it with ``max_tokens_over_cap="clamp"``.
- ``stream: true`` sends text as it is decoded (``ChoiceStream``); a client that disconnects stops its rows.
  A streamed reply splits reasoning at the first ``</think>`` (a ``<think>`` at the start of the reply, or one
  the chat template left open at the end of the prompt); the plain reply uses ``split_think`` (the last one).
  They agree on a well-formed ``<think>R</think>S``.
- ``usage`` counts the prompt once and every choice's generated tokens.
- With an API key set, requests without ``Authorization: Bearer <key>`` get 401.

HTTP (``HTTPLimits``): the standard library's HTTP/1.1 parser behind a bounded pool of connection threads.
Accepted connections wait in a queue for a thread; beyond ``max_waiting`` they get 503. A connection is closed
when no request starts within ``idle_timeout_s``, when a request's line and headers take more than
``header_timeout_s`` from its first byte (slow-header clients), or its body more than ``body_timeout_s`` (408).
Bodies must state a Content-Length (411 otherwise) of at most ``max_body_mb`` (413), and the messages' length in
characters is checked against the context before the prompt is tokenized. uvicorn 0.54 was measured and not used:
with ``timeout_keep_alive=2`` a new connection that sent nothing, and one sending its headers byte by byte, were
both still open after 8 s (it arms no timer before a connection's first reply), those connections count against
``limit_concurrency`` (four idle sockets made every request a 503), and it has no body size limit or timeout.

Concurrency: connection threads parse and validate requests, then queue them for one engine thread
(``EngineWorker``), which owns the engine. Requests that arrive while a batch runs are decoded together in
the next one when their sampling settings agree, so concurrent clients share forward passes. A request with
a ``seed`` is decoded alone, because a row's draws depend on the rows that share its batch.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import io
import itertools
import json
import math
import queue
import select
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from transformers import PreTrainedTokenizerBase

from thinktune.data.chat import render_prompt
from thinktune.errors import ConfigError
from thinktune.rewards.verify import THINK_CLOSE, THINK_OPEN, split_think
from thinktune.rollout.sampler import Completion, SamplingParams
from thinktune.rollout.service import Sampler

REASONING_FORMATS = ("separate", "inline")
OVER_CAP = ("reject", "clamp")  # what a max_tokens above the cap gets
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "stop"}
MAX_STOPS, MAX_STOP_CHARS = 16, 128  # a stop string costs a decode of 4x its length per row and step
SEED_RANGE = (-2**63, 2**63 - 1)  # OpenAI's int64
# Fields that would change the reply and are not implemented: set to anything but their default, a 400.
UNSUPPORTED = ("logprobs", "top_logprobs", "tools", "functions", "logit_bias", "frequency_penalty",
               "presence_penalty", "response_format")


@dataclass
class HTTPLimits:
    workers: int = 64  # connections served at once (each by a thread); more wait for one
    max_waiting: int = 256  # connections waiting for a thread; beyond that a 503
    backlog: int = 1024  # the listen queue (the kernel caps it at net.core.somaxconn)
    idle_timeout_s: float = 5.0  # a connection with no request starting in this long is closed
    header_timeout_s: float = 10.0  # a request line and headers must arrive within this from their first byte
    body_timeout_s: float = 30.0  # to receive a request body (408 after it), or to send one reply chunk
    max_body_mb: float = 4.0  # larger request bodies get 413

    def __post_init__(self) -> None:
        if self.workers < 1 or self.max_waiting < 0 or self.backlog < 1:
            raise ConfigError(f"http.workers={self.workers} and http.backlog={self.backlog} must be >= 1, "
                              f"http.max_waiting={self.max_waiting} >= 0")
        timeouts = {"idle_timeout_s": self.idle_timeout_s, "header_timeout_s": self.header_timeout_s,
                    "body_timeout_s": self.body_timeout_s, "max_body_mb": self.max_body_mb}
        if bad := [f"http.{k}={v}" for k, v in timeouts.items() if not 0 < v < math.inf]:
            raise ConfigError(f"{', '.join(bad)}: must be > 0 and finite")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)


@dataclass(frozen=True)
class ServerSettings:
    model_name: str  # the name clients send as ``model``
    api_key: str | None = field(repr=False)  # None: no authentication; never printed
    reasoning: str = "separate"  # "separate": reasoning_content; "inline": <think> kept in content
    max_new_tokens: int = 2048  # default and cap of max_tokens
    max_tokens_over_cap: str = "reject"  # "reject": a 400 naming the cap; "clamp": decode up to the cap
    max_n: int = 16
    context_len: int = 0  # prompt + max_tokens must fit (0: no check)
    batch_size: int = 64  # rows the engine decodes together
    http: HTTPLimits = field(default_factory=HTTPLimits)

    def __post_init__(self) -> None:
        if self.reasoning not in REASONING_FORMATS:
            raise ConfigError(f"reasoning={self.reasoning!r}; choose one of {', '.join(REASONING_FORMATS)}")
        if self.max_tokens_over_cap not in OVER_CAP:
            raise ConfigError(f"max_tokens_over_cap={self.max_tokens_over_cap!r}; choose one of {', '.join(OVER_CAP)}")


class RequestError(Exception):
    """A request the server refuses: sent back as an OpenAI-style error with this status."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param = status, param


@dataclass
class Job:
    """One request queued for the engine; ``steps`` (streaming) gets ``[(sample, token), ...]`` per step, then None."""

    prompt: list[int]
    params: SamplingParams
    seed: int | None
    steps: queue.Queue | None = None
    future: Future = field(default_factory=Future)
    cancelled: bool = False  # set by the connection thread when its client went away: the rows stop


class EngineWorker:
    """One thread that owns the engine; ``submit`` from any thread, batches formed from what is queued."""

    def __init__(self, engine: Sampler, batch_size: int) -> None:
        self.engine, self.batch_size = engine, batch_size
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.seeds = itertools.count(1)
        self.largest_batch = 0  # most requests decoded together so far (for tests and logs)
        self.thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self.thread.start()

    def submit(self, prompt: list[int], params: SamplingParams, seed: int | None,
               steps: queue.Queue | None = None) -> Job:
        job = Job(prompt, params, seed, steps)
        self.jobs.put(job)
        return job

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=10)
        while True:  # requests still queued fail rather than wait for ever
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self._finish(job, error=RuntimeError("the server is shutting down"))

    def _loop(self) -> None:
        while (job := self.jobs.get()) is not None:
            pending = [job]
            rows = job.params.n
            while rows < self.batch_size:  # take whatever queued up while the last batch ran
                try:
                    nxt = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.jobs.put(None)
                    break
                pending.append(nxt)
                rows += nxt.params.n
            for j in pending:
                if j.cancelled:  # its client left while it waited
                    self._finish(j, result=[])
            for group in _groups([j for j in pending if not j.cancelled]):
                self._run(group)

    def _run(self, group: list[Job]) -> None:
        seed = group[0].seed if group[0].seed is not None else next(self.seeds)
        # Only a streamed request asks for the per-step hook: it costs a device sync per step.
        hook = {"on_step": _step_hook(group)} if any(j.steps is not None for j in group) else {}
        try:
            outs = self.engine.sample([j.prompt for j in group], group[0].params, seed=seed,
                                      batch_size=self.batch_size, show_progress=False, **hook)
        except Exception as e:  # the request fails with a 500; the server keeps serving
            for j in group:
                self._finish(j, error=e)
            return
        self.largest_batch = max(self.largest_batch, len(group))
        for j, out in zip(group, outs, strict=True):
            self._finish(j, result=out)

    @staticmethod
    def _finish(job: Job, result: list[Completion] | None = None, error: BaseException | None = None) -> None:
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
        if job.steps is not None:
            job.steps.put(None)


def _step_hook(group: list[Job]) -> Callable[[list[tuple[int, int]], list[int]], list[int]]:
    """The engine's ``on_step`` for one batch: each step's tokens to their job, the cancelled jobs back."""
    def on_step(rows: list[tuple[int, int]], tokens: list[int]) -> list[int]:
        per_job: dict[int, list[tuple[int, int]]] = {}
        for (p, j), token in zip(rows, tokens, strict=True):
            per_job.setdefault(p, []).append((j, token))
        for p, items in per_job.items():
            if group[p].steps is not None:
                group[p].steps.put(items)
        return [p for p, job in enumerate(group) if job.cancelled]

    return on_step


def _groups(jobs: list[Job]) -> list[list[Job]]:
    """Jobs that can share one ``sample`` call: the same params and no seed; a seeded job goes alone."""
    groups: dict[Any, list[Job]] = {}
    for i, j in enumerate(jobs):
        groups.setdefault((j.params, None) if j.seed is None else ("seeded", i), []).append(j)
    return list(groups.values())


# --------------------------------------------------------------------------------------------------------
# Request parsing


@dataclass
class ChatRequest:
    prompt: list[int]
    params: SamplingParams
    seed: int | None
    stream: bool
    think_open: bool  # the prompt ends inside an open <think> (the template opened it)


def parse_messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list of {role, content}", "messages")
    out = []
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise RequestError(400, f"messages[{i}].content: only text parts ({{type: text, text}}) are "
                                        "supported", "messages")
            content = "".join(p["text"] for p in content)
        role = {"developer": "system"}.get(m.get("role"), m.get("role")) if isinstance(m, dict) else None
        if not isinstance(content, str) or role not in ("system", "user", "assistant"):
            raise RequestError(400, f"messages[{i}] needs a role (system, user or assistant) and a text content",
                               "messages")
        out.append({"role": role, "content": content})
    return out


def _number(body: dict, name: str, kind: type, default: Any, low: float, high: float, open_low: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return default
    what = "an integer" if kind is int else "a number"
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise RequestError(400, f"'{name}' must be {what}, got {json.dumps(value)[:40]}", name)
    if kind is int and value != int(value):
        raise RequestError(400, f"'{name}' must be {what}, got {value}", name)
    if not (low < value if open_low else low <= value) or value > high:
        raise RequestError(400, f"'{name}'={value} must be in {'(' if open_low else '['}{low}, {high}]", name)
    return kind(value)


def check_fields(body: dict, settings: ServerSettings) -> None:
    """The fields that need no tokenizing: model, unsupported options, stream."""
    if body.get("model") != settings.model_name:
        raise RequestError(404, f"model {body.get('model')!r} not found; this server serves "
                                f"{settings.model_name!r}", "model")
    for name in UNSUPPORTED:
        value = body.get(name)
        if value not in (None, False, 0, [], {}) and not (name == "response_format" and value == {"type": "text"}):
            raise RequestError(400, f"'{name}' is not supported by thinktune serve; leave it out", name)
    if not isinstance(body.get("stream", False), bool):
        raise RequestError(400, "'stream' must be true or false", "stream")
    if not isinstance(body.get("stream_options") or {}, dict):
        raise RequestError(400, "'stream_options' must be an object", "stream_options")


def sampling_params(body: dict, settings: ServerSettings, prompt_len: int) -> SamplingParams:
    """The request's sampling settings, checked against the server's limits (``max_tokens`` clamped to the cap
    where ``settings.max_tokens_over_cap`` says so)."""
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    asked = _number(body, name, int, None, 1, math.inf)
    n = _number(body, "n", int, 1, 1, settings.max_n)
    temperature = _number(body, "temperature", float, 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", float, 1.0, 0.0, 1.0, open_low=True)
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if (not isinstance(stop, list | tuple) or len(stop) > MAX_STOPS
            or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stop)):
        raise RequestError(400, f"'stop' must be a string or a list of at most {MAX_STOPS} strings of 1 to "
                                f"{MAX_STOP_CHARS} characters", "stop")
    if temperature == 0 and n > 1:
        raise RequestError(400, "temperature 0 is greedy decoding: n must be 1", "n")
    room = settings.context_len - prompt_len if settings.context_len else math.inf
    if room < 1:
        raise RequestError(400, f"the prompt has {prompt_len} tokens; the model's context is "
                                f"{settings.context_len} tokens", "messages")
    cap = int(min(settings.max_new_tokens, room))
    if asked is not None and asked > cap and settings.max_tokens_over_cap == "reject":
        why = (f"this server's cap is {cap} (serve max_new_tokens)" if cap == settings.max_new_tokens else
               f"the prompt has {prompt_len} of the model's {settings.context_len} tokens")
        raise RequestError(400, f"'{name}'={asked} must be in [1, {cap}]: {why}; serve with "
                                "max_tokens_over_cap=clamp to decode such requests up to the cap instead", name)
    return SamplingParams(n=n, temperature=temperature or 1.0, greedy=temperature == 0, top_p=top_p,
                          max_new_tokens=min(asked or cap, cap), stop=tuple(stop))


def max_token_chars(tokenizer: PreTrainedTokenizerBase) -> int:
    """The most characters one token of ``tokenizer`` stands for: the longest vocabulary entry. A byte-level
    entry is as long as its bytes and a SentencePiece one as its characters, so neither is under-counted."""
    return max(map(len, tokenizer.get_vocab()), default=1)


def check_length(messages: list[dict], settings: ServerSettings, chars_per_token: int) -> None:
    """Refuse messages that cannot fit the context whatever their tokens, before tokenizing them: a text of ``c``
    characters is at least ``c / chars_per_token`` tokens. (A tokenizer whose normalizer drops characters could
    make fewer; such a text is refused all the same.)"""
    chars = sum(len(m["content"]) for m in messages)
    if settings.context_len and chars > (settings.context_len - 1) * chars_per_token:
        raise RequestError(400, f"the messages have {chars} characters, at least {-(-chars // chars_per_token)} "
                                f"tokens (a token is at most {chars_per_token} characters); the model's context "
                                f"is {settings.context_len} tokens", "messages")


# --------------------------------------------------------------------------------------------------------
# Replies


def message(text: str, reasoning: str) -> dict:
    """The assistant message for one completion, with the think part split out or kept inline."""
    if reasoning == "inline":
        return {"role": "assistant", "content": text}
    thought, answer = split_think(text)
    return {"role": "assistant", "content": answer.strip(),
            "reasoning_content": None if thought is None else thought.strip()}


def completion_body(completions: list[Completion], prompt_len: int, settings: ServerSettings) -> dict:
    generated = sum(len(c.token_ids) for c in completions)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": settings.model_name,
        "choices": [{"index": i, "message": message(c.text, settings.reasoning),
                     "finish_reason": FINISH_REASONS[c.finish_reason]} for i, c in enumerate(completions)],
        "usage": {"prompt_tokens": prompt_len, "completion_tokens": generated,
                  "total_tokens": prompt_len + generated},
    }


def stream_fields(text: str, reasoning: str, think_open: bool, final: bool) -> dict[str, str]:
    """What of a reply's text so far can be sent for sure, per message field.

    Held back until more text comes: a start that may still become ``<think>``, the end of the reasoning that
    may be the start of ``</think>``, and trailing whitespace (both fields are stripped, as in ``message``).
    """
    if reasoning == "inline":
        return {"content": text}
    if not think_open:
        body = text.lstrip()
        if body.startswith(THINK_OPEN):
            think_open, text = True, body[len(THINK_OPEN):]
        elif not final and THINK_OPEN.startswith(body):
            return {}
    if not think_open:
        return {"content": text.strip()}
    end = text.find(THINK_CLOSE)
    if end < 0:
        held = 0 if final else next((k for k in range(len(THINK_CLOSE) - 1, 0, -1)
                                     if text.endswith(THINK_CLOSE[:k])), 0)
        return {"reasoning_content": text[:len(text) - held].strip()}
    return {"reasoning_content": text[:end].strip(), "content": text[end + len(THINK_CLOSE):].strip()}


class ChoiceStream:
    """One choice of a streamed reply: tokens in as they are drawn, message deltas out.

    Text is decoded incrementally (a window of tokens, never the whole reply again), the newest token is held back
    (it may be the EOS the final text leaves out), and so are characters that may yet be the start of a stop
    string or of an incomplete UTF-8 sequence. The finished completion's text then sends what is left; a delta
    is only ever sent when it extends what was sent, so the streamed text is a prefix of the final one.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: tuple[str, ...], reasoning: str,
                 think_open: bool) -> None:
        self.decode = functools.partial(tokenizer.decode, skip_special_tokens=False)
        self.stops, self.reasoning, self.think_open = stops, reasoning, think_open
        self.tokens: list[int] = []
        self.prefix = self.read = 0  # decode window: tokens[prefix:read] were decoded into ``text`` last
        self.text = ""
        self.sent: dict[str, str] = {"reasoning_content": "", "content": ""}

    def delta(self, final: str | None = None) -> dict[str, str]:
        """The message delta to send now (``final``: the finished completion's text)."""
        text = self._safe_text() if final is None else final
        out = {}
        for key, value in stream_fields(text, self.reasoning, self.think_open, final is not None).items():
            old = self.sent[key]
            if len(value) > len(old) and value.startswith(old):
                out[key], self.sent[key] = value[len(old):], value
        return out

    def _safe_text(self) -> str:
        upto = len(self.tokens) - 1  # the newest token may be the EOS
        if upto > self.read:
            before = self.decode(self.tokens[self.prefix:self.read])
            now = self.decode(self.tokens[self.prefix:upto])
            if len(now) > len(before) and not now.endswith("\ufffd"):  # a whole character more
                self.text += now[len(before):]
                self.prefix, self.read = self.read, upto
        ends = [self.text.find(s) + len(s) for s in self.stops if s in self.text]
        if ends:
            return self.text[:min(ends)]
        held = max(map(len, self.stops), default=1) - 1  # may be the start of a stop string
        return self.text[:len(self.text) - held]


class _ClientGone(Exception):
    """The client closed its connection while its reply was being generated."""


# --------------------------------------------------------------------------------------------------------
# HTTP


class _DeadlineReader(io.RawIOBase):
    """A socket's receiving side with a deadline for a whole phase (headers, body), not for each ``recv``: a
    client sending a byte every few seconds is cut off all the same. ``arm(s, then=t)``: ``s`` seconds for the
    first byte, then ``t`` from it on."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.deadline, self.then = sock, math.inf, None

    def arm(self, seconds: float, then: float | None = None) -> None:
        self.deadline, self.then = time.monotonic() + seconds, then

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the client took too long")
        self.sock.settimeout(left)
        n = self.sock.recv_into(buffer)
        if n and self.then is not None:
            self.deadline, self.then = time.monotonic() + self.then, None
        return n


class ChatServer(HTTPServer):
    """HTTP/1.1 on a pool of ``http.workers`` threads, fed from a queue of accepted connections."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 settings: ServerSettings, tokenizer: PreTrainedTokenizerBase, worker: EngineWorker,
                 log: Callable[[str], None] | None = None) -> None:
        self.request_queue_size = settings.http.backlog  # read by listen() in server_activate
        self.settings, self.tokenizer, self.worker, self.log = settings, tokenizer, worker, log
        self.chars_per_token = max_token_chars(tokenizer)
        self.waiting: queue.Queue[tuple[socket.socket, Any] | None] = queue.Queue()
        self.refused: queue.Queue[socket.socket | None] = queue.Queue()
        self.busy, self.lock = 0, threading.Lock()  # connection threads inside a connection
        super().__init__(address, handler)
        self.threads = [threading.Thread(target=self._serve_connections, name=f"http-{i}", daemon=True)
                        for i in range(settings.http.workers)]
        self.threads.append(threading.Thread(target=self._refuse_connections, name="http-503", daemon=True))
        for t in self.threads:
            t.start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def process_request(self, request: Any, client_address: Any) -> None:  # the accepting thread
        limits = self.settings.http
        if self.waiting.qsize() + self.busy >= limits.workers + limits.max_waiting:
            self.refused.put(request)
        else:
            self.waiting.put((request, client_address))

    def _serve_connections(self) -> None:
        while (item := self.waiting.get()) is not None:
            request, address = item
            with self.lock:
                self.busy += 1
            try:
                self.finish_request(request, address)
            except Exception:
                self.handle_error(request, address)
            finally:
                with self.lock:
                    self.busy -= 1
                self.shutdown_request(request)

    def _refuse_connections(self) -> None:
        """503 to connections beyond the queue; the request is read first (briefly), because closing a socket
        with unread data resets it, and the client would see a reset rather than the reply."""
        data = json.dumps({"error": {"message": "the server is busy; retry later", "type": "server_error",
                                     "param": None, "code": None}}).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: "
                f"{len(data)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
        while (sock := self.refused.get()) is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(0.2)
                with contextlib.suppress(TimeoutError):
                    sock.recv(65536)
                sock.sendall(head + data)
                _linger(sock, 0.5)
            sock.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # a client that went away: nothing to report
            return
        super().handle_error(request, client_address)

    def server_close(self) -> None:
        super().server_close()
        for _ in self.threads:
            self.waiting.put(None)
        self.refused.put(None)
        self.worker.close()


def _linger(sock: socket.socket, seconds: float, limit: int = 8 * 2**20) -> None:
    """Half-close, then read and drop what the client still sends (for at most ``seconds`` and ``limit`` bytes),
    so that the close does not reset the connection before the client has read the reply."""
    sock.shutdown(socket.SHUT_WR)
    deadline, got = time.monotonic() + seconds, 0
    while got < limit and (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            return
        got += len(chunk)


class ChatHandler(BaseHTTPRequestHandler):
    """The two endpoints. Subclass and override ``do_POST`` to put a layer in front (tests inject faults)."""

    server: ChatServer
    protocol_version = "HTTP/1.1"  # keep-alive: the openai client reuses connections
    body_read = True  # False from a request's headers until its body has been read

    def setup(self) -> None:
        super().setup()
        self.reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self) -> None:
        limits = self.server.settings.http
        self.reader.arm(limits.idle_timeout_s, then=limits.header_timeout_s)
        super().handle_one_request()  # a TimeoutError while waiting for the request closes the connection

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.reader.arm(self.server.settings.http.body_timeout_s)
        self.body_read = self.command != "POST"
        return ok

    def do_GET(self) -> None:
        try:
            self._authorize()
            if self.path.rstrip("/") != "/v1/models":
                raise RequestError(404, f"no route GET {self.path}; use /v1/models or POST /v1/chat/completions")
            name = self.server.settings.model_name
            self._send_json(200, {"object": "list", "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "thinktune"}]})
        except RequestError as e:
            self._send_error(e)

    def do_POST(self) -> None:
        try:
            self._authorize()
            if self.path.rstrip("/") != "/v1/chat/completions":
                raise RequestError(404, f"no route POST {self.path}; use /v1/chat/completions")
            request = self._prepare(self._read_json())
            reply = None if request.stream else self._complete(request)
        except RequestError as e:
            self._send_error(e)
            return
        except (ValueError, TypeError, OverflowError) as e:  # a field of the wrong shape, a template error
            self._send_error(RequestError(400, f"bad request: {type(e).__name__}: {e}"))
            return
        except Exception as e:  # a reply, never a dropped connection, which the client would retry
            self._send_error(RequestError(500, f"server error: {type(e).__name__}: {e}"))
            return
        if reply is None:
            self._stream(request)
        else:
            self._send_json(200, reply)

    def _prepare(self, body: dict) -> ChatRequest:
        """Every field checked, the length bounded by characters, then the prompt tokenized and fitted."""
        settings = self.server.settings
        check_fields(body, settings)
        messages = parse_messages(body)
        sampling_params(body, settings, prompt_len=0)  # field values, before any tokenizing
        seed = _number(body, "seed", int, None, *SEED_RANGE)
        check_length(messages, settings, self.server.chars_per_token)
        prompt = render_prompt(self.server.tokenizer, messages)
        tail = self.server.tokenizer.decode(prompt[-8:], skip_special_tokens=False).rstrip()
        return ChatRequest(prompt, sampling_params(body, settings, len(prompt)), seed, bool(body.get("stream")),
                           think_open=tail.endswith(THINK_OPEN))

    def _complete(self, request: ChatRequest) -> dict:
        job = self.server.worker.submit(request.prompt, request.params, request.seed)
        try:
            completions = job.future.result()
        except Exception as e:
            raise RequestError(500, f"generation failed: {type(e).__name__}: {e}") from e
        return completion_body(completions, len(request.prompt), self.server.settings)

    def _stream(self, request: ChatRequest) -> None:
        """Server-sent events as the tokens are drawn: a role chunk, text deltas, each choice's finish reason,
        the usage, ``[DONE]``. A client that disconnects cancels its rows in the engine."""
        settings, n = self.server.settings, request.params.n
        job = self.server.worker.submit(request.prompt, request.params, request.seed, steps=queue.Queue())
        choices = [ChoiceStream(self.server.tokenizer, request.params.stop, settings.reasoning, request.think_open)
                   for _ in range(n)]
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": settings.model_name}
        try:
            self._write(200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                              "Connection": "close"}, b"", raise_errors=True)
            self._event(head | {"choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                             "finish_reason": None} for i in range(n)]})
            done = False
            while not done:
                items, done = self._next_tokens(job)
                for j, token in items:
                    choices[j].tokens.append(token)
                self._deltas(head, choices, {j for j, _ in items}, None)
            try:
                completions = job.future.result()
            except Exception as e:
                self._event({"error": {"message": f"generation failed: {type(e).__name__}: {e}",
                                       "type": "server_error", "param": None, "code": None}})
                return
            self._deltas(head, choices, set(range(n)), completions)
            self._event(head | {"choices": [{"index": i, "delta": {}, "finish_reason": FINISH_REASONS[
                c.finish_reason]} for i, c in enumerate(completions)]})
            self._event(head | {"choices": [], "usage": completion_body(completions, len(request.prompt),
                                                                        settings)["usage"]})
            self.wfile.write(b"data: [DONE]\n\n")
        except (OSError, _ClientGone):  # the client went away (or stopped reading): nothing more to send
            self.close_connection = True
        finally:
            job.cancelled = not job.future.done()  # its rows stop if the reply did not get to the end

    def _next_tokens(self, job: Job) -> tuple[list[tuple[int, int]], bool]:
        """The tokens drawn since the last call, ``[(choice, token), ...]``, and whether the job has ended;
        while none come, checks every half second that the client is still there."""
        assert job.steps is not None
        while True:
            try:
                batch = job.steps.get(timeout=0.5)
                break
            except queue.Empty:
                if self._client_gone():
                    raise _ClientGone from None
        items: list[tuple[int, int]] = []
        while batch is not None:
            items += batch
            try:
                batch = job.steps.get_nowait()
            except queue.Empty:
                return items, False
        return items, True

    def _deltas(self, head: dict, choices: list[ChoiceStream], which: set[int],
                completions: list[Completion] | None) -> None:
        for j in sorted(which):
            delta = choices[j].delta(None if completions is None else completions[j].text)
            if delta:
                self._event(head | {"choices": [{"index": j, "delta": delta, "finish_reason": None}]})

    def _event(self, obj: dict) -> None:
        self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())

    def _client_gone(self) -> bool:
        """True when the client has closed its side (readable, and a peek reads nothing) or reset it."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _authorize(self) -> None:
        key = self.server.settings.api_key
        sent = self.headers.get("Authorization", "").encode()
        if key is not None and not hmac.compare_digest(sent, f"Bearer {key}".encode()):  # constant time
            raise RequestError(401, "invalid or missing API key; send Authorization: Bearer <key>")

    def handle_expect_100(self) -> bool:
        """``Expect: 100-continue``: a body that would be refused is refused before the client sends it."""
        try:
            self._body_length()
        except RequestError as e:
            self._send_error(e)
            return False
        return super().handle_expect_100()

    def _body_length(self) -> int:
        """The Content-Length, checked (411, 400, 413) before anything is read."""
        limits = self.server.settings.http
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding") or not lengths:
            raise RequestError(411, "send the JSON body with a Content-Length header (chunked bodies are not "
                                    "accepted)")
        if len(set(lengths)) > 1 or not (lengths[0].isascii() and lengths[0].isdigit()):
            raise RequestError(400, f"Content-Length {', '.join(lengths)[:60]!r} is not one byte count")
        length = int(lengths[0])
        if length > limits.max_body_bytes:
            raise RequestError(413, f"the body has {length} bytes; this server takes at most "
                                    f"{limits.max_body_bytes} (serve http.max_body_mb={limits.max_body_mb:g})")
        return length

    def _read_json(self) -> dict:
        """The body as a JSON object, read against the body deadline (408)."""
        limits = self.server.settings.http
        length = self._body_length()
        try:
            data = self.rfile.read(length)
        except TimeoutError:
            raise RequestError(408, f"the body did not arrive within {limits.body_timeout_s:g} s") from None
        if len(data) < length:
            raise RequestError(400, f"the body ended after {len(data)} of its {length} bytes")
        self.body_read = True
        try:
            body = json.loads(data or b"null")
        except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, nested too deep
            raise RequestError(400, f"the request body is not valid JSON ({type(e).__name__}: {e})"[:300]) from None
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        return body

    def _send_error(self, e: RequestError) -> None:
        kind = {401: "authentication_error", 404: "not_found_error", 500: "server_error"}
        # "Connection: close": the request body may be unread (a 401 comes before it is read), and the next
        # request must not be parsed from its leftover bytes.
        self._send_json(e.status, {"error": {"message": str(e), "type": kind.get(e.status, "invalid_request_error"),
                                             "param": e.param, "code": None}}, {"Connection": "close"})
        if not self.body_read:  # the client may still be sending it: let it, so it reads the reply
            with contextlib.suppress(OSError):
                _linger(self.connection, 1.0)

    def _send_json(self, status: int, obj: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self._write(status, {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})},
                    data)

    def _write(self, status: int, headers: dict[str, str], data: bytes, raise_errors: bool = False) -> None:
        if self.server.waiting.qsize():  # connections wait for a thread: don't hold this one for keep-alive
            headers = {**headers, "Connection": "close"}
        try:
            self.connection.settimeout(self.server.settings.http.body_timeout_s)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (timed out, closed) or stopped reading
            self.close_connection = True
            if raise_errors:
                raise

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if self.server.log is not None:
            self.server.log(f"{self.address_string()} {format % args}")


def start(settings: ServerSettings, tokenizer: PreTrainedTokenizerBase, engine: Sampler, host: str = "127.0.0.1",
          port: int = 0, handler: type[BaseHTTPRequestHandler] = ChatHandler,
          log: Callable[[str], None] | None = None) -> ChatServer:
    """Bind a server (port 0: a free port, see ``server.url``); call ``serve_forever`` to run it.

    Raises:
        ConfigError: the address cannot be bound.
    """
    worker = EngineWorker(engine, settings.batch_size)
    try:
        return ChatServer((host, port), handler, settings, tokenizer, worker, log)
    except OSError as e:
        worker.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror}); choose another port=") from None
