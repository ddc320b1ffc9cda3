"""Tests for the world's data writer: schemas, contents, disjointness and reproducibility."""

from __future__ import annotations

from pathlib import Path

from thinktune.data.io import read_jsonl
from thinktune.tasks.synth import FILES, synthesize


def run(out: Path, seed: int = 0, slip_rate: float = 0.3) -> dict:
    return synthesize(
        out, levels=(1, 2, 3), n_train=300, n_heldout_per_level=40, slip_rate=slip_rate, seed=seed,
        rollout_prompts=50, rollout_k=4,
    )


def test_files_pass_schema_checks_and_summary_counts(tmp_path: Path) -> None:
    summary = run(tmp_path)
    held = read_jsonl(tmp_path / "heldout_prompts.jsonl", kind="prompt")
    train = read_jsonl(tmp_path / "train_prompts.jsonl", kind="prompt")
    cot = read_jsonl(tmp_path / "sft_cot.jsonl", kind="sft")
    direct = read_jsonl(tmp_path / "sft_direct.jsonl", kind="sft")
    assert summary["files"] == {
        "heldout_prompts.jsonl": 120,
        "train_prompts.jsonl": 300,
        "sft_cot.jsonl": 300,
        "sft_direct.jsonl": 300,
        "teacher_rollouts.jsonl": 200,
    }
    assert (len(held), len(train), len(cot), len(direct)) == (120, 300, 300, 300)
    assert summary["levels"] == [1, 2, 3]
    assert sum(summary["slips"].values()) == sum(r["teacher_slip"] is not None for r in cot)
    assert {r["source"] for r in held + train} == {"world"}


def test_heldout_questions_never_in_training_rows(tmp_path: Path) -> None:
    run(tmp_path)
    held = {r["prompt"] for r in read_jsonl(tmp_path / "heldout_prompts.jsonl")}
    train = {r["prompt"] for r in read_jsonl(tmp_path / "train_prompts.jsonl")}
    sft = {r["messages"][0]["content"] for r in read_jsonl(tmp_path / "sft_cot.jsonl")}
    assert train == sft
    assert not held & train


def test_sft_rows_match_problems_and_keep_slips(tmp_path: Path) -> None:
    run(tmp_path, slip_rate=0.5)
    train = read_jsonl(tmp_path / "train_prompts.jsonl")
    cot = read_jsonl(tmp_path / "sft_cot.jsonl")
    direct = read_jsonl(tmp_path / "sft_direct.jsonl")
    slipped = 0
    for p, c, d in zip(train, cot, direct, strict=True):
        assert p["id"] == c["id"] == d["id"] and p["answer"] == c["answer"] == d["answer"]
        assert c["difficulty"] == d["difficulty"] == p["difficulty"]
        assert [m["role"] for m in c["messages"]] == ["user", "assistant"]
        assert d["messages"][1]["content"] == "\\boxed{" + p["answer"] + "}" and d["teacher_slip"] is None
        text = c["messages"][1]["content"]
        assert text.startswith("<think>") and "</think>\\boxed{" in text and text.endswith("}")
        boxed = text.rsplit("\\boxed{", 1)[1][:-1]
        # Unfiltered: a slipped row keeps its wrong answer; an unslipped one is right.
        assert (boxed != p["answer"]) == (c["teacher_slip"] is not None)
        slipped += c["teacher_slip"] is not None
    assert 0 < slipped < len(cot)


def test_same_seed_same_bytes_different_seed_different(tmp_path: Path) -> None:
    run(tmp_path / "a", seed=1)
    run(tmp_path / "b", seed=1)
    run(tmp_path / "c", seed=2)
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_slip_rate_zero_writes_only_correct_traces(tmp_path: Path) -> None:
    summary = run(tmp_path, slip_rate=0.0)
    assert summary["slips"] == {"dropped_carry": 0, "wrong_partial": 0, "wrong_sum": 0}
    assert all(r["teacher_slip"] is None for r in read_jsonl(tmp_path / "sft_cot.jsonl"))


def test_teacher_rollouts_are_independent_samples_of_the_first_problems(tmp_path: Path) -> None:
    run(tmp_path, slip_rate=0.3)
    train = read_jsonl(tmp_path / "train_prompts.jsonl")
    rollouts = read_jsonl(tmp_path / "teacher_rollouts.jsonl")
    assert [r["prompt_id"] for r in rollouts] == [p["id"] for p in train[:50] for _ in range(4)]
    answers = {p["id"]: p["answer"] for p in train}
    wrong = [not r["completion"].endswith("\\boxed{" + answers[r["prompt_id"]] + "}") for r in rollouts]
    # At slip rate 0.3 over 200 samples, both outcomes occur (P(no slip at all) = 0.7^200, negligible).
    assert 0 < sum(wrong) < len(wrong)


def test_worded_problems_state_the_operands_ask_for_a_box_and_traces_open_with_the_expression(tmp_path: Path) -> None:
    import re

    from thinktune.rewards.verify import is_correct

    synthesize(tmp_path, levels=(1, 2, 3, 4), n_train=40, n_heldout_per_level=5, slip_rate=0.0, seed=0,
               rollout_prompts=4, rollout_k=2, wording="words")
    plain = tmp_path / "plain"
    synthesize(plain, levels=(1, 2, 3, 4), n_train=40, n_heldout_per_level=5, slip_rate=0.0, seed=0,
               rollout_prompts=4, rollout_k=2)
    for name in ("heldout_prompts.jsonl", "train_prompts.jsonl"):
        worded, expressions = read_jsonl(tmp_path / name), read_jsonl(plain / name)
        for w, e in zip(worded, expressions, strict=True):
            assert w["id"] == e["id"] and w["answer"] == e["answer"]
            # The story holds the expression's operands in its order, and asks for a boxed answer.
            assert re.findall(r"\d+", w["prompt"]) == re.findall(r"\d+", e["prompt"])
            assert w["prompt"].endswith("Put the final answer in \\boxed{}.")
    for row, plain_row in zip(read_jsonl(tmp_path / "sft_cot.jsonl"), read_jsonl(plain / "sft_cot.jsonl"), strict=True):
        question = plain_row["messages"][0]["content"]
        reply = row["messages"][1]["content"]
        assert reply.startswith(f"<think>{question}: ") and is_correct(reply, row["answer"])
    # The same problem reads the same in every run: the phrasing is seeded by its id.
    again = tmp_path / "again"
    synthesize(again, levels=(1, 2, 3, 4), n_train=40, n_heldout_per_level=5, slip_rate=0.0, seed=0,
               rollout_prompts=4, rollout_k=2, wording="words")
    assert (again / "heldout_prompts.jsonl").read_bytes() == (tmp_path / "heldout_prompts.jsonl").read_bytes()
