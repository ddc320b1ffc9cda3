"""Stage effects with intervals: paired bootstrap over problems, Student t over seeds, the pipeline's seed copies."""

import json
import math

import pytest

from thinktune.evaluation.effects import mean_change, over_seeds, paired_bootstrap, problem_accuracy
from thinktune.evaluation.report import compare, effects_table
from thinktune.recipes.pipeline import load_pipeline


def write_samples(eval_dir, correct: dict[str, list[bool]]) -> None:
    eval_dir.mkdir(parents=True)
    (eval_dir / "report.json").write_text(json.dumps({"label": eval_dir.name.removeprefix("eval-")}))
    with (eval_dir / "samples.jsonl").open("w") as f:
        for pid, verdicts in correct.items():
            for j, ok in enumerate(verdicts):
                f.write(json.dumps({"prompt_id": pid, "sample": j, "correct": ok}) + "\n")


def test_problem_accuracy_reads_samples(tmp_path):
    write_samples(tmp_path / "e", {"a": [True, False, True, True], "b": [False] * 4})
    assert problem_accuracy(tmp_path / "e") == {"a": 75.0, "b": 0.0}


def test_bootstrap_of_a_constant_change_is_that_change():
    before = {str(i): 50.0 for i in range(10)}
    after = {str(i): 75.0 for i in range(10)}
    effect = paired_bootstrap(before, after, resamples=200)
    assert (effect.mean, effect.low, effect.high) == (25.0, 25.0, 25.0)
    assert effect.distinguishable and effect.method == "bootstrap over 10 problems"


def test_bootstrap_of_two_problems_spans_their_range():
    # Changes +100 and 0: a resample of two holds 0, 1 or 2 copies of the +100 (p = 1/4, 1/2, 1/4), so its mean
    # is 0, 50 or 100 and the 2.5th and 97.5th percentiles of many draws are 0 and 100. The interval holds zero.
    effect = paired_bootstrap({"a": 0.0, "b": 50.0}, {"a": 100.0, "b": 50.0}, resamples=4000)
    assert effect.mean == 50.0 and (effect.low, effect.high) == (0.0, 100.0)
    assert not effect.distinguishable and effect.cell().endswith("(noise)")


def test_bootstrap_uses_only_shared_problems_and_needs_some():
    assert mean_change({"a": 10.0, "b": 20.0}, {"b": 30.0, "c": 0.0}) == 10.0
    with pytest.raises(ValueError, match="share no problem"):
        paired_bootstrap({"a": 1.0}, {"b": 1.0})


def test_over_seeds_student_t():
    # mean 2, sample std 1, n 3: half-width t_0.975(df 2) * 1 / sqrt(3) = 4.303 / 1.7321 = 2.4843.
    effect = over_seeds([1.0, 2.0, 3.0])
    assert effect.mean == 2.0
    assert effect.high - effect.mean == pytest.approx(4.303 / math.sqrt(3))
    assert not effect.distinguishable
    tight = over_seeds([2.0, 2.1, 1.9])  # std 0.1: half-width 0.248, clear of zero
    assert tight.distinguishable and tight.low == pytest.approx(2.0 - 0.4303 / math.sqrt(3))
    assert over_seeds([1.5]).low == -math.inf


PIPELINE = """
run_dir: {run_dir}
stages:
  data: {{verb: synth}}
  sft: {{verb: sft, set: {{data.train: "{{data}}/sft.jsonl"}}}}
  grpo: {{verb: grpo, set: {{model.path: "{{sft}}/final", data.prompts: "{{data}}/p.jsonl"}}}}
  eval-sft: {{verb: evaluate, set: {{model.path: "{{sft}}/final", data.prompts: "{{data}}/h.jsonl"}}}}
  eval-grpo: {{verb: evaluate, set: {{model.path: "{{grpo}}/final", data.prompts: "{{data}}/h.jsonl", label: grpo}}}}
report: [eval-sft, eval-grpo]
seeds: {{values: [0, 3], stages: [grpo, eval-grpo], set: {{log: {{log_every: 7}}}}}}
profiles:
  quick: {{stages: {{grpo: {{max_steps: 2}}}}}}
"""


def test_seed_copies_read_their_copies_and_take_the_seed(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(run_dir=tmp_path / "run"))
    pipe = load_pipeline(path, profile="quick")
    by_name = {s.name: s for s in pipe.stages}
    assert list(by_name) == ["data", "sft", "grpo", "eval-sft", "eval-grpo", "grpo-seed3", "eval-grpo-seed3"]
    assert pipe.seed_copies == {3: {"grpo": "grpo-seed3", "eval-grpo": "eval-grpo-seed3"}}
    grpo3 = by_name["grpo-seed3"].overrides
    assert f"model.path={tmp_path / 'run' / 'sft'}/final" in grpo3  # sft was not repeated: the original
    assert "seed=3" in grpo3 and "sampling.seed=3" in grpo3 and "max_steps=2" in grpo3  # the profile applies
    assert "log.log_every=7" in grpo3 and "log.log_every=7" not in by_name["grpo"].overrides
    eval3 = by_name["eval-grpo-seed3"].overrides
    assert f"model.path={tmp_path / 'run' / 'grpo-seed3'}/final" in eval3
    assert not any(o.startswith(("seed=", "sampling.seed=", "log.")) for o in eval3)
    assert "label=grpo seed 3" in eval3  # evaluation noise stays the same
    assert by_name["eval-grpo-seed3"].depends == {"grpo-seed3", "data"}


