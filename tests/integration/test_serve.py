"""``thinktune serve``: the OpenAI wire format over the tiny model, checked with the official ``openai`` client."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
from fake_teacher import running_server

from thinktune.data.chat import render_prompt
from thinktune.rollout.sampler import Completion, RolloutEngine, SamplingParams
from thinktune.serving.server import ChoiceStream, EngineWorker, HTTPLimits, ServerSettings, message, start

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
    assert first.future.result(5) == ["0"] and [f.future.result(5) for f in rest] == [["1"], ["2"], ["3"]]
    assert seeded.future.result(5) == ["4"]
    worker.close()
    assert engine.calls == [[[0]], [[1], [2], [3]], [[4]]]
    assert worker.largest_batch == 3


def _sigint_as_at_a_terminal() -> None:
    # A test run started as a background job ('make test &') ignores SIGINT, and a child inherits that:
    # the server would then never see the Ctrl-C this test sends. Give the child the default disposition.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_serve_command_listens_on_loopback_and_requires_its_key_and_streams(tiny_model_dir, tmp_path):
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
        chunks = list(openai.OpenAI(base_url=url, api_key="sk-cli-key", max_retries=0).chat.completions.create(
            model=name, messages=QUESTION, max_tokens=4, stream=True))
        assert chunks[0].choices[0].delta.role == "assistant" and 1 <= chunks[-1].usage.completion_tokens <= 4
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


# --------------------------------------------------------------------------------------------------------
# Serving in front of clients: backlog, bounded threads, timeouts, body limits, every field checked, streaming


@contextmanager
def serving(engine, tokenizer, http: HTTPLimits | None = None, **settings):
    """A server with these settings on 127.0.0.1 (``serve_forever`` in a thread); yields it."""
    settings = {"model_name": "tiny", "api_key": None, "max_new_tokens": 12, "max_n": 4, "context_len": 128} | settings
    server = start(ServerSettings(**settings, http=http or HTTPLimits()), tokenizer, engine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def post(server, body: dict | bytes, headers: dict | None = None, timeout: float = 10) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=timeout)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", "/v1/chat/completions", data,
                 {"Content-Type": "application/json", "Content-Length": str(len(data))} | (headers or {}))
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def closed_after(sock: socket.socket, since: float, limit: float) -> float | None:
    """Seconds from ``since`` until the server closes ``sock`` (what it sends is dropped); None: still open at
    ``since + limit``."""
    while (left := since + limit - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - since
        except TimeoutError:
            return None
        except ConnectionResetError:
            return time.monotonic() - since
    return None


@pytest.fixture(scope="module")
def engine(char_tokenizer, tiny_phi3):
    return RolloutEngine(tiny_phi3, char_tokenizer)


def test_a_burst_of_connections_waits_in_the_backlog(engine, char_tokenizer):
    """64 clients connecting at once, before the server accepts any: all connect (the listen backlog of 5 made
    the kernel drop or reset most) and all are answered, by 8 threads, the rest waiting their turn."""
    server = start(ServerSettings(model_name="tiny", api_key=None, http=HTTPLimits(workers=8)), char_tokenizer, engine)
    socks = []
    try:
        for _ in range(64):
            socks.append(socket.create_connection(server.server_address[:2], timeout=1))
    finally:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for sock in socks:
            # The answer, not its speed, is under test: a loaded CI machine may take seconds for the 64.
            sock.settimeout(60)
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        assert [sock.recv(64).split(b"\r\n")[0] for sock in socks] == [b"HTTP/1.1 200 OK"] * 64
    finally:
        server.shutdown()
        server.server_close()


def test_idle_and_slow_header_connections_are_closed_after_their_timeouts(engine, char_tokenizer):
    with serving(engine, char_tokenizer, HTTPLimits(idle_timeout_s=0.5, header_timeout_s=1.0)) as server:
        since = time.monotonic()
        idle = socket.create_connection(server.server_address[:2])
        slow = socket.create_connection(server.server_address[:2])
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")

        def drip():  # a header byte every 0.1 s: each recv is quick, the headers never end
            for _ in range(60):
                time.sleep(0.1)
                try:
                    slow.sendall(b"X")
                except OSError:
                    return

        threading.Thread(target=drip, daemon=True).start()
        idle_s, slow_s = closed_after(idle, since, 5), closed_after(slow, since, 5)
        # Closed after the deadline, not before, and well before the 5 s a missing deadline would take; the upper
        # bounds leave seconds of slack for a loaded machine.
        assert idle_s is not None and 0.4 < idle_s < 3.5, idle_s
        assert slow_s is not None and 0.9 < slow_s < 4.5, slow_s


@pytest.mark.parametrize("length, body, status, words", [
    ("-1", b"{}", 400, "is not one byte count"),
    ("+5", b"{}", 400, "is not one byte count"),
    (str(10**12), b"", 413, "takes at most 1048576"),
    ("100", b'{"model": "tiny"', 408, "did not arrive within 1 s"),
])
def test_bad_lengths_and_slow_bodies_are_refused_quickly(engine, char_tokenizer, length, body, status, words):
    """A negative length hung a thread and a huge one was a 500 MemoryError; a body that stops coming is a 408."""
    with serving(engine, char_tokenizer, HTTPLimits(body_timeout_s=1.0, max_body_mb=1.0)) as server:
        started = time.monotonic()
        got, reply = post(server, body, {"Content-Length": length}, timeout=5)
        assert (got, time.monotonic() - started < 4) == (status, True)  # a hang would reach the 5 s timeout
        assert words in reply["error"]["message"]


def test_a_body_that_would_be_refused_is_refused_before_100_continue(served):
    server, _ = served
    with socket.create_connection(server.server_address[:2], timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-serve-test\r\n"
                     b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % 10**9)
        assert sock.recv(64).startswith(b"HTTP/1.1 413 ")


def test_connections_beyond_the_threads_and_queue_get_503(engine, char_tokenizer):
    with serving(engine, char_tokenizer, HTTPLimits(workers=1, max_waiting=0, idle_timeout_s=3)) as server:
        holder = socket.create_connection(server.server_address[:2])  # the one thread waits on its request
        time.sleep(0.2)
        assert post(server, {"model": "tiny", "messages": QUESTION})[0] == 503
        holder.close()


def test_a_long_prompt_is_refused_before_it_is_tokenized(engine, char_tokenizer, monkeypatch):
    with serving(engine, char_tokenizer) as server:
        monkeypatch.setattr(server.tokenizer, "apply_chat_template", None)  # tokenizing now fails loudly
        status, reply = post(server, {"model": "tiny", "messages": [{"role": "user", "content": "a" * 200_000}]})
    assert status == 400 and "200000 characters" in reply["error"]["message"], reply


BAD_FIELDS = [
    ("seed", 2**70), ("seed", 1.5), ("seed", "7"), ("n", 1.5), ("n", "2"), ("n", 5), ("n", True),
    ("temperature", -0.1), ("temperature", 2.5), ("temperature", "hot"), ("top_p", 0), ("top_p", 1.5),
    ("max_tokens", 0), ("max_tokens", "8"), ("max_tokens", 2.5), ("max_completion_tokens", -3),
    ("stop", [1]), ("stop", ["x"] * 17), ("stop", "y" * 129), ("stop", [""]), ("stream", "yes"),
    ("logprobs", True), ("tools", [{"type": "function"}]), ("presence_penalty", 0.5),
    ("response_format", {"type": "json_object"}), ("messages", "hi"), ("messages", []),
    ("messages", [{"role": "user"}]), ("messages", [{"role": "user", "content": 3}]),
    ("messages", [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
    ("messages", ["hi"]),
]


def test_every_invalid_field_value_is_a_400_naming_it(served):
    server, _ = served
    for name, value in BAD_FIELDS:
        status, reply = post(server, {"model": "tiny", "messages": QUESTION, name: value},
                             {"Authorization": "Bearer sk-serve-test"})
        assert (status, reply["error"]["param"]) == (400, name), (name, value, reply)


def test_max_tokens_above_the_cap_is_clamped_when_the_server_says_so(engine, char_tokenizer):
    with serving(engine, char_tokenizer, max_tokens_over_cap="clamp") as server:
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
        reply = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=32768, temperature=0)
        assert 1 <= reply.usage.completion_tokens <= 12
    with serving(engine, char_tokenizer) as server:
        status, reply = post(server, {"model": "tiny", "messages": QUESTION, "max_tokens": 32768})
        assert status == 400 and "cap is 12" in reply["error"]["message"] and "max_tokens_over_cap=clamp" in str(reply)


class _TickingEngine:
    """Draws the token of ``char`` every ``step_s`` seconds up to max_new_tokens, reporting each step to the
    ``on_step`` hook, and stops a prompt's rows when the hook says so, as ``RolloutEngine`` does."""

    def __init__(self, tokenizer, char: str = "a", step_s: float = 0.05) -> None:
        self.tokenizer, self.step_s = tokenizer, step_s
        self.token = tokenizer.convert_tokens_to_ids(char)
        self.results: list[list[list[Completion]]] = []

    def sample(self, prompts, params, seed=0, batch_size=64, show_progress=True, on_step=None):
        live = [(p, j) for p in range(len(prompts)) for j in range(params.n)]
        tokens, reasons = {r: [] for r in live}, dict.fromkeys(live, "length")
        for _ in range(params.max_new_tokens):
            time.sleep(self.step_s)
            for r in live:
                tokens[r].append(self.token)
            stop = set(on_step(live, [self.token] * len(live)) or ()) if on_step else set()
            reasons |= {r: "cancelled" for r in live if r[0] in stop}
            if not (live := [r for r in live if r[0] not in stop]):
                break
        out = [[Completion(tokens[p, j], self.tokenizer.decode(tokens[p, j]), reasons[p, j] != "length",
                           finish_reason=reasons[p, j]) for j in range(params.n)] for p in range(len(prompts))]
        self.results.append(out)
        return out


