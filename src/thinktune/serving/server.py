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
  A streamed reply splits reasoning at the first ``</think>``, the plain reply at the last; they agree on a
  well-formed ``<think>R</think>S``.
- ``usage`` counts the prompt once and every choice's generated tokens.
- With an API key set, requests without ``Authorization: Bearer <key>`` get 401.

HTTP (``HTTPLimits``): the standard library's HTTP/1.1 parser behind a bounded pool of connection threads, with
deadlines for idle connections, headers and bodies (408), and a cap on body size (413); beyond the pool's queue,
503. Concurrency: connection threads parse and validate requests, then queue them for one engine thread
(``EngineWorker``), which batches the requests that queued up together.

This module wires the pieces together; each lives in a module of its own:

- ``serving.httpd``: the hardened HTTP/1.1 server and handler (pool, deadlines, body caps, JSON replies), and
  why not uvicorn;
- ``serving.api``: the request fields and their checks, the sampling settings, the reply bodies;
- ``serving.stream``: streamed replies (text held back until it is sure, server-sent events);
- ``serving.worker``: the engine thread and its batching.

The names that callers import from here (``start``, ``ServerSettings``, ``HTTPLimits``, ``ChatHandler``, ...)
stay importable from here: see ``__all__``.
"""

from __future__ import annotations

import hmac
import queue
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

from transformers import PreTrainedTokenizerBase

from thinktune.errors import ConfigError
from thinktune.rollout.service import Sampler
from thinktune.serving.api import (
    ChatRequest,
    ServerSettings,
    chat_request,
    completion_body,
    max_token_chars,
    message,
)
from thinktune.serving.httpd import HTTPLimits, JSONHandler, PooledHTTPServer, RequestError
from thinktune.serving.stream import ChoiceStream, ClientGone, sse_events
from thinktune.serving.worker import EngineWorker

# What callers import from here; the names defined in the other serving modules are re-exported, so that
# ``serving.serve``, the tests and the benchmark keep one import path.
__all__ = ["ChatHandler", "ChatServer", "ChoiceStream", "EngineWorker", "HTTPLimits", "RequestError",
           "ServerSettings", "message", "start"]


class ChatServer(PooledHTTPServer):
    """The pooled HTTP server with what the endpoints need: settings, tokenizer and the engine thread."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 settings: ServerSettings, tokenizer: PreTrainedTokenizerBase, worker: EngineWorker,
                 log: Callable[[str], None] | None = None) -> None:
        self.settings, self.tokenizer, self.worker = settings, tokenizer, worker
        self.chars_per_token = max_token_chars(tokenizer)
        super().__init__(address, handler, settings.http, log)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def server_close(self) -> None:
        super().server_close()
        self.worker.close()


class ChatHandler(JSONHandler):
    """The two endpoints. Subclass and override ``do_POST`` to put a layer in front (tests inject faults)."""

    server: ChatServer

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
            server = self.server
            request = chat_request(self._read_json(), server.settings, server.tokenizer, server.chars_per_token)
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

    def _complete(self, request: ChatRequest) -> dict:
        job = self.server.worker.submit(request.prompt, request.params, request.seed)
        try:
            completions = job.future.result()
        except Exception as e:
            raise RequestError(500, f"generation failed: {type(e).__name__}: {e}") from e
        return completion_body(completions, len(request.prompt), self.server.settings)

    def _stream(self, request: ChatRequest) -> None:
        """Server-sent events as the tokens are drawn (``sse_events``). A client that disconnects cancels its
        rows in the engine."""
        job = self.server.worker.submit(request.prompt, request.params, request.seed, steps=queue.Queue())
        try:
            self._write(200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                              "Connection": "close"}, b"", raise_errors=True)
            for event in sse_events(job, request, self.server.tokenizer, self.server.settings, self._client_gone):
                self.wfile.write(event)
        except (OSError, ClientGone):  # the client went away (or stopped reading): nothing more to send
            self.close_connection = True
        finally:
            job.cancelled = not job.future.done()  # its rows stop if the reply did not get to the end

    def _authorize(self) -> None:
        key = self.server.settings.api_key
        sent = self.headers.get("Authorization", "").encode()
        if key is not None and not hmac.compare_digest(sent, f"Bearer {key}".encode()):  # constant time
            raise RequestError(401, "invalid or missing API key; send Authorization: Bearer <key>")


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
