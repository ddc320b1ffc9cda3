"""``thinktune distill`` against ``thinktune serve`` with the official client, through injected faults.

The server is the real one on 127.0.0.1 with a scripted engine (``fake_teacher``), so which samples verify
is known in advance: "What is a+b?" is answered correctly, "What is 7*8?" wrongly, "Be brief." without
reasoning, and "Q" with an empty reply. ``faulty_handler`` injects failed requests and malformed 200 replies.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from fake_teacher import BAD_REPLIES, ScriptedEngine, faulty_handler, running_server

from thinktune.config import load_config
from thinktune.curation.cache import ReplyCache
from thinktune.data.io import read_jsonl
from thinktune.errors import DataError, UserError
from thinktune.recipes import distill

pytestmark = pytest.mark.integration

KEY = "sk-thinktune-test-0123456789abcdef"
SUMS = [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7)]
REPLIES = {f"What is {a}+{b}?": f"<think>{a}+{b}={a + b}</think>\\boxed{{{a + b}}}" for a, b in SUMS}
REPLIES |= {"What is 7*8?": "<think>7*8=54</think>\\boxed{54}", "Be brief.": "\\boxed{2}", "Q": ""}


def write_prompts(path: Path, questions: dict[str, str]) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": q, "answer": a}) + "\n"
                            for i, (q, a) in enumerate(questions.items())))
    return path


def distill_cfg(prompts: Path, url: str, out: Path, **extra) -> distill.DistillConfig:
    args = {"prompts": prompts, "base_url": url, "model": "teacher", "api_key_env": "TEACHER_KEY", "n": 2,
            "temperature": 0.7, "max_new_tokens": 32, "concurrency": 4, "max_retries": 2, "timeout_s": 2.5,
            "output_dir": out} | extra
    return load_config(distill.DistillConfig, None, [f"{k}={v}" for k, v in args.items()])


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", KEY)


@pytest.mark.parametrize("reasoning", ["separate", "inline"])
def test_faults_are_retried_and_every_sample_ends_somewhere(tmp_path, char_tokenizer, key_env, capsys, reasoning):
    questions = {f"What is {a}+{b}?": str(a + b) for a, b in SUMS[:5]} | {"What is 7*8?": "56", "Q": "1"}
    prompts = write_prompts(tmp_path / "prompts.jsonl", questions)
    sums = list(questions)[:5]
    plan = {sums[0]: ["429"], sums[1]: ["500", "500"], sums[2]: ["slow"], sums[3]: ["drop"], sums[4]: ["500"] * 6}
    handler = faulty_handler(plan, slow_s=3.0)
    engine = ScriptedEngine(char_tokenizer, REPLIES)
    out = tmp_path / "run"
    with running_server(char_tokenizer, engine, api_key=KEY, reasoning=reasoning, handler=handler) as server:
        summary = distill.run(distill_cfg(prompts, server.url, out))
        first = Counter(q for q, _, _ in handler.log)
        retried = Counter(q for q, _, retry in handler.log if retry > 0)
        # Each fault costs one more request, sent as a retry (x-stainless-retry-count > 0). ">=": on a busy
        # machine any request may also time out and be retried. sums[4] fails every attempt of both its
        # samples, 1 + max_retries each at most; "<=": an attempt that fails before the server reads it (a
        # time-out, a pooled connection already closed) counts as an attempt but is never logged (seen once
        # in a fresh-clone run: 5 of 6 logged).
        want = {sums[0]: 3, sums[1]: 4, sums[2]: 3, sums[3]: 3, "What is 7*8?": 2, "Q": 2}
        assert all(first[q] >= n for q, n in want.items()) and 2 <= first[sums[4]] <= 6
        assert all(retried[q] >= want[q] - 2 for q in sums[:4]) and retried[sums[4]] <= 4
        assert summary | {"rejected_by_reason": None, "tokens": None} == {
            "prompts": 7, "samples": 14, "asked_this_run": 14, "kept": 8, "rejected": 2, "failed": 4,
            "rejected_by_reason": None, "prompts_with_a_kept_trace": 4, "tokens": None}
        assert summary["rejected_by_reason"] == {"wrong answer": 2}
        failed = read(out / "failed.jsonl")
        assert sorted((f["prompt_id"], f["sample"]) for f in failed) == [("p4", 0), ("p4", 1), ("p6", 0), ("p6", 1)]
        assert all("InternalServerError" in f["error"] for f in failed if f["prompt_id"] == "p4")
        assert all("reply without content" in f["error"] for f in failed if f["prompt_id"] == "p6")
        kept = read_jsonl(out / "sft.jsonl", kind="sft")  # the schema `thinktune sft` reads
        assert {r["id"] for r in kept} == {f"p{i}-{j}" for i in range(4) for j in range(2)}
        assert kept[0]["messages"] == [{"role": "user", "content": sums[0]},
                                       {"role": "assistant", "content": REPLIES[sums[0]]}]
        assert [r["reason"] for r in read(out / "rejected.jsonl")] == ["wrong answer: '54', expected '56'"] * 2
        # usage, char tokenizer: "<think>1+2=3</think>\\boxed{3}" is <think>, 5 chars, </think>, \\boxed, 3 chars
        # and <|im_end|>: 12 tokens; the 7*8 reply has 6 + 4 chars: 14. 4 kept prompts x 2 x 12 + 2 x 14.
        assert summary["tokens"]["completion"] == 4 * 2 * 12 + 2 * 14

        # The rerun asks only for the failed samples: 2 for "Q" and 2 for sums[4], plus one retry for each of its
        # planned faults the first run did not use up (an attempt that failed before the server logged it).
        handler.log.clear()
        again = distill.run(distill_cfg(prompts, server.url, out))
        leftover = 6 - first[sums[4]]
        assert Counter(q for q, _, _ in handler.log) == {sums[4]: 2 + leftover, "Q": 2}
        assert again["asked_this_run"] == 4 and again["kept"] == 10 and again["failed"] == 2

    text = capsys.readouterr()
    for path in out.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(), path
    assert KEY not in text.out + text.err


def test_api_key_not_required_and_reasoning_may_be_required(tmp_path, char_tokenizer):
    prompts = write_prompts(tmp_path / "p.jsonl", {"Be brief.": "2", "What is 1+2?": "3"})
    with running_server(char_tokenizer, ScriptedEngine(char_tokenizer, REPLIES)) as server:
        strict = distill.run(distill_cfg(prompts, server.url, tmp_path / "a", api_key_env=""))
        lax = distill.run(distill_cfg(prompts, server.url, tmp_path / "b", api_key_env="", require_reasoning="false"))
    assert strict["kept"] == 2 and strict["rejected_by_reason"] == {"no reasoning": 2}
    assert lax["kept"] == 4
    assert read(tmp_path / "b" / "sft.jsonl")[0]["messages"][-1]["content"] == "\\boxed{2}"


def test_wrong_key_stops_with_a_clear_error(tmp_path, char_tokenizer, monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", "sk-wrong-key-42")
    prompts = write_prompts(tmp_path / "p.jsonl", {"What is 1+2?": "3"})
    with running_server(char_tokenizer, ScriptedEngine(char_tokenizer, REPLIES), api_key=KEY) as server:
        with pytest.raises(UserError, match=r"rejected the API key \(401\); we sent \$TEACHER_KEY") as e:
            distill.run(distill_cfg(prompts, server.url, tmp_path / "out"))
    assert "sk-wrong-key-42" not in str(e.value)


def test_unset_key_variable_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.delenv("TEACHER_KEY", raising=False)
    prompts = write_prompts(tmp_path / "p.jsonl", {"What is 1+2?": "3"})
    with pytest.raises(UserError, match="environment variable TEACHER_KEY is not set"):
        distill.run(distill_cfg(prompts, "http://127.0.0.1:9/v1", tmp_path / "out"))


def test_unreachable_endpoint(tmp_path, key_env):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prompts = write_prompts(tmp_path / "p.jsonl", {"What is 1+2?": "3"})
    with pytest.raises(UserError, match=rf"cannot reach http://127.0.0.1:{port}/v1 \(APIConnectionError"):
        distill.run(distill_cfg(prompts, f"http://127.0.0.1:{port}/v1", tmp_path / "out", max_retries=0))


def test_malformed_prompt_file(tmp_path, key_env):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"id": 1, "prompt": "What is 1+2?", "answer": "3"}\n{"id": 2, "prompt": "x"\n')
    with pytest.raises(DataError, match=rf"{bad}:2: not valid JSON"):
        distill.run(distill_cfg(bad, "http://127.0.0.1:9/v1", tmp_path / "out"))
    bad.write_text('{"id": 1, "prompt": "What is 1+2?"}\n')
    with pytest.raises(DataError, match=rf"{bad}:1: missing field 'answer'"):
        distill.run(distill_cfg(bad, "http://127.0.0.1:9/v1", tmp_path / "out"))


def test_a_killed_run_resumes_without_asking_twice(tmp_path, char_tokenizer):
    questions = {f"What is {a}+{b}?": str(a + b) for a, b in SUMS} | {f"What is {b}+{a}?": str(a + b) for a, b in SUMS}
    replies = {f"What is {b}+{a}?": f"<think>{b}+{a}={a + b}</think>\\boxed{{{a + b}}}" for a, b in SUMS} | REPLIES
    prompts = write_prompts(tmp_path / "p.jsonl", questions)
    out, k = tmp_path / "run", 3
    handler = faulty_handler({}, slow_s=0)
    engine = ScriptedEngine(char_tokenizer, replies, delay_s=0.25)  # 36 samples, 2 at a time: ~4.5 s in all
    with running_server(char_tokenizer, engine, handler=handler) as server:
        args = [f"prompts={prompts}", f"base_url={server.url}", "model=teacher", "api_key_env=", f"n={k}",
                "concurrency=2", f"output_dir={out}"]
        proc = subprocess.Popen([sys.executable, "-m", "thinktune.cli", "distill", *args],
                                env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        cache_file = out / "cache.jsonl"
        deadline = time.monotonic() + 60
        while not (cache_file.exists() and cache_file.read_text().count("\n") >= 8):
            assert proc.poll() is None and time.monotonic() < deadline, "distill ended before it was killed"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(0.5)  # a request sent just before the kill may still be read (and logged) by the server
        engine.delay_s = 0.0
        cached = Counter(r["prompt_id"] for r in ReplyCache(cache_file).records.values())
        assert 8 <= sum(cached.values()) < len(questions) * k
        first = len(handler.log)
        summary = distill.run(distill_cfg(prompts, server.url, out, api_key_env="", n=k))
    ids = {q: f"p{i}" for i, q in enumerate(questions)}
    asked = Counter(ids[q] for q, _, _ in handler.log[first:])
    assert asked == {pid: k - cached[pid] for pid in ids.values() if cached[pid] < k}
    assert summary["asked_this_run"] == len(questions) * k - sum(cached.values())
    assert summary["kept"] == len(questions) * k and summary["failed"] == 0


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    from thinktune.cli import main

    prompts = write_prompts(tmp_path / "p.jsonl", {"What is 1+2?": "3"})
    code = main(["distill", f"prompts={prompts}", "base_url=http://127.0.0.1:9/v1", "model=teacher", "api_key_env=",
                 "max_retries=0", f"output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("thinktune: error: cannot reach http://127.0.0.1:9/v1")


def test_a_thinktune_model_as_the_teacher(tmp_path, char_tokenizer, tiny_phi3):
    """The whole path with a real model behind the server: every sample is a reply (kept or rejected) or a
    failure with its reason (the random tiny model rarely writes an answer at all)."""
    from thinktune.rollout.sampler import RolloutEngine

    prompts = write_prompts(tmp_path / "p.jsonl", {"What is 1+2?": "3", "What is 2+3?": "5"})
    with running_server(char_tokenizer, RolloutEngine(tiny_phi3, char_tokenizer), reasoning="inline",
                        max_new_tokens=8) as server:
        summary = distill.run(distill_cfg(prompts, server.url, tmp_path / "out", api_key_env="", n=3, max_new_tokens=8,
                                          require_reasoning="false"))
    assert summary["kept"] + summary["rejected"] + summary["failed"] == 6
    cached = ReplyCache(tmp_path / "out" / "cache.jsonl").records.values()
    assert len(cached) == summary["kept"] + summary["rejected"]
    assert all(1 <= r["completion_tokens"] <= 8 for r in cached)
    failed = read(tmp_path / "out" / "failed.jsonl") if summary["failed"] else []
    assert all("reply without content" in f["error"] for f in failed)


def test_unknown_model_stops_with_a_clear_error(tmp_path, char_tokenizer):
    prompts = write_prompts(tmp_path / "p.jsonl", {"What is 1+2?": "3"})
    with running_server(char_tokenizer, ScriptedEngine(char_tokenizer, REPLIES)) as server:
        with pytest.raises(UserError, match=r"answered 404 for model 'o3-mini' .*model 'o3-mini' not found"):
            distill.run(distill_cfg(prompts, server.url, tmp_path / "out", api_key_env="", model="o3-mini"))


# Each bad reply of the fake teacher, and the reason failed.jsonl must give for it.
MALFORMED = {
    "html": r"^MalformedReply: the body is not JSON \(.*\): '<html>",
    "truncated": r"^MalformedReply: the body is not JSON",
    "body-list": r"^MalformedReply: the body is a list, expected an object$",
    "content-int": r"^MalformedReply: choices\[0\]\.message\.content is an integer, expected a string or null$",
    "content-parts": r"^MalformedReply: choices\[0\]\.message\.content is a list, expected a string or null$",
    "reasoning-list": r"^MalformedReply: choices\[0\]\.message\.reasoning_content is a list, expected a string",
    "finish-reason-int": r"^MalformedReply: choices\[0\]\.finish_reason is an integer, expected a string or null$",
    "no-choices": r"^MalformedReply: choices is missing$",
    "choices-object": r"^MalformedReply: choices is an object, expected a list$",
    "choice-string": r"^MalformedReply: choices\[0\] is a string, expected an object$",
    "no-message": r"^MalformedReply: choices\[0\]\.message is missing$",
    "no-usage": r"^MalformedReply: usage is missing$",
    "null-prompt-tokens": r"^MalformedReply: usage\.prompt_tokens is null, expected an integer$",
    "string-completion-tokens": r"^MalformedReply: usage\.completion_tokens is a string, expected an integer$",
    "float-prompt-tokens": r"^MalformedReply: usage\.prompt_tokens is a number, expected an integer$",
}


def sums(count: int) -> tuple[dict[str, str], dict[str, str]]:
    """``count`` questions "What is a+b?" with their answers, and the teacher's correct replies to them."""
    pairs = [(a, 100 + a) for a in range(count)]
    return ({f"What is {a}+{b}?": str(a + b) for a, b in pairs},
            {f"What is {a}+{b}?": f"<think>{a}+{b}={a + b}</think>\\boxed{{{a + b}}}" for a, b in pairs})


