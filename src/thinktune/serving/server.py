"""An OpenAI-compatible chat-completions server over a rollout engine (``thinktune serve``).

Endpoints: ``POST /v1/chat/completions`` and ``GET /v1/models``, in the OpenAI wire format, so that the
official ``openai`` client (and ``thinktune distill``) can use a local checkpoint as a teacher.

- Messages are rendered with the model's chat template (``data.chat.render_prompt``), which adds the
  configured system prompt when the request has no system message, as in training.
- The ``<think>`` part is returned in ``message.reasoning_content`` and the rest in ``message.content``
  (DeepSeek's and vLLM's convention) by default; ``reasoning="inline"`` returns the whole text, tags
  included, in ``content``.
- Request fields: ``model``, ``messages``, ``n``, ``temperature`` (0: greedy), ``top_p``, ``max_tokens`` or
  ``max_completion_tokens``, ``stop``, ``seed``, ``stream`` (the finished reply sent as one SSE chunk per
  choice; tokens are not streamed as they are drawn). Other fields are ignored.
- ``usage`` counts the prompt once and every choice's generated tokens.
- With an API key set, requests without ``Authorization: Bearer <key>`` get 401.

Concurrency: handler threads parse and validate requests, then queue them for one engine thread
(``EngineWorker``), which owns the engine. Requests that arrive while a batch runs are decoded together in
the next one when their sampling settings agree, so concurrent clients share forward passes. A request with
a ``seed`` is decoded alone, because a row's draws depend on the rows that share its batch.
"""

from __future__ import annotations

import hmac
import itertools
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from transformers import PreTrainedTokenizerBase

from thinktune.data.chat import render_prompt
from thinktune.errors import ConfigError
from thinktune.rewards.verify import split_think
from thinktune.rollout.sampler import Completion, SamplingParams
from thinktune.rollout.service import Sampler

REASONING_FORMATS = ("separate", "inline")
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}


@dataclass(frozen=True)
class ServerSettings:
    model_name: str  # the name clients send as ``model``
    api_key: str | None = field(repr=False)  # None: no authentication; never printed
    reasoning: str = "separate"  # "separate": reasoning_content; "inline": <think> kept in content
    max_new_tokens: int = 2048  # default and upper limit of max_tokens
    max_n: int = 16
    context_len: int = 0  # prompt + max_tokens must fit (0: no check)
    batch_size: int = 64  # rows the engine decodes together

    def __post_init__(self) -> None:
        if self.reasoning not in REASONING_FORMATS:
            raise ConfigError(f"reasoning={self.reasoning!r}; choose one of {', '.join(REASONING_FORMATS)}")


