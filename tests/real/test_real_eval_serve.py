"""Evaluation on GSM8K and MATH-500 files in their HF schemas, and ``thinktune serve`` answering the ``openai``
client, on SmolLM2.

Base SmolLM2 is not expected to solve these within a few dozen tokens; what is checked is that the report's
numbers are the ones its samples give, and that the served replies are the sampler's own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import openai
import pytest
from smollm2_data import write_jsonl

from thinktune.config import load_config
from thinktune.data.chat import render_prompt
from thinktune.recipes import evaluate
from thinktune.rollout.sampler import RolloutEngine, SamplingParams
from thinktune.serving.server import message
from thinktune.tasks.benchmarks import BENCHMARKS, PROBLEM, PROMPT_TEMPLATES

pytestmark = pytest.mark.real

# A few rows in each benchmark's own schema (as the HF datasets ship them), answers known.
GSM8K = [{"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
          "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
         {"question": "A box holds 12 eggs. How many eggs are in 2 boxes?", "answer": "12 * 2 = 24\n#### 24"},
         {"question": "Sara had 1,200 dollars and spent 200. How much is left?", "answer": "1,200 - 200\n#### 1,000"}]
MATH500 = [{"problem": "What is $2 + 3$?", "solution": "$5$", "answer": "5", "subject": "Prealgebra", "level": 1,
            "unique_id": "test/prealgebra/1.json"},
           {"problem": "Simplify $\\frac{2}{4}$.", "solution": "...", "answer": "\\frac{1}{2}",
            "subject": "Algebra", "level": 2, "unique_id": "test/algebra/2.json"}]
ANSWERS = {"gsm8k": ["7", "24", "1000"], "math500": ["5", "\\frac{1}{2}"]}


@pytest.mark.parametrize("benchmark, rows", [("gsm8k", GSM8K), ("math500", MATH500)])
def test_evaluate_reports_pass_at_1_on_benchmark_files(smollm2_dir, smollm2, tmp_path, benchmark, rows):
    path = write_jsonl(tmp_path / f"{benchmark}.jsonl", rows)
    out = tmp_path / "eval"
    report = evaluate.run(load_config(evaluate.EvalConfig, None, [
        f"model.path={smollm2_dir}", f"data.benchmark={benchmark}", f"data.path={path}", "sampling.n=2",
        "ks=[1,2]", "sampling.max_new_tokens=24", f"output_dir={out}"]))
    assert report["groups"] == json.loads((out / "report.json").read_text())["groups"]
    summary = report["groups"]["all"]
    assert summary["num_problems"] == len(rows) and summary["samples_per_problem"] == 2
    for key in ("pass@1", "pass@1_std", "pass@2", "maj@2", "format_ok", "mean_length"):
        assert key in summary, key
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 2 * len(rows) and all(1 <= r["num_tokens"] <= 24 for r in records)
    # The answers are the schema's (GSM8K's after '####', thousands separators dropped).
    assert [r["answer"] for r in records if r["sample"] == 0] == ANSWERS[benchmark]
    # pass@1 is the mean over runs of each run's accuracy: the mean of every sample's verdict.
    runs = [[r["correct"] for r in records if r["sample"] == j] for j in range(2)]
    assert report["run_accuracies"] == pytest.approx([100 * sum(c) / len(c) for c in runs])  # percent
    assert summary["pass@1"] == pytest.approx(sum(report["run_accuracies"]) / 2)
    # Prompts are the benchmark's default template around the question, through SmolLM2's own chat template,
    # its default system turn included.
    question = rows[0].get("question") or rows[0]["problem"]
    template = PROMPT_TEMPLATES[BENCHMARKS[benchmark].template].text
    assert PROBLEM in template and template != PROBLEM  # an instruction beside the question
    want = smollm2[0].apply_chat_template([{"role": "user", "content": template.replace(PROBLEM, question)}],
                                          tokenize=False, add_generation_prompt=True)
    assert records[0]["prompt"] == want and want.startswith("<|im_start|>system\n")


QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def _sigint_as_at_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background test run ignores SIGINT; the server must not


@pytest.fixture(scope="module")
def served(smollm2_dir):
    """``thinktune serve`` on SmolLM2 as a user starts it, in its own process, on a free port.

    Its own process, not a thread here: torch run on the server's engine thread inside pytest left a C++
    thread joinable at interpreter exit (std::terminate, exit code 134), which the CLI never shows.
    """
    proc = subprocess.Popen([sys.executable, "-m", "thinktune.cli", "serve", f"model.path={smollm2_dir}",
                             "served_name=smollm2", "port=0", "max_new_tokens=32"],
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, preexec_fn=_sigint_as_at_a_terminal)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]  # the chat-format line, then the address
        url = re.search(r"on (http://\S+/v1)", lines[1]).group(1)
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0  # Ctrl-C stops it cleanly


def test_served_greedy_reply_is_the_samplers(served, smollm2):
    tok, model, _ = smollm2
    prompt = render_prompt(tok, QUESTION)
    (direct,) = RolloutEngine(model, tok).sample([prompt], SamplingParams(greedy=True, max_new_tokens=16),
                                                 show_progress=False)[0]
    r = served.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=16)
    assert r.usage.prompt_tokens == len(prompt) and r.usage.completion_tokens == len(direct.token_ids)
    assert r.choices[0].message.content == message(direct.text, "separate")["content"]
    assert r.choices[0].finish_reason == ("stop" if direct.finished else "length")
    assert [m.id for m in served.models.list().data] == ["smollm2"]


def test_streamed_reply_equals_the_plain_one(served):
    plain = served.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=16)
    chunks = list(served.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0,
                                                 max_tokens=16, stream=True))
    assert len(chunks) >= 2  # a role/content chunk and the closing one with the finish reason
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content and text.strip()
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [plain.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    # Sampled replies: n per request, each within the budget.
    r = served.chat.completions.create(model="smollm2", messages=QUESTION, n=2, max_tokens=8, seed=3)
    assert [c.index for c in r.choices] == [0, 1] and 2 <= r.usage.completion_tokens <= 16