def test_the_table_covers_every_bad_reply_of_the_fake_teacher():
    assert set(MALFORMED) == set(BAD_REPLIES)


@pytest.mark.parametrize("fault, reason", list(MALFORMED.items()), ids=list(MALFORMED))
def test_a_malformed_reply_fails_its_sample_and_a_rerun_asks_again(tmp_path, char_tokenizer, capsys, fault, reason):
    n = 2
    questions, replies = sums(3)
    prompts = write_prompts(tmp_path / "p.jsonl", questions)
    ids = {q: f"p{i}" for i, q in enumerate(questions)}
    bad = list(questions)[1]  # both its samples get the bad reply; the other questions get good ones
    handler = faulty_handler({bad: [fault] * n}, slow_s=0)
    out = tmp_path / "run"
    with running_server(char_tokenizer, ScriptedEngine(char_tokenizer, replies), handler=handler) as server:
        # A generous timeout: no request times out and is retried, so each sample is asked exactly once.
        cfg = distill_cfg(prompts, server.url, out, api_key_env="", n=n, timeout_s=30)
        first = distill.run(cfg)
        # A 200 is not retried by the client: each sample of `bad` got its one bad reply.
        assert Counter((q, f) for q, f, _ in handler.log) == {(q, "ok" if q != bad else fault): n for q in questions}
        assert (first["kept"], first["rejected"], first["failed"]) == ((len(questions) - 1) * n, 0, n)
        failed = read(out / "failed.jsonl")
        assert [(f["prompt_id"], f["sample"]) for f in failed] == [(ids[bad], j) for j in range(n)]
        assert all(re.search(reason, f["error"]) for f in failed), failed
        cached = ReplyCache(out / "cache.jsonl").records.values()  # nothing malformed was cached
        assert sorted((r["prompt_id"], r["sample"]) for r in cached) == [
            (ids[q], j) for q in questions if q != bad for j in range(n)]
        assert "failed samples are in failed.jsonl; rerun the same command" in capsys.readouterr().out

        # The faults are spent: the teacher is good now. The rerun asks only for what failed.
        handler.log.clear()
        again = distill.run(cfg)
        assert Counter(q for q, _, _ in handler.log) == {bad: n}
        assert again["asked_this_run"] == n
        assert (again["kept"], again["failed"]) == (len(questions) * n, 0) and read(out / "failed.jsonl") == []
        assert {r["id"] for r in read_jsonl(out / "sft.jsonl", kind="sft")} == {
            f"{ids[q]}-{j}" for q in questions for j in range(n)}


