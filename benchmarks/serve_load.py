"""``thinktune serve`` under load on loopback: the server, its engine and its clients in one process, bounded.

Run:
    python benchmarks/serve_load.py [--clients 64] [--rounds 3] [--soak 40]

The model is a tiny random Phi3 (the demo's shape: hidden 128, 4 layers; a character tokenizer) built here, as the tests build
theirs, so the run needs no download and no GPU; what is measured is the server, not the model. The HTTP limits
are the defaults except the timeouts and the body cap, shortened so the run takes seconds (printed first).

Prints, one check per line:
- ``concurrent``: ``--clients`` clients, each on its own connection, post at the same moment (a barrier), for
  ``--rounds`` rounds: how many got 200, how many saw a reset or another connection error (must be 0), the wall
  time and the most requests the engine decoded in one batch.
- ``stream``: one streamed reply (greedy, up to 1000 tokens): the time to its first content chunk against the whole reply's time,
  and how many content chunks came.
- ``disconnect``: a streamed request whose client leaves after the first chunk: the finish reason of its
  completion in the engine and how many tokens were drawn of the ``max_tokens`` asked.
- ``idle`` / ``slow-header``: seconds until the server closed a connection that sent nothing, and one that sends
  a header byte every 0.1 s.
- ``bodies``: status codes for Content-Length -1, a Content-Length of 10^12, a 2 MiB body and a 900k-character
  prompt under the cap (refused from its length in characters, before tokenizing), each with its time.
- ``rss``: the process's resident memory after a warm-up (one round and one long stream, which size the engine's
  cache), after the checks above, and every 10 of ``--soak`` more rounds; and the thread count (the pool is
  fixed). It levels off; what grows early is, as far as measured, the allocator's per-thread arenas and the lean
  decoder's scratch views, one set per live-row count (at most the batch size; the count of live tensors rises
  by a few per round, then stops).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import threading
import time
from contextlib import suppress
from pathlib import Path

from thinktune.modeling.models import build_tiny_model, train_char_tokenizer
from thinktune.rollout.sampler import RolloutEngine
from thinktune.serving.server import HTTPLimits, ServerSettings, start

CORPUS = ["user assistant system", "What is 2+3? 7*8 1+1 Be brief. Q A",
          "<think>2+3=5</think>\\boxed{5} 0123456789 =+-*/(){}?.,:!",
          "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
QUESTION = [{"role": "user", "content": "What is 2+3?"}]
MAX_TOKENS = 1000  # a streamed reply's length: long enough to leave in the middle of it
LIMITS = HTTPLimits(idle_timeout_s=1.0, header_timeout_s=2.0, body_timeout_s=2.0, max_body_mb=1.0)


class RecordingEngine:
    """The real engine; keeps the completions of its last call."""

    def __init__(self, engine: RolloutEngine) -> None:
        self.engine, self.last = engine, []

    def sample(self, *args, **kwargs):
        self.last = self.engine.sample(*args, **kwargs)
        return self.last


def rss() -> int:
    """This process's resident memory in bytes (Linux: /proc; the benchmark adds no dependency for it)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def post(address: tuple[str, int], body: dict | bytes, headers: dict | None = None,
         timeout: float = 60) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", "/v1/chat/completions", data,
                 {"Content-Type": "application/json", "Content-Length": str(len(data))} | (headers or {}))
    response = conn.getresponse()
    out = response.status, response.read()
    conn.close()
    return out


def concurrent(address: tuple[str, int], clients: int) -> tuple[dict, int, float]:
    """``clients`` posts released together; returns statuses counted, connection errors and seconds."""
    barrier, lock = threading.Barrier(clients), threading.Lock()
    statuses: dict[int, int] = {}
    errors = [0]

    def client() -> None:
        barrier.wait()
        try:
            status, _ = post(address, {"model": "tiny", "messages": QUESTION, "max_tokens": 64})
        except (OSError, http.client.HTTPException):  # reset, refused, closed without a reply, timed out
            with lock:
                errors[0] += 1
            return
        with lock:
            statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses, errors[0], time.monotonic() - started


