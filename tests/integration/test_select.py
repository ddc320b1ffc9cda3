"""``thinktune select``: pass-rate bands on a stub student whose pass rates are set in advance, resume by
chunk, and one run of the real sampling path on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thinktune.config import load_config
from thinktune.errors import ConfigError
from thinktune.recipes import select
from thinktune.rollout.sampler import Completion

pytestmark = pytest.mark.integration

K = 4


def write_prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Q{i}", "answer": "5"}) + "\n" for i in range(n)))
    return path


class StubStudent:
    """Prompt "Qi" gets ``i % (K + 1)`` correct samples ("\\boxed{5}") out of K; the rest say 6."""

    def __init__(self, fail_on_call: int = -1) -> None:
        self.seen: list[list[str]] = []  # prompt ids per call
        self.fail_on_call = fail_on_call

    def __call__(self, sampler, tokenizer, rows, params, seed):
        if len(self.seen) == self.fail_on_call:
            raise KeyboardInterrupt  # as if killed in the middle of this chunk
        self.seen.append([r["id"] for r in rows])
        assert params.n == K
        out = []
        for r in rows:
            right = int(r["prompt"][1:]) % (K + 1)
            texts = ["<think>2+3=5</think>\\boxed{5}"] * right + ["<think>2+3=6</think>\\boxed{6}"] * (K - right)
            out.append([Completion(token_ids=[1], text=t, finished=True) for t in texts])
        return out


def cfg_for(tmp_path: Path, prompts: Path, *extra: str) -> select.SelectConfig:
    return load_config(select.SelectConfig, None, [f"prompts={prompts}", "model.path=student", f"sampling.n={K}",
                                                   f"output_dir={tmp_path / 'out'}", *extra])


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_keeps_the_default_band_and_reuses_estimates(tmp_path, monkeypatch):
    student = StubStudent()
    monkeypatch.setattr(select, "load_student", lambda cfg, sampling: (None, None))
    monkeypatch.setattr(select, "sample_rows", student)
    prompts = write_prompts(tmp_path / "p.jsonl", 5)  # 0, 1, 2, 3, 4 correct of 4
    summary = select.run(cfg_for(tmp_path, prompts))
    out = tmp_path / "out"
    kept = read(out / "selected.jsonl")
    assert [(r["id"], r["pass_rate"], r["correct"]) for r in kept] == [("p1", 0.25, 1), ("p2", 0.5, 2)]
    assert [e["pass_rate"] for e in read(out / "estimates.jsonl")] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert summary["histogram"] == {"0/4": 1, "1/4": 1, "2/4": 1, "3/4": 1, "4/4": 1}
    assert summary["mean_pass_rate"] == pytest.approx(0.5) and summary["kept"] == 2
    assert (out / "plots" / "pass_rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 1/4 | 1 | yes |" in (out / "report.md").read_text()

    # Another band from the same estimates: nothing is sampled again.
    again = select.run(cfg_for(tmp_path, prompts, "pass_rate_above=-1", "pass_rate_at_most=0.25"))
    assert len(student.seen) == 1 and again["kept"] == 2
    assert [r["id"] for r in read(out / "selected.jsonl")] == ["p0", "p1"]


def test_a_killed_run_resumes_with_the_next_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(select, "load_student", lambda cfg, sampling: (None, None))
    prompts = write_prompts(tmp_path / "p.jsonl", 7)
    monkeypatch.setattr(select, "sample_rows", StubStudent(fail_on_call=1))
    with pytest.raises(KeyboardInterrupt):
        select.run(cfg_for(tmp_path, prompts, "chunk_prompts=3"))
    student = StubStudent()
    monkeypatch.setattr(select, "sample_rows", student)
    summary = select.run(cfg_for(tmp_path, prompts, "chunk_prompts=3"))
    assert student.seen == [["p3", "p4", "p5"], ["p6"]]  # p0-p2 were estimated before the kill
    assert [r["id"] for r in read(tmp_path / "out" / "selected.jsonl")] == ["p1", "p2", "p6"]  # p6: 1 of 4
    assert summary["candidates"] == 7


def test_band_must_not_be_empty(tmp_path):
    with pytest.raises(ConfigError, match="is empty; make the first smaller"):
        cfg_for(tmp_path, tmp_path / "p.jsonl", "pass_rate_above=0.5", "pass_rate_at_most=0.5")


def test_real_sampling_path_on_the_tiny_model(tmp_path, tiny_model_dir):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": "What is 2+3?", "answer": "5"}) + "\n" for i in range(3)))
    summary = select.run(load_config(select.SelectConfig, None, [
        f"prompts={prompts}", f"model.path={tiny_model_dir}", "model.system_prompt=", "sampling.n=2", "sampling.max_new_tokens=4",
        f"output_dir={tmp_path / 'out'}"]))
    estimates = read(tmp_path / "out" / "estimates.jsonl")
    assert [e["id"] for e in estimates] == ["0", "1", "2"] and all(0 <= e["correct"] <= 2 for e in estimates)
    assert sum(summary["histogram"].values()) == 3
