"""select-prompts end to end on a tiny model, and the sampler choice the curation verbs share."""

from __future__ import annotations

import json

import pytest

from thinktune.config import ModelConfig, SamplingConfig, load_config
from thinktune.curation.passrate import load_student
from thinktune.errors import ConfigError
from thinktune.recipes import select_prompts
from thinktune.rollout.sampler import RolloutEngine

pytestmark = pytest.mark.integration


def test_select_prompts_keeps_the_most_uniform_lengths(tiny_model_dir, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"{i}+{i}", "answer": str(2 * i)}) + "\n"
                               for i in range(6)))
    out = tmp_path / "sel"
    summary = select_prompts.run(load_config(select_prompts.SelectPromptsConfig, None, [
        f"model.path={tiny_model_dir}", "model.system_prompt=", f"prompts={prompts}", "sampling.n=3", "sampling.max_new_tokens=8",
        "keep_fraction=0.5", "sampling.backend=thinktune", f"output_dir={out}"]))
    kept = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    assert summary["candidates"] == 6 and summary["kept"] == len(kept) == 3
    # the kept prompts are the half with the smallest length CV, so their mean CV cannot exceed everyone's
    assert summary["after"]["mean_cv"] <= summary["before"]["mean_cv"]
    assert summary["after"]["mean_cv"] == pytest.approx(sum(r["length_cv"] for r in kept) / 3)
    assert (out / "plots" / "length_cv.png").stat().st_size > 0
    assert "| after | 3 |" in (out / "report.md").read_text()


def test_curation_verbs_sample_on_the_backend_asked_for(tiny_model_dir):
    cfg = ModelConfig(path=str(tiny_model_dir), system_prompt="")
    engine, tokenizer = load_student(cfg, SamplingConfig(backend="thinktune"))
    assert isinstance(engine, RolloutEngine) and len(tokenizer) > 0
    assert isinstance(load_student(cfg, SamplingConfig())[0], RolloutEngine)
    with pytest.raises(ConfigError, match="needs `pip install 'thinktune\\[vllm\\]'`"):
        load_student(cfg, SamplingConfig(backend="vllm"))