def stream(address: tuple[str, int], max_tokens: int, leave_after_first: bool = False) -> tuple[float, float, int]:
    """A streamed request: (seconds to the first content chunk, seconds to the end, content chunks)."""
    body = json.dumps({"model": "tiny", "messages": QUESTION, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True}).encode()
    sock = socket.create_connection(address, timeout=60)
    started, first, chunks = time.monotonic(), None, 0
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    with sock, sock.makefile("rb") as replies:
        for line in replies:  # the status line and headers, then the events (the server closes at the end)
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            if event["choices"] and event["choices"][0]["delta"].get("content"):
                first = first or time.monotonic() - started
                chunks += 1
                if leave_after_first:  # as a client killed mid-reply
                    break
    return first or float("nan"), time.monotonic() - started, chunks


def closed_after(address: tuple[str, int], drip: bool, limit: float = 10) -> float | None:
    """Seconds until the server closes a connection that sends nothing, or (``drip``) a header byte every 0.1 s."""
    sock = socket.create_connection(address)
    started = time.monotonic()
    if drip:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    while time.monotonic() - started < limit:
        sock.settimeout(0.1)
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            if drip:
                with suppress(OSError):
                    sock.sendall(b"X")
        except ConnectionResetError:
            return time.monotonic() - started
    return None


def bodies(address: tuple[str, int]) -> list[str]:
    cases = {"Content-Length -1": (b"{}", {"Content-Length": "-1"}),
             "Content-Length 10^12": (b"", {"Content-Length": str(10**12)}),
             "2 MiB body": (b"x" * 2**21, {}),
             "900k-char prompt": (json.dumps({"model": "tiny", "messages": [
                 {"role": "user", "content": "a" * 900_000}]}).encode(), {})}
    out = []
    for name, (data, headers) in cases.items():
        started = time.monotonic()
        try:
            status = str(post(address, data, headers, timeout=10)[0])
        except (OSError, http.client.HTTPException) as e:
            status = type(e).__name__
        out.append(f"{name}: {status} in {time.monotonic() - started:.3f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--soak", type=int, default=40, help="rounds after the checks, for the memory line")
    args = parser.parse_args()
    tokenizer = train_char_tokenizer(CORPUS)
    model = build_tiny_model("phi3", tokenizer, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=4,
                             intermediate_size=512, max_position_embeddings=MAX_TOKENS + 64).eval()
    engine = RecordingEngine(RolloutEngine(model, tokenizer))
    settings = ServerSettings(model_name="tiny", api_key=None, max_new_tokens=MAX_TOKENS, context_len=MAX_TOKENS + 64,
                              http=LIMITS)
    server = start(settings, tokenizer, engine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = server.server_address[:2]
    print(f"limits: {LIMITS}")
    concurrent(address, args.clients)  # warm-up: the engine's cache grows to its largest shapes once
    stream(address, max_tokens=MAX_TOKENS)
    rss_before, threads_before = rss(), threading.active_count()

    for r in range(args.rounds):
        statuses, errors, seconds = concurrent(address, args.clients)
        print(f"concurrent round {r + 1}: {args.clients} clients, statuses {statuses}, resets/errors {errors}, "
              f"{seconds:.2f} s, largest engine batch {server.worker.largest_batch}")
    first, total, chunks = stream(address, max_tokens=MAX_TOKENS)
    print(f"stream: first content chunk {first:.3f} s, whole reply {total:.3f} s, {chunks} content chunks "
          f"({len(engine.last[0][0].token_ids)} tokens)")
    stream(address, max_tokens=MAX_TOKENS, leave_after_first=True)
    time.sleep(total + 0.5)  # longer than the whole reply took
    c = engine.last[0][0]
    print(f"disconnect: finish_reason {c.finish_reason!r} after {len(c.token_ids)} of {MAX_TOKENS} tokens")
    idle, slow = closed_after(address, drip=False), closed_after(address, drip=True)
    print(f"idle: closed after {idle:.2f} s (idle_timeout_s {LIMITS.idle_timeout_s})")
    print(f"slow-header: closed after {slow:.2f} s (header_timeout_s {LIMITS.header_timeout_s}, from the first byte)")
    for line in bodies(address):
        print(f"bodies: {line}")
    marks = [f"{rss_before / 2**20:.0f} before the load", f"{rss() / 2**20:.0f} after it"]
    for r in range(1, args.soak + 1):  # more of the same: memory must level off, not grow with requests served
        concurrent(address, args.clients)
        if r % 10 == 0:
            marks.append(f"{rss() / 2**20:.0f} after {r} more rounds")
    print(f"rss (MiB): {', '.join(marks)}; threads {threads_before} before, {threading.active_count()} after")
    server.shutdown()
    server.server_close()


if __name__ == "__main__":
    main()