def test_stream_sends_tokens_as_they_are_drawn(char_tokenizer):
    engine = _TickingEngine(char_tokenizer, step_s=0.05)
    with serving(engine, char_tokenizer, max_new_tokens=20) as server:
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
        started, arrivals, text = time.monotonic(), [], ""
        for chunk in client.chat.completions.create(model="tiny", messages=QUESTION, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic() - started)
                text += chunk.choices[0].delta.content
        total = time.monotonic() - started
    assert text == "a" * 20 and len(arrivals) >= 10  # one chunk per step or two, not one at the end
    assert arrivals[0] < total / 3, (arrivals[0], total)


def test_a_client_that_leaves_mid_stream_stops_its_generation(char_tokenizer):
    engine = _TickingEngine(char_tokenizer, step_s=0.02)
    with serving(engine, char_tokenizer, max_new_tokens=100) as server:
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
        stream = client.chat.completions.create(model="tiny", messages=QUESTION, stream=True, max_tokens=100)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        stream.close()
        deadline = time.monotonic() + 5
        while not engine.results and time.monotonic() < deadline:
            time.sleep(0.01)
    (completion,), = engine.results[0]
    assert completion.finish_reason == "cancelled" and len(completion.token_ids) < 50, len(completion.token_ids)


def test_on_step_reports_every_token_and_stops_only_the_prompts_it_names(engine, char_tokenizer):
    prompts = [render_prompt(char_tokenizer, QUESTION), render_prompt(char_tokenizer, [
        {"role": "user", "content": "Be brief. 7*8"}])]
    params = SamplingParams(greedy=True, max_new_tokens=10)
    plain = engine.sample(prompts, params, show_progress=False)
    seen: dict[tuple[int, int], list[int]] = {}

    def on_step(rows, tokens):
        for row, token in zip(rows, tokens, strict=True):
            seen.setdefault(row, []).append(token)
        return [0] if len(seen[0, 0]) == 3 else None

    hooked = engine.sample(prompts, params, show_progress=False, on_step=on_step)
    assert plain[0][0].finish_reason == "length"  # (so that cancelling it is visible)
    assert hooked[0][0].token_ids == plain[0][0].token_ids[:3] and hooked[0][0].finish_reason == "cancelled"
    assert not hooked[0][0].finished and hooked[1][0].token_ids == plain[1][0].token_ids
    assert seen[0, 0] == hooked[0][0].token_ids and seen[1, 0] == hooked[1][0].token_ids