class RequestError(Exception):
    """A request the server refuses: sent back as an OpenAI-style error with this status."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param = status, param


@dataclass
class _Job:
    prompt: list[int]
    params: SamplingParams
    seed: int | None
    future: Future


class EngineWorker:
    """One thread that owns the engine; ``submit`` from any thread, batches formed from what is queued."""

    def __init__(self, engine: Sampler, batch_size: int) -> None:
        self.engine, self.batch_size = engine, batch_size
        self.jobs: queue.Queue[_Job | None] = queue.Queue()
        self.seeds = itertools.count(1)
        self.largest_batch = 0  # most requests decoded together so far (for tests and logs)
        self.thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self.thread.start()

    def submit(self, prompt: list[int], params: SamplingParams, seed: int | None) -> Future:
        job = _Job(prompt, params, seed, Future())
        self.jobs.put(job)
        return job.future

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=10)

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
            for group in _groups(pending):
                self._run(group)

    def _run(self, group: list[_Job]) -> None:
        seed = group[0].seed if group[0].seed is not None else next(self.seeds)
        try:
            outs = self.engine.sample([j.prompt for j in group], group[0].params, seed=seed,
                                      batch_size=self.batch_size, show_progress=False)
        except Exception as e:  # the request fails with a 500; the server keeps serving
            for j in group:
                j.future.set_exception(e)
            return
        self.largest_batch = max(self.largest_batch, len(group))
        for j, out in zip(group, outs, strict=True):
            j.future.set_result(out)


def _groups(jobs: list[_Job]) -> list[list[_Job]]:
    """Jobs that can share one ``sample`` call: the same params and no seed; a seeded job goes alone."""
    groups: dict[Any, list[_Job]] = {}
    for i, j in enumerate(jobs):
        groups.setdefault((j.params, None) if j.seed is None else ("seeded", i), []).append(j)
    return list(groups.values())


# --------------------------------------------------------------------------------------------------------
# Request parsing and reply building


def parse_messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list of {role, content}", "messages")
    out = []
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str) or m.get("role") not in ("system", "user", "assistant"):
            raise RequestError(400, f"messages[{i}] needs a role (system, user or assistant) and a text content",
                               "messages")
        out.append({"role": m["role"], "content": content})
    return out


def _number(body: dict, name: str, kind: type, default: Any, low: float, high: float) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or (kind is int and value != int(value)):
        raise RequestError(400, f"'{name}' must be a {kind.__name__}", name)
    if not low <= value <= high:
        raise RequestError(400, f"'{name}'={value} must be in [{low}, {high}]", name)
    return kind(value)


def sampling_params(body: dict, settings: ServerSettings, prompt_len: int) -> SamplingParams:
    """The request's sampling settings, checked against the server's limits."""
    room = settings.max_new_tokens
    if settings.context_len:
        room = min(room, settings.context_len - prompt_len)
        if room < 1:
            raise RequestError(400, f"the prompt has {prompt_len} tokens; the model's context is "
                                    f"{settings.context_len}", "messages")
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, name, int, room, 1, room)
    n = _number(body, "n", int, 1, 1, settings.max_n)
    temperature = _number(body, "temperature", float, 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", float, 1.0, 1e-6, 1.0)
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, list | tuple) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(400, "'stop' must be a string or a list of non-empty strings", "stop")
    if temperature == 0 and n > 1:
        raise RequestError(400, "temperature 0 is greedy decoding: n must be 1", "n")
    return SamplingParams(n=n, temperature=temperature or 1.0, greedy=temperature == 0, top_p=top_p,
                          max_new_tokens=max_tokens, stop=tuple(stop))


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


def stream_events(body: dict) -> list[dict]:
    """A finished reply as chat.completion.chunk events: per choice its message, then its finish reason."""
    head = {k: body[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    events = []
    for choice in body["choices"]:
        events.append(head | {"choices": [{"index": choice["index"], "delta": choice["message"],
                                           "finish_reason": None}]})
        events.append(head | {"choices": [{"index": choice["index"], "delta": {},
                                           "finish_reason": choice["finish_reason"]}]})
    events.append(head | {"choices": [], "usage": body["usage"]})
    return events


# --------------------------------------------------------------------------------------------------------
# HTTP


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 settings: ServerSettings, tokenizer: PreTrainedTokenizerBase, worker: EngineWorker,
                 log: Callable[[str], None] | None = None) -> None:
        super().__init__(address, handler)
        self.settings, self.tokenizer, self.worker, self.log = settings, tokenizer, worker, log

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def server_close(self) -> None:
        super().server_close()
        self.worker.close()


class ChatHandler(BaseHTTPRequestHandler):
    """The two endpoints. Subclass and override ``do_POST`` to put a layer in front (tests inject faults)."""

    server: ChatServer
    protocol_version = "HTTP/1.1"  # keep-alive: the openai client reuses connections

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
            body = self._read_json()
            reply = self._complete(body)
        except RequestError as e:
            self._send_error(e)
            return
        except (ValueError, TypeError, OverflowError) as e:  # a field of the wrong shape, a template error
            self._send_error(RequestError(400, f"bad request: {type(e).__name__}: {e}"))
            return
        except Exception as e:  # a reply, never a dropped connection, which the client would retry
            self._send_error(RequestError(500, f"server error: {type(e).__name__}: {e}"))
            return
        if body.get("stream"):
            self._send_stream(stream_events(reply))
        else:
            self._send_json(200, reply)

    def _complete(self, body: dict) -> dict:
        settings = self.server.settings
        if body.get("model") != settings.model_name:
            raise RequestError(404, f"model {body.get('model')!r} not found; this server serves "
                                    f"{settings.model_name!r}", "model")
        prompt = render_prompt(self.server.tokenizer, parse_messages(body))
        params = sampling_params(body, settings, len(prompt))
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise RequestError(400, "'seed' must be an integer", "seed")
        try:
            completions = self.server.worker.submit(prompt, params, seed).result()
        except Exception as e:
            raise RequestError(500, f"generation failed: {type(e).__name__}: {e}") from e
        return completion_body(completions, len(prompt), settings)

    def _authorize(self) -> None:
        key = self.server.settings.api_key
        sent = self.headers.get("Authorization", "").encode()
        if key is not None and not hmac.compare_digest(sent, f"Bearer {key}".encode()):  # constant time
            raise RequestError(401, "invalid or missing API key; send Authorization: Bearer <key>")

    def _read_json(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(400, f"the request body is not valid JSON ({e})") from None
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        return body

    def _send_error(self, e: RequestError) -> None:
        kind = {401: "authentication_error", 404: "not_found_error", 500: "server_error"}
        # "Connection: close": the request body may be unread (a 401 comes before it is read), and the next
        # request must not be parsed from its leftover bytes.
        self._send_json(e.status, {"error": {"message": str(e), "type": kind.get(e.status, "invalid_request_error"),
                                             "param": e.param, "code": None}}, {"Connection": "close"})

    def _send_json(self, status: int, obj: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self._write(status, {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})},
                    data)

    def _send_stream(self, events: list[dict]) -> None:
        data = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        self.close_connection = True
        self._write(200, {"Content-Type": "text/event-stream", "Connection": "close"}, data.encode())

    def _write(self, status: int, headers: dict[str, str], data: bytes) -> None:
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timed out); nothing to do
            self.close_connection = True

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
