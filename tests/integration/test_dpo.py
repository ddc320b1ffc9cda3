"""Rollout DPO end to end on the embedded world: pair mining from saved teacher samples, training, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from thinktune.config import SamplingConfig, load_config
from thinktune.data.synth import SynthConfig
from thinktune.data.synth import run as run_synth
from thinktune.errors import DataError
from thinktune.modeling import build_model
from thinktune.recipes import dpo, dpo_pairs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mined(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dpo")
    run_synth(SynthConfig(n_train=200, n_heldout_per_level=2, slip_rate=0.3, rollout_prompts=120, rollout_k=4,
                          output_dir=str(root / "data")))
    build_model.run(build_model.BuildModelConfig(
        corpus=str(root / "data" / "sft_cot.jsonl"), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=64, max_position_embeddings=160, output_dir=str(root / "model")))
    cfg = load_config(dpo_pairs.DPOPairsConfig, None, [
        f"prompts={root / 'data' / 'train_prompts.jsonl'}", f"samples={root / 'data' / 'teacher_rollouts.jsonl'}",
        "limit=120", "sampling.n=4", "pairs_per_prompt=2", "heldout_fraction=0.25", f"output_dir={root / 'pairs'}"])
    summary = dpo_pairs.run(cfg)
    assert summary["samples"] == 480
    train, held = summary["train"], summary["heldout"]
    assert train["prompts"] + held["prompts"] == 120 and held["prompts"] == 30
    assert train["mixed"] + train["all_correct"] + train["all_wrong"] == train["prompts"]
    return root


def dpo_args(root: Path, out: Path, **extra) -> list[str]:
    args = {"model.path": root / "model", "model.system_prompt": "", "data.train": root / "pairs" / "pairs.jsonl",
            "data.eval": root / "pairs" / "heldout_pairs.jsonl", "optim.lr": 3e-3, "beta": 0.5, "batch_size": 8,
            "micro_batch_size": 4, "max_steps": 6, "log.log_every": 1, "log.save_every": 2,
            "log.progress": "false", "output_dir": out}
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


def test_pairs_are_correct_against_incorrect_on_disjoint_prompts(mined):
    pairs = [json.loads(line) for line in (mined / "pairs" / "pairs.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (mined / "pairs" / "heldout_pairs.jsonl").read_text().splitlines()]
    answers = {json.loads(line)["id"]: json.loads(line)["answer"]
               for line in (mined / "data" / "train_prompts.jsonl").read_text().splitlines()}
    for p in pairs + held:
        boxed = "\\boxed{" + answers[p["prompt_id"]] + "}"
        assert p["chosen"].endswith(boxed) and not p["rejected"].endswith(boxed)
    assert not {p["prompt_id"] for p in pairs} & {p["prompt_id"] for p in held}


def test_dpo_learns_the_preferences_and_resumes_exactly(mined, tmp_path):
    out = tmp_path / "dpo"
    summary = dpo.run(load_config(dpo.DPOConfig, None, dpo_args(mined, out)))
    assert summary["eval_before"]["eval/rewards/accuracies"] == 0.5  # policy == reference: every pair is a tie
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert train[-1]["train/rewards/margins"] > 0 and train[-1]["train/loss"] < train[0]["train/loss"]
    for r in train:  # TRL's names under train/; the margin is chosen minus rejected, pair by pair and on average
        assert r["train/rewards/margins"] == pytest.approx(r["train/rewards/chosen"] - r["train/rewards/rejected"],
                                                           abs=1e-6)
        assert 0 <= r["train/rewards/accuracies"] <= 1
    assert set(summary["eval_after"]) == {"eval/loss", "eval/rewards/chosen", "eval/rewards/rejected",
                                          "eval/rewards/margins", "eval/rewards/accuracies"}
    assert (out / "final" / "config.json").is_file() and (out / "ref_logps.pt").is_file()

    # Drop everything after the step-2 checkpoint, as if killed there; the rerun must repeat steps 3-6.
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoints" / "step-4")
    dpo.run(load_config(dpo.DPOConfig, None, dpo_args(mined, resumed)))
    again = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    want = {r["step"]: r["train/loss"] for r in train}
    got = {r["step"]: r["train/loss"] for r in again if "train/loss" in r}
    assert got.keys() == want.keys()
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-5), step


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_preference_rows(mined, tmp_path):
    good = {"id": "a", "prompt": "1+1", "chosen": "<think>1+1=2</think>\\boxed{2}", "rejected": "\\boxed{3}"}
    missing = write(tmp_path / "missing.jsonl", [good, {"id": "b", "prompt": "1+2", "chosen": "\\boxed{3}"}])
    with pytest.raises(DataError, match=r"missing.jsonl:2: missing field 'rejected'"):
        dpo.run(load_config(dpo.DPOConfig, None, dpo_args(mined, tmp_path / "o1", **{"data.train": missing,
                                                                                    "data.eval": ""})))
    same = {**good, "id": "c", "rejected": good["chosen"]}
    mixed = write(tmp_path / "mixed.jsonl", [good, same])
    summary = dpo.run(load_config(dpo.DPOConfig, None, dpo_args(
        mined, tmp_path / "o2", **{"data.train": mixed, "data.eval": "", "max_steps": 1, "batch_size": 4})))
    assert summary["data"] == {"rows": 2, "identical": 1, "too_long": 0} and summary["train_pairs"] == 1
    only_same = write(tmp_path / "same.jsonl", [same])
    with pytest.raises(DataError, match="no usable pairs"):
        dpo.run(load_config(dpo.DPOConfig, None, dpo_args(mined, tmp_path / "o3", **{"data.train": only_same,
                                                                                   "data.eval": ""})))


def test_a_bad_saved_sample_is_named_by_its_line(tmp_path):
    # A blank line before it: the message names the file's line 3, not the second record.
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"prompt_id": 1, "completion": "x"}) + "\n\n" + json.dumps({"prompt_id": 1}) + "\n")
    cfg = dpo_pairs.DPOPairsConfig(prompts=str(tmp_path / "p.jsonl"), samples=str(samples))
    with pytest.raises(DataError, match=f"{samples}:3: a rollout record needs"):
        dpo_pairs.saved_samples(cfg, [{"id": 1}])


def _saved(tmp_path: Path, records: list[dict]) -> dpo_pairs.DPOPairsConfig:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"{i}+1", "answer": str(i + 1)}) + "\n" for i in (1, 2)))
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in records))
    return dpo_pairs.DPOPairsConfig(prompts=str(prompts), samples=str(samples), sampling=SamplingConfig(n=2), heldout_fraction=0.0,
                                    output_dir=str(tmp_path / "out"))


def test_truncated_samples_are_counted_never_paired_and_all_wrong_asks_for_easier_prompts(tmp_path):
    # Prompt 1's correct sample was cut at the length limit, so only wrong finished samples are left.
    cfg = _saved(tmp_path, [{"prompt_id": 1, "completion": "\\boxed{2}", "finished": False},
                            {"prompt_id": 1, "completion": "\\boxed{5}"},
                            {"prompt_id": 2, "completion": "\\boxed{7}"}, {"prompt_id": 2, "completion": "\\boxed{8}"}])
    with pytest.raises(DataError, match="every sample is wrong: choose easier prompts"):
        dpo_pairs.run(cfg)
    written = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert len(written) == 4 and [r["finished"] for r in written] == [False, True, True, True]
    assert written[0]["correct"]  # recorded with its verdict, yet not paired


def test_mostly_truncated_samples_ask_for_a_longer_budget(tmp_path):
    cfg = _saved(tmp_path, [{"prompt_id": 1, "completion": "\\boxed{2}"},
                            {"prompt_id": 1, "completion": "\\boxed{2", "finished": False},
                            {"prompt_id": 2, "completion": "thinking", "finished": False},
                            {"prompt_id": 2, "completion": "thinking", "finished": False}])
    with pytest.raises(DataError, match="3 of 4 samples were cut at the sampler's length limit"):
        dpo_pairs.run(cfg)
    summary = dpo_pairs.advice({"samples": 4, "finished": 4, "truncated": 0, "correct": 4}, 64)
    assert summary == "every finished sample is correct: choose harder prompts"
