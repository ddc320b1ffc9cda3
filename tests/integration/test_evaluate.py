"""Evaluation on a named benchmark read from a local file in its HF schema, with a model built on the spot."""

from __future__ import annotations

import json

import pytest

from thinktune.config import load_config
from thinktune.recipes import evaluate

pytestmark = pytest.mark.integration


def test_evaluate_reads_aime_file_and_writes_reports(tiny_model_dir, tmp_path):
    rows = [{"id": i, "problem": f"{i}+{i}", "solution": "", "answer": str(2 * i), "url": "", "year": 2024}
            for i in range(1, 6)]
    path = tmp_path / "aime24.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    cfg = load_config(evaluate.EvalConfig, None, [
        f"model.path={tiny_model_dir}", "model.system_prompt=", "data.benchmark=aime24", f"data.path={path}",
        "sampling.n=3", "ks=[1,2,3]", "sampling.max_new_tokens=6", f"output_dir={out}"])
    report = evaluate.run(cfg)

    summary = report["groups"]["all"]
    assert summary["num_problems"] == 5 and summary["samples_per_problem"] == 3
    assert len(report["run_accuracies"]) == 3
    # pass@1 is the mean of the run accuracies, by definition.
    assert summary["pass@1"] == pytest.approx(sum(report["run_accuracies"]) / 3)
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 15 and {r["prompt_id"] for r in records} == {str(i) for i in range(1, 6)}
    assert all(r["num_tokens"] <= 6 for r in records)
    # Each record holds the prompt as the model saw it: the chat template around the problem.
    first = next(r for r in records if r["prompt_id"] == "1")["prompt"]
    assert first.startswith("<|im_start|>user<|im_sep|>") and "1+1" in first
    assert first.endswith("<|im_end|><|im_start|>assistant<|im_sep|>")
    assert "| all | 5 |" in (out / "report.md").read_text()
    assert (out / "plots" / "runs.png").stat().st_size > 0


def test_greedy_is_deterministic(tiny_model_dir, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"{i}*3", "answer": str(3 * i)}) + "\n"
                               for i in range(4)))
    reports = []
    for name in ("a", "b"):
        cfg = load_config(evaluate.EvalConfig, None, [
            f"model.path={tiny_model_dir}", "model.system_prompt=", f"data.prompts={prompts}", "sampling.n=1",
            "sampling.greedy=true", "sampling.max_new_tokens=5", f"output_dir={tmp_path / name}"])
        evaluate.run(cfg)
        reports.append((tmp_path / name / "samples.jsonl").read_text())
    assert reports[0] == reports[1]


def test_sampling_backend_is_checked(tiny_model_dir, tmp_path):

    from thinktune.errors import ConfigError

    args = [f"model.path={tiny_model_dir}", "data.prompts=p.jsonl", f"output_dir={tmp_path / 'e'}"]
    with pytest.raises(ConfigError, match="'sampling.backend' is 'vlm'"):
        load_config(evaluate.EvalConfig, None, [*args, "sampling.backend=vlm"])
    with pytest.raises(ConfigError, match="pip install 'thinktune\\[vllm\\]'"):
        evaluate.run(load_config(evaluate.EvalConfig, None, [*args, "sampling.backend=vllm"]))