def test_seeds_errors_name_the_problem(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(run_dir=tmp_path).replace("stages: [grpo, eval-grpo]", "stages: [nope]"))
    with pytest.raises(Exception, match=r"seeds.stages names unknown stages \['nope'\]"):
        load_pipeline(path)
    path.write_text(PIPELINE.format(run_dir=tmp_path).replace("values: [0, 3]", "values: [0, 0]"))
    with pytest.raises(Exception, match="distinct integers"):
        load_pipeline(path)


def test_effects_table_over_problems_and_seeds(tmp_path):
    # Two problems, 2 samples each. sft: 50% and 0%. grpo seed 0: 100%, 50% (+50 on each: +50, bootstrap [+50,
    # +50]). grpo seed 3: 50%, 0% (no change). Over the seeds: changes +50 and 0, mean +25, and t(df 1) = 12.706
    # times std 35.36 / sqrt 2 = 317.7 either side: noise.
    write_samples(tmp_path / "eval-sft", {"a": [True, False], "b": [False, False]})
    write_samples(tmp_path / "eval-grpo", {"a": [True, True], "b": [True, False]})
    write_samples(tmp_path / "eval-grpo-seed3", {"a": [True, True], "b": [False, False]})
    table = effects_table(tmp_path, [("eval-sft", "eval-grpo")], {3: {"grpo": "grpo-seed3",
                                                                     "eval-grpo": "eval-grpo-seed3"}})
    row = table.strip().splitlines()[-1]
    assert "| sft → grpo | +50.0 [+50.0, +50.0] | +50.0, +25.0 |" in row
    assert "+37.5 [-121.3, +196.3] (noise)" in row


def test_report_rows_may_name_their_baseline(tmp_path):
    path = tmp_path / "p.yaml"
    text = PIPELINE.format(run_dir=tmp_path).replace("report: [eval-sft, eval-grpo]",
                                                      "report: [eval-sft, eval-grpo, eval-grpo-alt vs eval-sft]")
    text = text.replace("report:", "  eval-grpo-alt: {verb: evaluate}\nreport:", 1)
    path.write_text(text)
    pipe = load_pipeline(path)
    assert pipe.report == ["eval-sft", "eval-grpo", "eval-grpo-alt"]
    assert pipe.against == {"eval-grpo-alt": "eval-sft"}
    path.write_text(text.replace("eval-grpo-alt vs eval-sft", "eval-grpo-alt vs eval-nope"))
    with pytest.raises(Exception, match=r"unknown stages \['eval-nope'\]"):
        load_pipeline(path)


def test_compare_against_a_named_row():
    def rep(label, p):
        group = {"pass@1": p, "pass@1_std": 0.5, "maj@4": p, "format_ok": 100.0, "mean_length": 10.0,
                 "samples_per_problem": 4.0}
        return {"label": label, "problem_ids": ["a"], "groups": {"all": group}}

    table, drops = compare([rep("sft", 60.0), rep("dpo", 65.0), rep("dpo-teacher", 58.0)], [None, 0, 0])
    lines = table.splitlines()
    assert lines[3].startswith("| dpo | 65.0 ± 0.5 (+5.0) |")
    assert lines[4].startswith("| dpo-teacher (vs sft) | 58.0 ± 0.5 (-2.0) **drop** |")  # -2 beyond sqrt(0.5) std
    assert drops == ["dpo-teacher vs sft on all: -2.0 points, beyond the combined std 0.7"]


def test_a_pipeline_extends_another(tmp_path):
    (tmp_path / "base.yaml").write_text(PIPELINE.format(run_dir=tmp_path / "run").replace(
        "{verb: synth}", "{verb: synth, config: synth.yaml}"))
    (tmp_path / "study.yaml").write_text(
        "extends: base.yaml\nreport: [eval-grpo, eval-alt vs eval-grpo]\nstages:\n"
        "  eval-alt: {verb: evaluate, set: {model.path: \"{sft}/final\"}}\n")
    pipe = load_pipeline(tmp_path / "study.yaml")
    assert [s.name for s in pipe.stages][-1] == "eval-alt" and pipe.run_dir == tmp_path / "run"
    assert pipe.stages[0].config == (tmp_path / "synth.yaml").resolve()  # found beside the file that names it
    assert pipe.seed_copies == {} and pipe.against == {"eval-alt": "eval-grpo"}  # seeds and report: this file's
    (tmp_path / "study.yaml").write_text("extends: base.yaml\nstages:\n  sft: {verb: sft}\n")
    with pytest.raises(Exception, match=r"stages \['sft'\] are already in"):
        load_pipeline(tmp_path / "study.yaml")
