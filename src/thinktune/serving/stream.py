"""Streamed replies (``stream: true``): text sent as it is decoded, as server-sent events.

A streamed reply splits reasoning at the first ``</think>`` (a ``<think>`` at the start of the reply, or one the
chat template left open at the end of the prompt); the plain reply (``api.message``) uses ``split_think`` (the
last one). They agree on a well-formed ``<think>R</think>S``. The hard part is never sending text that a later
token could take back; ``stream_fields`` and ``ChoiceStream`` hold that back, and ``sse_events`` turns one job's
tokens into the events, so the handler only writes them.
"""

from __future__ import annotations

import functools
import json
import queue
import time
import uuid
from collections.abc import Callable, Iterator

from transformers import PreTrainedTokenizerBase

from thinktune.rewards.verify import THINK_CLOSE, THINK_OPEN
from thinktune.rollout.sampler import Completion
from thinktune.serving.api import FINISH_REASONS, ChatRequest, ServerSettings, completion_body
from thinktune.serving.httpd import error_body
from thinktune.serving.worker import Job


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


class ClientGone(Exception):
    """The client closed its connection while its reply was being generated."""


def sse_events(job: Job, request: ChatRequest, tokenizer: PreTrainedTokenizerBase, settings: ServerSettings,
               client_gone: Callable[[], bool]) -> Iterator[bytes]:
    """A streamed reply's events, each as the tokens allow it: a role chunk, text deltas, each choice's finish
    reason, the usage, ``[DONE]``; or, when generation fails, an error event last.

    Raises:
        ClientGone: ``client_gone()`` said so while no tokens came.
    """
    n = request.params.n
    choices = [ChoiceStream(tokenizer, request.params.stop, settings.reasoning, request.think_open)
               for _ in range(n)]
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": settings.model_name}
    yield _event(head | {"choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                      "finish_reason": None} for i in range(n)]})
    done = False
    while not done:
        items, done = next_tokens(job, client_gone)
        for j, token in items:
            choices[j].tokens.append(token)
        yield from _deltas(head, choices, {j for j, _ in items}, None)
    try:
        completions = job.future.result()
    except Exception as e:
        yield _event(error_body(f"generation failed: {type(e).__name__}: {e}", "server_error"))
        return
    yield from _deltas(head, choices, set(range(n)), completions)
    yield _event(head | {"choices": [{"index": i, "delta": {}, "finish_reason": FINISH_REASONS[
        c.finish_reason]} for i, c in enumerate(completions)]})
    yield _event(head | {"choices": [], "usage": completion_body(completions, len(request.prompt),
                                                                 settings)["usage"]})
    yield b"data: [DONE]\n\n"


def next_tokens(job: Job, client_gone: Callable[[], bool]) -> tuple[list[tuple[int, int]], bool]:
    """The tokens drawn since the last call, ``[(choice, token), ...]``, and whether the job has ended;
    while none come, checks every half second that the client is still there."""
    assert job.steps is not None
    while True:
        try:
            batch = job.steps.get(timeout=0.5)
            break
        except queue.Empty:
            if client_gone():
                raise ClientGone from None
    items: list[tuple[int, int]] = []
    while batch is not None:
        items += batch
        try:
            batch = job.steps.get_nowait()
        except queue.Empty:
            return items, False
    return items, True


def _deltas(head: dict, choices: list[ChoiceStream], which: set[int],
            completions: list[Completion] | None) -> Iterator[bytes]:
    for j in sorted(which):
        delta = choices[j].delta(None if completions is None else completions[j].text)
        if delta:
            yield _event(head | {"choices": [{"index": j, "delta": delta, "finish_reason": None}]})


def _event(obj: dict) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()
