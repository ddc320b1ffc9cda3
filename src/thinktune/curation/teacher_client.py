"""The teacher client: one chat-completions request per sample, through the official ``openai`` client.

Any OpenAI-compatible endpoint works: OpenAI (o3-mini), DeepSeek-R1, a vLLM server, ``thinktune serve``.
Retries are the client's own: with ``max_retries`` it retries 408/409/429/5xx replies, timeouts and
dropped connections with exponential backoff (0.5 s doubling to 8 s, with jitter; a server's
``retry-after``/``retry-after-ms`` header overrides the wait). We only configure them.

Reasoning comes back in one of two shapes, both handled: a separate ``reasoning_content`` field (DeepSeek,
vLLM's reasoning parsers, ``thinktune serve``; newer vLLM names it ``reasoning``) or inline in ``content`` as
``<think>…</think>answer``. ``Reply.trace`` puts either into the SFT format ``<think>R</think>S``.
"""

from __future__ import annotations

from dataclasses import dataclass

import openai
from openai import OpenAI

from thinktune.errors import UserError
from thinktune.rewards.verify import THINK_CLOSE, THINK_OPEN, split_think


@dataclass(frozen=True)
class Reply:
    content: str  # the answer part, think block removed
    reasoning: str | None  # the think part, None when the teacher returned none
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int

    def trace(self) -> str:
        """The assistant turn as thinktune trains on it: ``<think>R</think>S`` (just ``S`` without R)."""
        if self.reasoning is None:
            return self.content
        return f"{THINK_OPEN}{self.reasoning}{THINK_CLOSE}{self.content}"


class EmptyReply(Exception):
    """The endpoint answered, but with no answer text: recorded as a failed sample, not cached."""


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
        EmptyReply: the reply has no answer text.
        openai.APIError: what the client raises once its retries are spent (or at once for 4xx).
    """
    response = client.chat.completions.create(model=model, messages=messages, n=1, **options)
    return parse_reply(response)


def parse_reply(response: openai.types.chat.ChatCompletion) -> Reply:
    """Content, reasoning (separate field or inline ``<think>``), finish reason and token counts."""
    if not response.choices:
        raise EmptyReply("reply without choices")
    choice = response.choices[0]
    extra = choice.message.model_extra or {}
    reasoning = extra.get("reasoning_content") or extra.get("reasoning")
    content = choice.message.content or ""
    if reasoning is None:
        thought, answer = split_think(content)
        if thought is not None:
            reasoning, content = thought, answer
    if not content.strip():
        raise EmptyReply(f"reply without content (finish_reason={choice.finish_reason})")
    usage = response.usage
    return Reply(content=content.strip(), reasoning=reasoning.strip() if isinstance(reasoning, str) else None,
                 finish_reason=choice.finish_reason, prompt_tokens=usage.prompt_tokens if usage else 0,
                 completion_tokens=usage.completion_tokens if usage else 0)


def describe(error: Exception) -> str:
    """One line for an error: its type and message, plus the cause of a connection error."""
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, openai.APIConnectionError) and error.__cause__ is not None:
        text += f" ({type(error.__cause__).__name__}: {error.__cause__})"
    return " ".join(text.split())
