"""Test helpers: the real ``thinktune.serving.server`` with a scripted engine, and a fault-injecting layer before it.

``ScriptedEngine`` stands in for a model: its reply to a prompt is looked up by the question the prompt
contains, so a test knows in advance which samples verify. Everything between it and the ``openai``
client (rendering, HTTP, batching, the wire format) is the real server.

``faulty_handler`` puts a layer in front of ``ChatHandler.do_POST`` that, per question, answers its
successive requests with the faults listed in a plan: ``"429"``, ``"500"`` (both with a short
``retry-after-ms``, as rate-limited APIs send), ``"slow"`` (a reply held past the client's timeout) and
``"drop"`` (the connection closed without a reply), or a name in ``BAD_REPLIES`` (a 200 whose body is the
real reply made malformed); then it passes requests through. It logs each request's question, fault and the
client's ``x-stainless-retry-count`` header.
"""

from __future__ import annotations

import copy
import io
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager

from thinktune.rollout.sampler import Completion
from thinktune.serving.server import ChatHandler, ServerSettings, start


class ScriptedEngine:
    def __init__(self, tokenizer, replies: dict[str, str], delay_s: float = 0.0) -> None:
        self.tokenizer, self.replies, self.delay_s = tokenizer, replies, delay_s
        self.calls: list[int] = []  # prompts per sample() call

    def sample(self, prompts, params, seed=0, batch_size=64, show_progress=True):
        time.sleep(self.delay_s)
        self.calls.append(len(prompts))
        eos = self.tokenizer.convert_tokens_to_ids(self.tokenizer.eos_token)
        out = []
        for ids in prompts:
            text = self.tokenizer.decode(ids)
            reply = next(r for q, r in self.replies.items() if q in text)
            tokens = self.tokenizer(reply, add_special_tokens=False).input_ids + [eos]
            out.append([Completion(token_ids=tokens, text=reply, finished=True, finish_reason="eos")
                        for _ in range(params.n)])
        return out


DELETE = object()


def changed(path: tuple, value: object = DELETE) -> Callable[[dict], tuple[str, bytes]]:
    """A bad reply: the real one with the member at ``path`` set to ``value`` (or deleted)."""
    def change(body: dict) -> tuple[str, bytes]:
        body = copy.deepcopy(body)
        *head, last = path
        obj = body
        for k in head:
            obj = obj[k]
        if value is DELETE:
            del obj[last]
        else:
            obj[last] = value
        return "application/json", json.dumps(body).encode()
    return change


# 200 replies no client can use, each from the real reply: (content type, body).
BAD_REPLIES: dict[str, Callable[[dict], tuple[str, bytes]]] = {
    "html": lambda body: ("text/html", b"<html><body>502 Bad Gateway</body></html>"),  # a proxy's error page
    "truncated": lambda body: ("application/json", json.dumps(body).encode()[:40]),
    "content-int": changed(("choices", 0, "message", "content"), 42),
    "content-parts": changed(("choices", 0, "message", "content"), [{"type": "text", "text": "\\boxed{3}"}]),
    "reasoning-list": changed(("choices", 0, "message", "reasoning_content"), ["1+2=3"]),
    "finish-reason-int": changed(("choices", 0, "finish_reason"), 1),
    "no-choices": changed(("choices",)),
    "choices-object": changed(("choices",), {"index": 0}),
    "choice-string": changed(("choices", 0), "\\boxed{3}"),
    "no-message": changed(("choices", 0, "message")),
    "no-usage": changed(("usage",)),
    "null-prompt-tokens": changed(("usage", "prompt_tokens"), None),
    "string-completion-tokens": changed(("usage", "completion_tokens"), "12"),
    "float-prompt-tokens": changed(("usage", "prompt_tokens"), 7.0),
    "body-list": lambda body: ("application/json", json.dumps([body]).encode()),
}


def faulty_handler(plan: dict[str, list[str]], slow_s: float) -> type[ChatHandler]:
    lock = threading.Lock()
    seen: Counter = Counter()
    log: list[tuple[str, str, int]] = []

    class FaultyHandler(ChatHandler):
        fault = "ok"  # this request's

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.rfile = io.BytesIO(raw)  # the real handler reads the body again
            question = json.loads(raw)["messages"][-1]["content"]
            with lock:
                faults = plan.get(question, [])
                fault = faults[seen[question]] if seen[question] < len(faults) else "ok"
                seen[question] += 1
                log.append((question, fault, int(self.headers.get("x-stainless-retry-count") or 0)))
            self.fault = fault
            if fault in ("429", "500"):
                data = json.dumps({"error": {"message": f"injected {fault}", "type": "server_error"}}).encode()
                self._write(int(fault), {"Content-Type": "application/json", "Content-Length": str(len(data)),
                                         "retry-after-ms": "10"}, data)
            elif fault == "drop":
                self.close_connection = True  # close without a word
            else:
                if fault == "slow":
                    time.sleep(slow_s)
                super().do_POST()

        def _send_json(self, status: int, obj: dict, headers: dict[str, str] | None = None) -> None:
            if status != 200 or self.command != "POST" or self.fault not in BAD_REPLIES:
                super()._send_json(status, obj, headers)
                return
            content_type, data = BAD_REPLIES[self.fault](obj)
            self._write(200, {"Content-Type": content_type, "Content-Length": str(len(data))}, data)

    FaultyHandler.log = log
    return FaultyHandler


@contextmanager
def running_server(tokenizer, engine, api_key: str | None = None, reasoning: str = "separate",
                   handler: type[ChatHandler] = ChatHandler, name: str = "teacher", max_new_tokens: int = 32):
    """A server on 127.0.0.1 and a free port, serving in a thread; yields it (``server.url``)."""
    settings = ServerSettings(model_name=name, api_key=api_key, reasoning=reasoning, max_new_tokens=max_new_tokens,
                              max_n=4, context_len=128 + max_new_tokens)
    server = start(settings, tokenizer, engine, handler=handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
