"""The teacher client: one chat-completions request per sample, through the official ``openai`` client.

Any OpenAI-compatible endpoint works: OpenAI (o3-mini), DeepSeek-R1, a vLLM server, ``thinktune serve``.
Retries are the client's own: with ``max_retries`` it retries 408/409/429/5xx replies, timeouts and
dropped connections with exponential backoff (0.5 s doubling to 8 s, with jitter; a server's
``retry-after``/``retry-after-ms`` header overrides the wait). We only configure them.

Reasoning comes back in one of two shapes, both handled: a separate ``reasoning_content`` field (DeepSeek,
vLLM's reasoning parsers, ``thinktune serve``; newer vLLM names it ``reasoning``) or inline in ``content`` as
``<think>…</think>answer``. ``Reply.trace`` puts either into the SFT format ``<think>R</think>S``.

A 200 reply is checked before anyone uses or caches it (``parse_reply``): a body that is not JSON, or a field
we read that is missing or of the wrong type (content not a string, ``choices`` not a list, ``usage`` absent
or a ``null`` token count), raises ``MalformedReply``; no answer text raises ``EmptyReply``. Both are a
``BadReply``: the request failed, as a 500 that outlived its retries fails, and a rerun asks again. A
``Reply`` checks its own field types, so a cached one written by an older thinktune, which checked less,
fails the same way when read back (``Reply.from_record``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from types import NoneType
from typing import Any, ClassVar

import openai
from openai import OpenAI

from thinktune.errors import UserError
from thinktune.rewards.verify import THINK_CLOSE, THINK_OPEN, split_think


class BadReply(Exception):
    """The endpoint answered 200, but not with a usable reply: a failed sample, not cached, asked for again
    on a rerun."""


class EmptyReply(BadReply):
    """The reply has no answer text."""


class MalformedReply(BadReply):
    """The reply is not a chat completion we can read: not JSON, or a field missing or of the wrong type."""


# The type names of what ``json.loads`` makes, for the reasons a MalformedReply gives.
JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
              bool: "a boolean", NoneType: "null"}


def expect(value: object, kinds: tuple[type, ...], where: str) -> Any:
    """``value`` when its type is one of ``kinds``.

    Types match exactly, as ``json.loads`` makes them: a bool is not an integer, nor a float a token count.

    Raises:
        MalformedReply: naming ``where``, what it holds and what was expected.
    """
    if type(value) not in kinds:
        wanted = " or ".join(JSON_TYPES[k] for k in kinds)
        found = JSON_TYPES.get(type(value), type(value).__name__)
        raise MalformedReply(f"{where} is {found}, expected {wanted}")
    return value


def member(obj: dict, name: str, kinds: tuple[type, ...], where: str) -> Any:
    """``obj[name]`` checked by ``expect``; a missing member reads as ``null`` where ``null`` is allowed."""
    if name not in obj and NoneType not in kinds:
        raise MalformedReply(f"{where}{name} is missing")
    return expect(obj.get(name), kinds, where + name)


@dataclass(frozen=True)
class Reply:
    content: str  # the answer part, think block removed
    reasoning: str | None  # the think part, None when the teacher returned none
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int

    KINDS: ClassVar[dict[str, tuple[type, ...]]] = {
        "content": (str,), "reasoning": (str, NoneType), "finish_reason": (str, NoneType),
        "prompt_tokens": (int,), "completion_tokens": (int,)}

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            expect(value, self.KINDS[name], name)

    @classmethod
    def from_record(cls, record: dict) -> Reply:
        """The reply in a cache record (its fields, as ``asdict`` wrote them, among other keys).

        Raises:
            MalformedReply: a field is missing or of the wrong type.
        """
        missing = [f.name for f in fields(cls) if f.name not in record]
        if missing:
            raise MalformedReply(f"{', '.join(missing)} missing")
        return cls(**{f.name: record[f.name] for f in fields(cls)})

    def trace(self) -> str:
        """The assistant turn as thinktune trains on it: ``<think>R</think>S`` (just ``S`` without R)."""
        if self.reasoning is None:
            return self.content
        return f"{THINK_OPEN}{self.reasoning}{THINK_CLOSE}{self.content}"


def make_client(base_url: str, api_key: str | None, timeout_s: float, max_retries: int) -> OpenAI:
    # Servers without keys (vLLM, thinktune serve) accept any bearer; the client insists on a string.
    return OpenAI(base_url=base_url, api_key=api_key or "no-key", timeout=timeout_s, max_retries=max_retries)


def check_endpoint(client: OpenAI, base_url: str, key_env: str) -> None:
    """Fail fast, before any sample is asked for: one ``GET /models``.

    Raises:
        UserError: the endpoint cannot be reached, or it rejects the key. An endpoint without ``/models``
            (404 and the like) passes; its chat requests will tell.
    """
    try:
        client.models.list()
    except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
        raise UserError(key_error(base_url, key_env, e.status_code)) from None
    except openai.APIConnectionError as e:  # also APITimeoutError
        raise UserError(f"cannot reach {base_url} ({describe(e)}); check base_url and that the server is "
                        "running") from None
    except openai.APIStatusError:
        pass


def key_error(base_url: str, key_env: str, status: int) -> str:
    source = f"${key_env}" if key_env else "no key (api_key_env is empty)"
    return f"{base_url} rejected the API key ({status}); we sent {source}: check that the variable holds a valid key"


def request_sample(client: OpenAI, model: str, messages: list[dict], options: dict) -> Reply:
    """Ask for one sample. ``options`` are extra request fields (temperature, max_completion_tokens, ...).

    Raises:
        BadReply: a 200 reply that is malformed (``MalformedReply``) or has no answer text (``EmptyReply``).
        openai.APIError: what the client raises once its retries are spent (or at once for 4xx).
    """
    # The raw body, parsed here: the client's own parsing raises JSONDecodeError on a body that is not JSON,
    # returns a str for one not labelled JSON, and builds unchecked objects from fields of the wrong type.
    raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, n=1, **options)
    return parse_reply(raw.http_response.text)


def parse_reply(text: str) -> Reply:
    """Content, reasoning (separate field or inline ``<think>``), finish reason and token counts, all checked.

    Args:
        text: a chat-completions response body.

    Raises:
        MalformedReply: the body is not JSON, or a field read here is missing or of the wrong type.
        EmptyReply: the reply has no choices, or no answer text.
    """
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise MalformedReply(f"the body is not JSON ({e}): {text[:60]!r}") from None
    expect(body, (dict,), "the body")
    choices = member(body, "choices", (list,), "")
    usage = member(body, "usage", (dict,), "")
    prompt_tokens = member(usage, "prompt_tokens", (int,), "usage.")
    completion_tokens = member(usage, "completion_tokens", (int,), "usage.")
    if not choices:
        raise EmptyReply("reply without choices")
    choice = expect(choices[0], (dict,), "choices[0]")
    message = member(choice, "message", (dict,), "choices[0].")
    finish_reason = member(choice, "finish_reason", (str, NoneType), "choices[0].")
    content = member(message, "content", (str, NoneType), "choices[0].message.") or ""
    reasoning = (member(message, "reasoning_content", (str, NoneType), "choices[0].message.")
                 or member(message, "reasoning", (str, NoneType), "choices[0].message."))
    if reasoning is None:
        thought, answer = split_think(content)
        if thought is not None:
            reasoning, content = thought, answer
    if not content.strip():
        raise EmptyReply(f"reply without content (finish_reason={finish_reason})")
    return Reply(content=content.strip(), reasoning=None if reasoning is None else reasoning.strip(),
                 finish_reason=finish_reason, prompt_tokens=prompt_tokens,
                 completion_tokens=completion_tokens)


def describe(error: Exception) -> str:
    """One line for an error: its type and message, plus the cause of a connection error."""
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, openai.APIConnectionError) and error.__cause__ is not None:
        text += f" ({type(error.__cause__).__name__}: {error.__cause__})"
    return " ".join(text.split())
