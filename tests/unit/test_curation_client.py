"""The teacher client's reply parsing (every reasoning shape) and the reply cache's crash tolerance."""

from __future__ import annotations

import json

import pytest
from openai.types.chat import ChatCompletion

from thinktune.curation.cache import ReplyCache, sample_key
from thinktune.curation.teacher_client import EmptyReply, parse_reply
from thinktune.errors import DataError


def completion(message: dict, finish_reason: str = "stop", usage: dict | None = None) -> ChatCompletion:
    return ChatCompletion.model_validate({
        "id": "x", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": finish_reason, "message": {"role": "assistant", **message}}],
        "usage": usage or {"prompt_tokens": 7, "completion_tokens": 11, "total_tokens": 18}})


@pytest.mark.parametrize("message", [
    {"content": "\\boxed{5}", "reasoning_content": "2+3=5"},  # DeepSeek, vLLM reasoning parsers, thinktune serve
    {"content": "\\boxed{5}", "reasoning": "2+3=5"},  # newer vLLM
    {"content": "<think>2+3=5</think>\n\\boxed{5}"},  # inline
])
def test_every_reasoning_shape_gives_the_same_trace(message):
    reply = parse_reply(completion(message))
    assert (reply.reasoning, reply.content) == ("2+3=5", "\\boxed{5}")
    assert reply.trace() == "<think>2+3=5</think>\\boxed{5}"
    assert (reply.prompt_tokens, reply.completion_tokens, reply.finish_reason) == (7, 11, "stop")


def test_no_reasoning_and_no_content():
    plain = parse_reply(completion({"content": "The answer is 5."}))
    assert plain.reasoning is None and plain.trace() == "The answer is 5."
    for message in ({"content": None}, {"content": "  "}, {"content": "<think>only thinking</think>"}):
        with pytest.raises(EmptyReply, match="reply without content"):
            parse_reply(completion(message, finish_reason="length"))


def test_keys_differ_by_endpoint_model_prompt_and_index():
    msgs = [{"role": "user", "content": "q"}]
    base = sample_key("http://h/v1", "m", msgs, 0)
    assert base == sample_key("http://h/v1/", "m", msgs, 0)  # a trailing slash is the same endpoint
    others = [sample_key("http://g/v1", "m", msgs, 0), sample_key("http://h/v1", "n", msgs, 0),
              sample_key("http://h/v1", "m", [{"role": "user", "content": "r"}], 0),
              sample_key("http://h/v1", "m", msgs, 1)]
    assert len({base, *others}) == 5


def test_cache_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    cache = ReplyCache(path)
    cache.put("a", {"content": "1"})
    cache.put("b", {"content": "2"})
    with path.open("a") as f:
        f.write('{"key": "c", "cont')  # killed in the middle of a write
    again = ReplyCache(path)
    assert sorted(again.records) == ["a", "b"] and "c" not in again
    again.put("c", {"content": "3"})
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "b", "c"]


def test_cache_damaged_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(DataError, match=rf"{path}:2: not a cache record"):
        ReplyCache(path)
