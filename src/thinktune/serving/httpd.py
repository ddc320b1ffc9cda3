"""The HTTP layer of ``thinktune serve``: the standard library's HTTP/1.1 parser, hardened for untrusted clients.

It holds what any JSON endpoint behind this server needs and nothing about chat completions, so the endpoints
(``serving.server``) read as request in, reply out:

- ``PooledHTTPServer``: a bounded pool of connection threads. Accepted connections wait in a queue for a thread;
  beyond ``max_waiting`` they get 503.
- ``JSONHandler``: deadlines per phase, not per ``recv``. A connection is closed when no request starts within
  ``idle_timeout_s``, when a request's line and headers take more than ``header_timeout_s`` from its first byte
  (slow-header clients), or its body more than ``body_timeout_s`` (408). Bodies must state a Content-Length
  (411 otherwise) of at most ``max_body_mb`` (413). Replies are JSON, errors OpenAI-style.

Why not uvicorn: 0.54 was measured and not used. With ``timeout_keep_alive=2`` a new connection that sent
nothing, and one sending its headers byte by byte, were both still open after 8 s (it arms no timer before a
connection's first reply), those connections count against ``limit_concurrency`` (four idle sockets made every
request a 503), and it has no body size limit or timeout.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import queue
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from thinktune.errors import ConfigError


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


class RequestError(Exception):
    """A request the server refuses: sent back as an OpenAI-style error with this status."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param = status, param


def error_body(message: str, kind: str, param: str | None = None) -> dict:
    """An OpenAI-style error object: what the ``openai`` client parses into its exception's message."""
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


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


class PooledHTTPServer(HTTPServer):
    """HTTP/1.1 on a pool of ``limits.workers`` threads, fed from a queue of accepted connections."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], limits: HTTPLimits,
                 log: Callable[[str], None] | None = None) -> None:
        self.request_queue_size = limits.backlog  # read by listen() in server_activate
        self.limits, self.log = limits, log
        self.waiting: queue.Queue[tuple[socket.socket, Any] | None] = queue.Queue()
        self.refused: queue.Queue[socket.socket | None] = queue.Queue()
        self.busy, self.lock = 0, threading.Lock()  # connection threads inside a connection
        self.open: set[socket.socket] = set()  # the connections being served, for server_close to end
        super().__init__(address, handler)
        self.threads = [threading.Thread(target=self._serve_connections, name=f"http-{i}", daemon=True)
                        for i in range(limits.workers)]
        self.threads.append(threading.Thread(target=self._refuse_connections, name="http-503", daemon=True))
        for t in self.threads:
            t.start()

    def process_request(self, request: Any, client_address: Any) -> None:  # the accepting thread
        if self.waiting.qsize() + self.busy >= self.limits.workers + self.limits.max_waiting:
            self.refused.put(request)
        else:
            self.waiting.put((request, client_address))

    def _serve_connections(self) -> None:
        while (item := self.waiting.get()) is not None:
            request, address = item
            with self.lock:
                self.busy += 1
                self.open.add(request)
            try:
                self.finish_request(request, address)
            except Exception:
                self.handle_error(request, address)
            finally:
                with self.lock:
                    self.busy -= 1
                    self.open.discard(request)
                self.shutdown_request(request)

    def _refuse_connections(self) -> None:
        """503 to connections beyond the queue; the request is read first (briefly), because closing a socket
        with unread data resets it, and the client would see a reset rather than the reply."""
        data = json.dumps(error_body("the server is busy; retry later", "server_error")).encode()
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
        """Stop accepting, end the connections still open (a client's idle keep-alive would hold its thread until
        the idle deadline) and wait for the threads: none is left running into interpreter shutdown, where a
        thread still inside the tokenizer or torch aborted the process ("terminate called without an active
        exception")."""
        super().server_close()
        for _ in self.threads:
            self.waiting.put(None)
        self.refused.put(None)
        with self.lock:
            for sock in self.open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for t in self.threads:
            t.join(timeout=5)


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


class JSONHandler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1 under the ``PooledHTTPServer``'s limits: phase deadlines, a checked Content-Length,
    the body read as a JSON object, JSON replies and ``RequestError`` replies. Endpoints subclass it."""

    server: PooledHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive: the openai client reuses connections
    body_read = True  # False from a request's headers until its body has been read

    def setup(self) -> None:
        super().setup()
        self.reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self) -> None:
        limits = self.server.limits
        self.reader.arm(limits.idle_timeout_s, then=limits.header_timeout_s)
        super().handle_one_request()  # a TimeoutError while waiting for the request closes the connection

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.reader.arm(self.server.limits.body_timeout_s)
        self.body_read = self.command != "POST"
        return ok

    def _client_gone(self) -> bool:
        """True when the client has closed its side (readable, and a peek reads nothing) or reset it."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

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
        limits = self.server.limits
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
        limits = self.server.limits
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
        self._send_json(e.status, error_body(str(e), kind.get(e.status, "invalid_request_error"), e.param),
                        {"Connection": "close"})
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
            self.connection.settimeout(self.server.limits.body_timeout_s)
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
