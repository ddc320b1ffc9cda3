"""``thinktune serve``: the OpenAI wire format over the tiny model, checked with the official ``openai`` client."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from fake_teacher import running_server

from thinktune.data.chat import render_prompt
from thinktune.rollout.sampler import RolloutEngine, SamplingParams
from thinktune.serving.server import EngineWorker, message

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "What is 2+3?"}]


@pytest.fixture(scope="module")
def served(char_tokenizer, tiny_phi3):
    engine = RolloutEngine(tiny_phi3, char_tokenizer)
    with running_server(char_tokenizer, engine, api_key="sk-serve-test", name="tiny", max_new_tokens=12) as server:
        yield server, openai.OpenAI(base_url=server.url, api_key="sk-serve-test", max_retries=0, timeout=30)


def test_greedy_reply_and_usage_match_the_engine(served, char_tokenizer, tiny_phi3):
    server, client = served
    prompt = render_prompt(char_tokenizer, QUESTION)
    direct = RolloutEngine(tiny_phi3, char_tokenizer).sample(
        [prompt], SamplingParams(greedy=True, max_new_tokens=10), show_progress=False)[0][0]
    r = client.chat.completions.create(model="tiny", messages=QUESTION, temperature=0, max_tokens=10)
    assert r.usage.prompt_tokens == len(prompt)
    assert r.usage.completion_tokens == len(direct.token_ids)
    assert r.usage.total_tokens == len(prompt) + len(direct.token_ids)
    assert r.choices[0].finish_reason == ("length" if direct.finish_reason == "length" else "stop")
    want = message(direct.text, "separate")
    assert r.choices[0].message.content == want["content"]
    assert r.choices[0].message.model_extra["reasoning_content"] == want["reasoning_content"]


def test_n_samples_per_request(served):
    _, client = served
    r = client.chat.completions.create(model="tiny", messages=QUESTION, n=3, max_tokens=6, seed=1)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert 3 <= r.usage.completion_tokens <= 18  # 1 to 6 tokens each


def test_models_lists_the_served_name(served):
    _, client = served
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_streamed_reply_equals_the_plain_one(served):
    _, client = served
    plain = client.chat.completions.create(model="tiny", messages=QUESTION, temperature=0, max_tokens=8)
    chunks = list(client.chat.completions.create(model="tiny", messages=QUESTION, temperature=0, max_tokens=8,
                                                 stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == plain.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_concurrent_requests_all_answered_correctly(served):
    _, client = served
    want = client.chat.completions.create(model="tiny", messages=QUESTION, temperature=0, max_tokens=8)

    def ask(_):
        return client.chat.completions.create(model="tiny", messages=QUESTION, temperature=0, max_tokens=8)

    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(ask, range(6)))
    assert [r.choices[0].message.content for r in replies] == [want.choices[0].message.content] * 6


@pytest.mark.parametrize("kwargs, error, words", [
    ({"model": "other"}, openai.NotFoundError, "model 'other' not found"),
    ({"n": 0}, openai.BadRequestError, "'n'=0 must be in"),
    ({"n": 2, "temperature": 0}, openai.BadRequestError, "temperature 0 is greedy"),
    ({"max_tokens": 1000}, openai.BadRequestError, "'max_tokens'=1000 must be in [1, 12]"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, openai.BadRequestError, "messages[0] needs a role"),
    ({"messages": [{"role": "user", "content": "a" * 200}]}, openai.BadRequestError, "the model's context is 140"),
])
def test_bad_requests_get_clear_errors(served, kwargs, error, words):
    _, client = served
    with pytest.raises(error) as e:
        client.chat.completions.create(**({"model": "tiny", "messages": QUESTION} | kwargs))
    assert words in str(e.value)


@pytest.mark.parametrize("body, headers, status", [
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": Infinity}', {}, 400),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}', {"Content-Length": "many"}, 400),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}', {"Authorization": "Bearer no"}, 401),
])
def test_malformed_requests_get_a_reply_and_a_closed_connection(served, body, headers, status):
    """Input that breaks parsing (int(inf), a non-numeric length) is a 400 reply, never a dropped
    connection (which clients retry); after any error the connection closes, since the body may be unread."""
    server, _ = served
    host, port = server.url.split("//")[1].split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/v1/chat/completions")
    for key, value in ({"Content-Type": "application/json", "Content-Length": str(len(body)),
                        "Authorization": "Bearer sk-serve-test"} | headers).items():
        conn.putheader(key, value)
    conn.endheaders(body)
    response = conn.getresponse()
    assert response.status == status and response.getheader("Connection") == "close"
    assert "error" in json.loads(response.read())


def test_wrong_or_missing_key_is_refused(served):
    server, _ = served
    for key in ("sk-wrong", "no-key"):
        client = openai.OpenAI(base_url=server.url, api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="tiny", messages=QUESTION)


def test_reasoning_split_or_inline():
    assert message("<think>2+3=5</think> \\boxed{5}", "separate") == {
        "role": "assistant", "content": "\\boxed{5}", "reasoning_content": "2+3=5"}
    assert message("\\boxed{5}", "separate")["reasoning_content"] is None
    assert message("<think>2+3=5</think>\\boxed{5}", "inline") == {
        "role": "assistant", "content": "<think>2+3=5</think>\\boxed{5}"}


class _BlockingEngine:
    """Holds its first call until released, so that the requests queued meanwhile form the next batch."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[list[list[int]]] = []

    def sample(self, prompts, params, seed=0, batch_size=64, show_progress=True):
        self.calls.append(prompts)
        self.release.wait(5)
        return [[f"{p[0]}" for _ in range(params.n)] for p in prompts]


