"""The teacher client's reply parsing (every reasoning shape, every malformed reply) and the reply cache's crash
tolerance."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from thinktune.curation.cache import ReplyCache, sample_key
from thinktune.curation.teacher_client import EmptyReply, MalformedReply, Reply, parse_reply
from thinktune.errors import DataError


def body(message: dict, finish_reason: str = "stop", usage: dict | None = None) -> dict:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": finish_reason, "message": {"role": "assistant", **message}}],
            "usage": usage or {"prompt_tokens": 7, "completion_tokens": 11, "total_tokens": 18}}


def completion(message: dict, finish_reason: str = "stop", usage: dict | None = None) -> str:
    """A chat-completions response body, as the endpoint sends it."""
    return json.dumps(body(message, finish_reason, usage))


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


def without(obj: dict, *path) -> dict:
    """A copy of ``obj`` without the member at ``path``."""
    *head, last = path
    obj = json.loads(json.dumps(obj))
    inner = obj
    for k in head:
        inner = inner[k]
    del inner[last]
    return obj


GOOD = body({"content": "\\boxed{5}", "reasoning_content": "2+3=5"})
# A body (or its text) and the reason it is malformed.
MALFORMED = [
    ("<html>502 Bad Gateway</html>", r"the body is not JSON \(Expecting value: .*\): '<html>502"),
    (json.dumps(GOOD)[:30], r"the body is not JSON \(Unterminated string"),
    ("", r"the body is not JSON"),
    ([GOOD], r"the body is a list, expected an object"),
    (without(GOOD, "choices"), r"choices is missing"),
    (GOOD | {"choices": None}, r"choices is null, expected a list"),
    (GOOD | {"choices": {"0": GOOD["choices"][0]}}, r"choices is an object, expected a list"),
    (GOOD | {"choices": ["\\boxed{5}"]}, r"choices\[0\] is a string, expected an object"),
    (without(GOOD, "choices", 0, "message"), r"choices\[0\]\.message is missing"),
    (body({"content": 5}), r"choices\[0\]\.message\.content is an integer, expected a string or null"),
    (body({"content": [{"type": "text", "text": "5"}]}), r"content is a list, expected a string or null"),
    (body({"content": "5", "reasoning_content": {"text": "2+3"}}), r"reasoning_content is an object"),
    (body({"content": "5", "reasoning": 5}), r"choices\[0\]\.message\.reasoning is an integer"),
    (body({"content": "5"}, finish_reason=1), r"choices\[0\]\.finish_reason is an integer"),
    (without(GOOD, "usage"), r"usage is missing"),
    (GOOD | {"usage": None}, r"usage is null, expected an object"),
    (body({"content": "5"}, usage={"prompt_tokens": None, "completion_tokens": 1}),
     r"usage\.prompt_tokens is null, expected an integer"),
    (body({"content": "5"}, usage={"completion_tokens": 1}), r"usage\.prompt_tokens is missing"),
    (body({"content": "5"}, usage={"prompt_tokens": 1, "completion_tokens": "1"}),
     r"usage\.completion_tokens is a string, expected an integer"),
    (body({"content": "5"}, usage={"prompt_tokens": 1.0, "completion_tokens": 1}), r"prompt_tokens is a number"),
    (body({"content": "5"}, usage={"prompt_tokens": True, "completion_tokens": 1}), r"prompt_tokens is a boolean"),
]


@pytest.mark.parametrize("reply, reason", MALFORMED)
def test_a_malformed_reply_names_what_is_wrong(reply, reason):
    text = reply if isinstance(reply, str) else json.dumps(reply)
    with pytest.raises(MalformedReply, match=reason):
        parse_reply(text)


def test_a_reply_without_choices_is_empty_and_the_minimal_reply_is_fine():
    with pytest.raises(EmptyReply, match="reply without choices"):
        parse_reply(json.dumps(GOOD | {"choices": []}))
    minimal = {"choices": [{"message": {"content": "5"}}], "usage": {"prompt_tokens": 0, "completion_tokens": 1}}
    assert parse_reply(json.dumps(minimal)) == Reply("5", None, None, 0, 1)


def test_a_cache_record_is_checked_as_a_reply_is():
    reply = parse_reply(completion({"content": "\\boxed{5}", "reasoning_content": "2+3=5"}))
    record = {"key": "k", "prompt_id": "p", "sample": 0, **asdict(reply)}
    assert Reply.from_record(record) == reply
    for change, reason in [({"prompt_tokens": None}, "prompt_tokens is null, expected an integer"),
                           ({"completion_tokens": "11"}, "completion_tokens is a string"),
                           ({"content": 5}, "content is an integer, expected a string"),
                           ({"reasoning": ["2+3=5"]}, "reasoning is a list, expected a string or null"),
                           ({"finish_reason": 0}, "finish_reason is an integer")]:
        with pytest.raises(MalformedReply, match=reason):
            Reply.from_record(record | change)
    with pytest.raises(MalformedReply, match="content, finish_reason missing"):
        Reply.from_record({k: v for k, v in record.items() if k not in ("content", "finish_reason")})


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
