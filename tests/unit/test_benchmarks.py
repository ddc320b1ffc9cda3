"""Tests for benchmark loaders: tiny files in each Hub schema, written here, read back offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from thinktune.errors import DataError, UserError
from thinktune.rewards.verify import is_correct
from thinktune.tasks.benchmarks import BENCHMARKS, gpqa_prompt, load_benchmark, load_prompts

GPQA_ROW = {
    "Question": "Which particle is a lepton?",
    "Correct Answer": "electron",
    "Incorrect Answer 1": "proton",
    "Incorrect Answer 2": "neutron",
    "Incorrect Answer 3": "pion",
}

SCHEMA_ROWS: dict[str, list[dict[str, Any]]] = {
    "aime24": [
        {"id": 60, "problem": "Find x.", "solution": "...", "answer": "204", "url": "u", "year": 2024}
    ],
    "aime25": [{"question": "Find y.", "answer": 33, "id": "0"}],
    "math500": [
        {
            "problem": "Half?",
            "solution": "...",
            "answer": "\\frac{1}{2}",
            "subject": "Algebra",
            "level": 1,
            "unique_id": "test/algebra/1.json",
        }
    ],
    "gsm8k": [{"question": "How many?", "answer": "2 + 2 = 4\nso 1,000 more\n#### 1,004"}],
    "gpqa-diamond": [GPQA_ROW],
}

EXPECTED = {
    "aime24": {"id": "60", "prompt": "Find x.", "answer": "204", "mode": "integer"},
    "aime25": {"id": "0", "prompt": "Find y.", "answer": "33", "mode": "integer"},
    "math500": {
        "id": "test/algebra/1.json",
        "prompt": "Half?",
        "answer": "\\frac{1}{2}",
        "mode": "math",
        "subject": "Algebra",
        "level": 1,
    },
    "gsm8k": {"id": "1", "prompt": "How many?", "answer": "1004", "mode": "math"},
}


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_load_each_schema_and_format(tmp_path: Path, name: str, suffix: str) -> None:
    path = write_rows(tmp_path / f"{name}{suffix}", SCHEMA_ROWS[name])
    [row] = load_benchmark(name, path=str(path))
    assert row == {**EXPECTED[name], "source": name}


def test_gpqa_letter_is_correct_and_shuffle_deterministic(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "gpqa.jsonl", [GPQA_ROW])
    [first] = load_benchmark("gpqa-diamond", path=str(path))
    [again] = load_benchmark("gpqa-diamond", path=str(path))
    assert first == again and first["mode"] == "choice"
    letter = first["answer"]
    assert f"({letter}) electron" in first["prompt"]
    assert all(f"({x})" in first["prompt"] for x in "ABCD")
    assert is_correct(f"<think>leptons</think> \\boxed{{{letter}}}", letter, "choice")


def test_gpqa_shuffle_varies_across_questions() -> None:
    letters = {gpqa_prompt(f"question {i}", "right", ["w1", "w2", "w3"])[1] for i in range(40)}
    assert letters == set("ABCD")


def test_directory_and_split_choice(tmp_path: Path) -> None:
    write_rows(tmp_path / "train.jsonl", SCHEMA_ROWS["gsm8k"])
    write_rows(tmp_path / "test.jsonl", SCHEMA_ROWS["gsm8k"] * 2)
    assert len(load_benchmark("gsm8k", path=str(tmp_path), split="test")) == 2
    with pytest.raises(DataError, match="expected one"):
        load_benchmark("gsm8k", path=str(tmp_path))


def test_limit(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "m.jsonl", SCHEMA_ROWS["math500"] * 5)
    assert len(load_benchmark("math500", path=str(path), limit=3)) == 3


@pytest.mark.parametrize(
    "name,row,field",
    [
        ("aime24", {"id": 1, "answer": "5"}, "problem"),
        ("math500", {"problem": "p"}, "answer"),
        (
            "gpqa-diamond",
            {k: v for k, v in GPQA_ROW.items() if k != "Incorrect Answer 2"},
            "Incorrect Answer 2",
        ),
    ],
)
def test_missing_field_names_file_row_and_field(tmp_path: Path, name: str, row: dict, field: str) -> None:
    path = write_rows(tmp_path / "bad.jsonl", [SCHEMA_ROWS[name][0], row])
    with pytest.raises(DataError, match=rf"bad\.jsonl: row 2: missing field '{field}"):
        load_benchmark(name, path=str(path))


@pytest.mark.parametrize(
    "name,content",
    [
        ("gsm8k", '{"question": "q", "answer": "no final marker"}\n'),
        ("aime24", '{"problem": "p", "answer": "1/2"}\n'),
        ("math500", "{not json\n"),
    ],
)
def test_malformed_files_raise_data_error(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="bad.jsonl"):
        load_benchmark(name, path=str(path))


def test_bad_json_and_unsupported_formats(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"not": "a list"}', encoding="utf-8")
    with pytest.raises(DataError, match="list of objects"):
        load_benchmark("math500", path=str(tmp_path / "x.json"))
    (tmp_path / "x.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(DataError, match="unsupported format"):
        load_benchmark("math500", path=str(tmp_path / "x.csv"))
    with pytest.raises(DataError, match="not found"):
        load_benchmark("math500", path=str(tmp_path / "missing.jsonl"))


def test_unknown_benchmark_lists_names() -> None:
    with pytest.raises(UserError, match=", ".join(BENCHMARKS)):
        load_benchmark("aime26")


def test_hub_failure_says_to_pass_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="path="):
        load_benchmark("aime24")


def test_load_prompts_casts_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    rows = [
        {"id": 1, "prompt": "p", "answer": 7},
        {"id": "b", "prompt": "q", "answer": "B", "mode": "choice"},
    ]
    write_rows(path, rows)
    first, second = load_prompts(str(path))
    assert first == {"id": "1", "prompt": "p", "answer": "7", "source": "mine", "mode": "math"}
    assert second["mode"] == "choice" and second["answer"] == "B"
    assert len(load_prompts(str(path), limit=1)) == 1


def test_load_prompts_rejects_bad_rows(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "p.jsonl", [{"id": 1, "prompt": "p"}])
    with pytest.raises(DataError, match="answer"):
        load_prompts(str(path))
    path = write_rows(tmp_path / "q.jsonl", [{"id": 1, "prompt": "p", "answer": "1", "mode": "fuzzy"}])
    with pytest.raises(DataError, match="row 1: field 'mode'"):
        load_prompts(str(path))


def test_load_prompts_filters_difficulty_before_the_limit(tmp_path):
    from thinktune.errors import DataError
    from thinktune.tasks.benchmarks import load_prompts

    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": "q", "answer": "1", "difficulty": i % 3}) + "\n"
                            for i in range(9)))
    rows = load_prompts(str(path), limit=2, difficulties=[2])
    assert [r["id"] for r in rows] == ["2", "5"]
    with pytest.raises(DataError, match="no prompts left after the difficulty filter"):
        load_prompts(str(path), difficulties=[7])
