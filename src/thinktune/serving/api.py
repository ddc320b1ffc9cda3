"""The chat-completions wire format: request fields in, checked, reply bodies out.

No sockets here: a request body (a dict) becomes a ``ChatRequest`` or a ``RequestError`` that names the field,
and completions become the OpenAI reply body. Keeping it apart from the HTTP layer lets the field rules be read
(and tested) as one list.

- Every value is checked (a 400 names the field); fields that would change the reply but are not implemented
  (``UNSUPPORTED``) are a 400 when set, others are ignored.
- ``max_tokens`` above the cap (``max_new_tokens``, or what the context leaves) is a 400 naming the cap, or
  clamped to it with ``max_tokens_over_cap="clamp"``.
- The messages' length in characters is checked against the context before the prompt is tokenized, so a huge
  prompt costs no tokenizing.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from thinktune.data.chat import render_prompt
from thinktune.errors import ConfigError
from thinktune.rewards.verify import THINK_OPEN, split_think
from thinktune.rollout.sampler import Completion, SamplingParams
from thinktune.serving.httpd import HTTPLimits, RequestError

REASONING_FORMATS = ("separate", "inline")
OVER_CAP = ("reject", "clamp")  # what a max_tokens above the cap gets
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "stop"}
MAX_STOPS, MAX_STOP_CHARS = 16, 128  # a stop string costs a decode of 4x its length per row and step
SEED_RANGE = (-2**63, 2**63 - 1)  # OpenAI's int64
# Fields that would change the reply and are not implemented: set to anything but their default, a 400.
UNSUPPORTED = ("logprobs", "top_logprobs", "tools", "functions", "logit_bias", "frequency_penalty",
               "presence_penalty", "response_format")


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


# --------------------------------------------------------------------------------------------------------
# Requests


@dataclass
class ChatRequest:
    prompt: list[int]
    params: SamplingParams
    seed: int | None
    stream: bool
    think_open: bool  # the prompt ends inside an open <think> (the template opened it)


def chat_request(body: dict, settings: ServerSettings, tokenizer: PreTrainedTokenizerBase,
                 chars_per_token: int) -> ChatRequest:
    """Every field checked, the length bounded by characters, then the prompt tokenized and fitted."""
    check_fields(body, settings)
    messages = parse_messages(body)
    sampling_params(body, settings, prompt_len=0)  # field values, before any tokenizing
    seed = _number(body, "seed", int, None, *SEED_RANGE)
    check_length(messages, settings, chars_per_token)
    prompt = render_prompt(tokenizer, messages)
    tail = tokenizer.decode(prompt[-8:], skip_special_tokens=False).rstrip()
    return ChatRequest(prompt, sampling_params(body, settings, len(prompt)), seed, bool(body.get("stream")),
                       think_open=tail.endswith(THINK_OPEN))


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
