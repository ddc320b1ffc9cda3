"""A tiny pipeline end to end: data, model, SFT, evaluation, report; reruns skip, changes rerun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from thinktune.recipes import pipeline

pytestmark = pytest.mark.integration

TINY = {
    "run_dir": None,
    "stages": {
        "data": {"verb": "synth", "set": {"n_train": 120, "n_heldout_per_level": 4}},
        "model": {"verb": "build-model", "set": {"corpus": "{data}/sft_cot.jsonl", "hidden_size": 32,
                                                 "num_layers": 1, "intermediate_size": 64}},
        "sft": {"verb": "sft", "set": {
            "model.path": "{model}", "model.system_prompt": "", "data.train": "{data}/sft_cot.jsonl",
            "batch_size": 8, "micro_batch_size": 8, "max_steps": 3, "optim.warmup_steps": 1,
            "log.progress": False}},
        "eval-model": {"verb": "evaluate", "set": {
            "model.path": "{model}", "model.system_prompt": "", "data.prompts": "{data}/heldout_prompts.jsonl",
            "sampling.n": 2, "sampling.max_new_tokens": 8, "label": "init"}},
        "eval-sft": {"verb": "evaluate", "set": {
            "model.path": "{sft}/final", "model.system_prompt": "", "data.prompts": "{data}/heldout_prompts.jsonl",
            "sampling.n": 2, "sampling.max_new_tokens": 8, "label": "sft"}},
    },
    "report": ["eval-model", "eval-sft"],
}


def write_pipeline(tmp_path: Path) -> Path:
    spec = {**TINY, "run_dir": str(tmp_path / "run")}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_pipeline_runs_skips_and_reruns_what_changed(tmp_path):
    path = write_pipeline(tmp_path)
    first = pipeline.run(pipeline.load_pipeline(path))
    assert set(first["stages"].values()) == {"ran"}
    run_dir = tmp_path / "run"
    report = json.loads((run_dir / "eval-sft" / "report.json").read_text())
    levels = {k for k in report["groups"] if k != "all"}
    assert levels == {"difficulty=1", "difficulty=2", "difficulty=3"}
    assert report["groups"]["all"]["num_problems"] == 12
    assert report["groups"]["all"]["samples_per_problem"] == 2
    samples = (run_dir / "eval-sft" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 24
    text = (run_dir / "report.md").read_text()
    assert "| init |" in text and "| sft |" in text
    # maj@2 overall and per level, as the evaluation's own report has it
    assert "| sft | 2 | " + " | ".join(f"{m['maj@2']:.1f}" for m in report["groups"].values()) + " |" in text
    assert (run_dir / "plots" / "comparison.png").stat().st_size > 0
    # the report embeds the comparison chart and each training stage's curves, with what they show
    assert "](plots/comparison.png)" in text
    assert "- **sft**: SFT: training loss" in text and "](sft/plots/loss.png)" in text
    # init -> sft: its change with a paired-bootstrap interval over the 12 problems
    assert "| init → sft |" in text and "bootstrap" in text

    second = pipeline.run(pipeline.load_pipeline(path))
    assert set(second["stages"].values()) == {"skipped"}

    # A second pipeline over the same run_dir with its own report_file reuses the finished stages and leaves
    # the first report as it was.
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**TINY, "run_dir": str(run_dir), "report": ["eval-sft", "eval-model"],
                                     "report_file": "report-other.md"}, sort_keys=False))
    before = (run_dir / "report.md").read_text()
    assert set(pipeline.run(pipeline.load_pipeline(other))["stages"].values()) == {"skipped"}
    assert (run_dir / "report.md").read_text() == before
    assert (run_dir / "report-other.md").read_text().index("| sft |") < (run_dir / "report-other.md").read_text().index("| init |")
    assert (run_dir / "plots" / "comparison-report-other.png").stat().st_size > 0

    # Changing SFT reruns it and the evaluation that reads it, and nothing else.
    third = pipeline.run(pipeline.load_pipeline(path, overrides=["sft.max_steps=4"]))
    assert third["stages"] == {"data": "skipped", "model": "skipped", "sft": "ran", "eval-model": "skipped",
                               "eval-sft": "ran"}
    assert json.loads((run_dir / "sft" / "summary.json").read_text())["steps"] == 4


def test_pipeline_errors_name_the_problem(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"stages": {"a": {"verb": "nope"}}}))
    with pytest.raises(pipeline.ConfigError, match="unknown verb 'nope'"):
        pipeline.load_pipeline(path)
    path.write_text(yaml.safe_dump({"stages": {"a": {"verb": "synth", "set": {"output_dir": "{b}"}}}}))
    with pytest.raises(pipeline.ConfigError, match=r"refers to \{b\}"):
        pipeline.load_pipeline(path)
    path.write_text(yaml.safe_dump({"stages": {"b": {"verb": "synth", "set": {"output_dir": "{a}"}},
                                               "a": {"verb": "synth"}}}, sort_keys=False))
    with pytest.raises(pipeline.ConfigError, match=r"reads \['a'\], which run after it"):
        pipeline.load_pipeline(path)
    path = write_pipeline(tmp_path)
    with pytest.raises(pipeline.ConfigError, match="STAGE.key=value"):
        pipeline.load_pipeline(path, overrides=["nostage.x=1"])
