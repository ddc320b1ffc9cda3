"""Evaluation on a named benchmark read from a local file in its HF schema, with a model built on the spot: the
prompt template around each problem, and the groups results are broken down by."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from thinktune.config import load_config
from thinktune.recipes import evaluate
from thinktune.tasks.benchmarks import BENCHMARKS, PROMPT_TEMPLATES

pytestmark = pytest.mark.integration


def as_seen(model_dir, text: str) -> str:
    """``text`` as a decoded record shows it: the tiny character tokenizer turns characters it lacks into <unk>."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    return tok.decode(tok.encode(text, add_special_tokens=False))


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
    # ...with AIME's default template (Eureka ML Insights' AIME instruction) around the problem.
    name = BENCHMARKS["aime24"].template
    assert report["template"] == {"name": name, "text": PROMPT_TEMPLATES[name].text}
    assert "<|im_sep|>" + as_seen(tiny_model_dir, PROMPT_TEMPLATES[name].text.replace("{problem}", "1+1")) + \
        "<|im_end|>" in first
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


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


MATH500_ROWS = [{"problem": f"{i}*{i + 1}", "solution": "", "answer": str(i * (i + 1)), "subject": subject,
                 "level": level, "unique_id": f"test/{i}.json"}
                for i, (subject, level) in enumerate([("Algebra", 1), ("Algebra", 2), ("Geometry", 2),
                                                      ("Prealgebra", 10), ("Algebra", 1)])]


def _expected_groups(rows, fields):
    """Group name -> problem count, counted straight from the rows."""
    counts = {"all": len(rows)}
    for f in fields:
        for row in rows:
            counts[f"{f}={row[f]}"] = counts.get(f"{f}={row[f]}", 0) + 1
    return counts


def test_math500_groups_by_level_and_subject_with_its_default_template(tiny_model_dir, tmp_path):
    path = _write_jsonl(tmp_path / "math500.jsonl", MATH500_ROWS)
    out = tmp_path / "eval"
    report = evaluate.run(load_config(evaluate.EvalConfig, None, [
        f"model.path={tiny_model_dir}", "model.system_prompt=", "data.benchmark=math500", f"data.path={path}",
        "sampling.n=2", "sampling.max_new_tokens=4", f"output_dir={out}"]))
    groups = report["groups"]
    assert {g: int(m["num_problems"]) for g, m in groups.items()} == _expected_groups(MATH500_ROWS,
                                                                                        ["level", "subject"])
    # Levels first, in numeric order (2 before 10), then subjects; "all" leads.
    assert list(groups) == ["all", "level=1", "level=2", "level=10",
                            "subject=Algebra", "subject=Geometry", "subject=Prealgebra"]
    text = PROMPT_TEMPLATES[BENCHMARKS["math500"].template].text
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(as_seen(tiny_model_dir, text.replace("{problem}", row["problem"])) in r["prompt"]
               for row in MATH500_ROWS for r in records if r["prompt_id"] == row["unique_id"])
    assert "| level=10 | 1 |" in (out / "report.md").read_text()


@pytest.mark.parametrize("template", ["lm-eval-minerva", "Work it out: {problem} -- then box it."])
def test_config_chosen_template_is_what_the_model_sees(tiny_model_dir, tmp_path, template):
    prompts = _write_jsonl(tmp_path / "p.jsonl", [{"id": i, "prompt": f"{i}+4", "answer": str(i + 4)}
                                                  for i in range(3)])
    out = tmp_path / "eval"
    report = evaluate.run(load_config(evaluate.EvalConfig, None, [
        f"model.path={tiny_model_dir}", "model.system_prompt=", f"data.prompts={prompts}",
        f"data.template={template}", "sampling.n=1", "sampling.max_new_tokens=3", f"output_dir={out}"]))
    text = PROMPT_TEMPLATES[template].text if template in PROMPT_TEMPLATES else template
    assert report["template"] == {"name": template if template in PROMPT_TEMPLATES else "custom", "text": text}
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == [
        f"<|im_start|>user<|im_sep|>{as_seen(tiny_model_dir, text.replace('{problem}', f'{i}+4'))}<|im_end|>"
        "<|im_start|>assistant<|im_sep|>" for i in range(3)]


def _fake_scores(n_rows):
    """Per-problem matrices for ``summarize`` (one sample each): every answer right, 3 tokens long."""
    return {"correct": [[True]] * n_rows, "answers": [["1"]] * n_rows, "lengths": [[3]] * n_rows,
            "well_formed": [[True]] * n_rows, "finished": [[True]] * n_rows}


@pytest.mark.parametrize("override, fields", [
    ([], ["level", "subject"]),                      # the benchmark's own fields
    (["data.group_by=level"], ["level"]),            # an explicit field still wins
    (["data.group_by=[subject, level]"], ["subject", "level"]),
    (["data.group_by=[]"], []),                      # none
])
def test_group_by_defaults_to_the_benchmark_fields_and_explicit_values_win(override, fields):
    rows = [{"id": str(i), **{k: r[k] for k in ("subject", "level")}} for i, r in enumerate(MATH500_ROWS)]
    cfg = load_config(evaluate.EvalConfig, None, ["data.benchmark=math500", "sampling.n=1", *override])
    groups = evaluate.summarize_groups(rows, _fake_scores(len(rows)), cfg)
    assert {g: int(m["num_problems"]) for g, m in groups.items()} == _expected_groups(rows, fields)


def test_prompt_files_still_group_by_difficulty():
    rows = [{"id": str(i), "difficulty": i % 2} for i in range(5)]
    cfg = load_config(evaluate.EvalConfig, None, ["data.prompts=p.jsonl", "sampling.n=1"])
    groups = evaluate.summarize_groups(rows, _fake_scores(len(rows)), cfg)
    assert {g: int(m["num_problems"]) for g, m in groups.items()} == _expected_groups(rows, ["difficulty"])