@pytest.mark.parametrize("reply, stops, think_open, want", [
    ("<think>ab</think> cd", (), False, {"reasoning_content": "ab", "content": "cd"}),
    ("  ab cd ", (), False, {"content": "ab cd"}),
    ("ab</think>cd", (), True, {"reasoning_content": "ab", "content": "cd"}),
    ("ab cd", ("b c",), False, {"content": "ab c"}),
])
def test_streamed_deltas_add_up_to_the_plain_message(char_tokenizer, reply, stops, think_open, want):
    """Fed token by token, a choice's deltas never get ahead of what the finished text says: no partial tag or
    stop string, no trailing space, no EOS. The stop case's final text ends right after the stop string."""
    ids = [*char_tokenizer(reply, add_special_tokens=False).input_ids, char_tokenizer.eos_token_id]
    stream, got = ChoiceStream(char_tokenizer, stops, "separate", think_open), {}
    final = reply[:reply.find(stops[0]) + len(stops[0])] if stops else reply
    for i, token in enumerate(ids):
        stream.tokens.append(token)
        for key, value in stream.delta().items():
            got[key] = got.get(key, "") + value
        assert all(want[k].startswith(v) for k, v in got.items()), (i, got)
    for key, value in stream.delta(final).items():
        got[key] = got.get(key, "") + value
    assert got == want
    if not think_open:
        assert {k: v for k, v in message(final, "separate").items() if v and k != "role"} == want