def test_requests_queued_during_a_batch_share_the_next_one():
    engine = _BlockingEngine()
    worker = EngineWorker(engine, batch_size=64)
    params = SamplingParams(n=1)
    first = worker.submit([0], params, None)
    while not engine.calls:  # the worker is inside the first call
        threading.Event().wait(0.001)
    rest = [worker.submit([i], params, None) for i in (1, 2, 3)]
    seeded = worker.submit([4], params, 7)  # a seeded request is decoded alone
    engine.release.set()
    assert first.result(5) == ["0"] and [f.result(5) for f in rest] == [["1"], ["2"], ["3"]]
    assert seeded.result(5) == ["4"]
    worker.close()
    assert engine.calls == [[[0]], [[1], [2], [3]], [[4]]]
    assert worker.largest_batch == 3


def _sigint_as_at_a_terminal() -> None:
    # A test run started as a background job ('make test &') ignores SIGINT, and a child inherits that:
    # the server would then never see the Ctrl-C this test sends. Give the child the default disposition.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_serve_command_listens_on_loopback_and_requires_its_key(tiny_model_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SERVE_KEY": "sk-cli-key"}
    proc = subprocess.Popen([sys.executable, "-m", "thinktune.cli", "serve", f"model.path={tiny_model_dir}",
                             "model.system_prompt=", "port=0", "api_key_env=SERVE_KEY", "max_new_tokens=8"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            preexec_fn=_sigint_as_at_a_terminal)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]  # the chat-format line, then the address
        assert lines[0].startswith("[model] chat format"), lines
        url = re.search(r"on (http://\S+/v1)", lines[1]).group(1)
        assert url.startswith("http://127.0.0.1:")
        name = Path(tiny_model_dir).name
        reply = openai.OpenAI(base_url=url, api_key="sk-cli-key", max_retries=0).chat.completions.create(
            model=name, messages=QUESTION, max_tokens=4)
        assert 1 <= reply.usage.completion_tokens <= 4
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="sk-other", max_retries=0).models.list()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    assert "sk-cli-key" not in proc.stdout.read()


def test_print_config_and_help_know_the_curation_verbs(capsys):
    from thinktune.cli import main

    for verb, args in (("serve", ["model.path=m"]), ("distill", ["prompts=p", "base_url=u", "model=o3-mini"]),
                       ("select", ["prompts=p", "model.path=m"]), ("decontaminate", ["data=d", "eval_sets=[e]"])):
        assert main(["print-config", verb, *args]) == 0
    out = capsys.readouterr().out
    assert "api_key_env: OPENAI_API_KEY" in out and "pass_rate_at_most: 0.5" in out and "ngram: 13" in out
    assert "host: 127.0.0.1" in out
    # A config still missing its required fields is shown all the same, with what it needs.
    assert main(["print-config", "sft"]) == 0
    out = capsys.readouterr().out
    assert "chat_template: auto" in out and "max_seq_len: 32768" in out
    assert out.rstrip().splitlines()[-1].startswith("# not runnable as it is:") and "data.train is empty" in out
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    assert all(v in help_text for v in ("serve", "distill", "select", "decontaminate")), help_text


def test_serve_cannot_be_a_pipeline_stage(tmp_path):
    from thinktune.errors import ConfigError
    from thinktune.recipes.pipeline import load_pipeline

    path = tmp_path / "p.yaml"
    path.write_text("stages:\n  teacher:\n    verb: serve\n    set: {model.path: m}\n")
    with pytest.raises(ConfigError, match="serve runs until stopped"):
        load_pipeline(path)


def test_settings_never_print_the_key():
    from thinktune.serving.server import ServerSettings

    assert "sk-secret-1" not in repr(ServerSettings(model_name="m", api_key="sk-secret-1"))
