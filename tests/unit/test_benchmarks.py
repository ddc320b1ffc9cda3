"""Tests for benchmark loaders (tiny files in each Hub schema, written here, read back offline) and the prompt
templates that wrap their problems."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from thinktune.config import load_config
from thinktune.errors import ConfigError, DataError, UserError
from thinktune.recipes.evaluate import EvalConfig
from thinktune.rewards.verify import is_correct
from thinktune.tasks.benchmarks import (
    BENCHMARKS,
    PROMPT_TEMPLATES,
    apply_template,
    gpqa_prompt,
    load_benchmark,
    load_prompts,
    resolve_template,
)

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


# The instruction each benchmark's default template must carry, quoted from the source docs/evaluation.md names:
# AIME from Eureka ML Insights' Template_1clean.jinja (the harness the Phi-4-reasoning report names), MATH-500
# and GSM8K from DeepSeek-R1's README (Qwen2.5-Math's "qwen-boxed"), GPQA thinktune's own.
EUREKA_AIME = "Step 3: Provide your final answer in the format: 'Final Answer: [numeric value]'."
R1_BOXED = "\nPlease reason step by step, and put your final answer within \\boxed{}."
SOURCED_INSTRUCTION = {
    "aime24": (EUREKA_AIME, "microsoft/eureka-ml-insights"),
    "aime25": (EUREKA_AIME, "microsoft/eureka-ml-insights"),
    "math500": (R1_BOXED, "QwenLM/Qwen2.5-Math"),
    "gsm8k": (R1_BOXED, "QwenLM/Qwen2.5-Math"),
    "gpqa-diamond": ("Answer with the letter of the correct option in \\boxed{}.", "thinktune's own"),
}


def test_every_benchmark_has_a_sourced_default_instruction():
    assert set(SOURCED_INSTRUCTION) == set(BENCHMARKS)


@pytest.mark.parametrize("name", sorted(SOURCED_INSTRUCTION))
def test_default_prompt_carries_the_sourced_instruction(tmp_path: Path, name: str) -> None:
    [row] = load_benchmark(name, path=str(write_rows(tmp_path / "b.jsonl", SCHEMA_ROWS[name])))
    instruction, source = SOURCED_INSTRUCTION[name]
    assert instruction not in row["prompt"]  # the row is the problem alone: what decontamination compares
    template_name, template = resolve_template("", name)
    assert template_name == BENCHMARKS[name].template and source in PROMPT_TEMPLATES[template_name].source
    prompt = apply_template(row["prompt"], template)
    assert instruction in prompt and row["prompt"] in prompt


def test_every_template_holds_one_placeholder_and_names_its_source():
    for name, t in PROMPT_TEMPLATES.items():
        assert t.text.count("{problem}") == 1 and t.source, name
    assert resolve_template("") == ("none", "{problem}")  # a prompt JSONL is sent as written


def test_template_chosen_by_name_or_custom_string():
    problem = "Compute $\\frac{1}{2}+{3}$."  # braces in the problem survive: only {problem} is filled
    name, text = resolve_template("lighteval-math", "math500")
    assert name == "lighteval-math" and apply_template(problem, text) == text.replace("{problem}", problem)
    assert "Therefore, the final answer is: $\\boxed{ANSWER}$" in apply_template(problem, text)
    custom = "Solve: {problem}\nEnd with \\boxed{}."
    assert resolve_template(custom, "aime24") == ("custom", custom)
    assert apply_template(problem, custom) == "Solve: " + problem + "\nEnd with \\boxed{}."


def test_template_wraps_the_last_user_turn_of_a_message_prompt():
    prompt = [{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
              {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    wrapped = apply_template(prompt, "<{problem}>")
    assert [m["content"] for m in wrapped] == ["s", "a", "b", "<c>"]
    assert prompt[3]["content"] == "c"  # the caller's rows are not modified


@pytest.mark.parametrize("value, message", [
    ("qwen_boxed", r"data\.template: unknown template name 'qwen_boxed'; choose one of none, qwen-boxed"),
    ("Solve this: {question}", r"data\.template: the custom template 'Solve this: \{question\}' has no \{problem\}"),
    ("Answer in a box.", r"data\.template: the custom template .* has no \{problem\} placeholder"),
])
def test_bad_template_names_and_strings_are_config_errors(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_template(value, "aime24")
    with pytest.raises(ConfigError, match=message):  # refused when the config is built, before any loading
        load_config(EvalConfig, None, ["data.benchmark=aime24", f"data.template={value}"])