# How an older thinktune, which cached replies unchecked, could have written a reply (the change to a
# valid cache record, DROP removing a field), and what the warning must say about it.
DROP = object()
POISONS = {
    "null prompt_tokens": ({"prompt_tokens": None}, r"prompt_tokens is null, expected an integer"),
    "string completion_tokens": ({"completion_tokens": "12"}, r"completion_tokens is a string, expected an integer"),
    "content not a string": ({"content": 42}, r"content is an integer, expected a string"),
    "finish_reason not a string": ({"finish_reason": 1}, r"finish_reason is an integer, expected a string or null"),
    "reasoning missing": ({"reasoning": DROP}, r"reasoning missing"),
}


@pytest.mark.parametrize("change, reason", list(POISONS.values()), ids=list(POISONS))
def test_a_poisoned_cache_entry_is_skipped_with_a_warning_and_asked_again(tmp_path, char_tokenizer, capsys,
                                                                         change, reason):
    n = 2
    questions, replies = sums(3)
    prompts = write_prompts(tmp_path / "p.jsonl", questions)
    victim_question, victim_where = list(questions)[1], ("p1", 1)
    handler = faulty_handler({}, slow_s=0)
    out = tmp_path / "run"
    with running_server(char_tokenizer, ScriptedEngine(char_tokenizer, replies), handler=handler) as server:
        cfg = distill_cfg(prompts, server.url, out, api_key_env="", n=n, timeout_s=30)
        first = distill.run(cfg)
        assert first["kept"] == len(questions) * n
        cache_file = out / "cache.jsonl"
        records = read(cache_file)
        victim = next(r for r in records if (r["prompt_id"], r["sample"]) == victim_where)
        poisoned = {k: v for k, v in (victim | change).items() if v is not DROP}
        cache_file.write_text("".join(json.dumps(poisoned if r is victim else r) + "\n" for r in records))
        capsys.readouterr()

        handler.log.clear()
        again = distill.run(cfg)
        warnings = [line for line in capsys.readouterr().out.splitlines() if "[distill] warning" in line]
        assert len(warnings) == 1, warnings
        assert str(cache_file) in warnings[0] and victim["key"] in warnings[0]
        assert re.search(reason, warnings[0]), warnings[0]
        assert [q for q, _, _ in handler.log] == [victim_question]  # the valid replies come from the cache
        assert again["asked_this_run"] == 1 and (again["kept"], again["failed"]) == (len(questions) * n, 0)
        assert again["tokens"] == first["tokens"]
        # The new reply was appended and supersedes the poisoned line: a third run asks for nothing, warns of nothing.
        assert ReplyCache(cache_file).get(victim["key"]) == victim
        assert len(read(cache_file)) == len(records) + 1
        handler.log.clear()
        third = distill.run(cfg)
        assert handler.log == [] and third["asked_this_run"] == 0 and third["kept"] == len(questions) * n
        assert "[distill] warning" not in capsys.readouterr().out
