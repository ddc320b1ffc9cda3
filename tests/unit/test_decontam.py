"""Decontamination on hand-built rows: a 13-word overlap, a 12-word near miss, case and punctuation variants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thinktune.config import load_config
from thinktune.curation.decontam import EvalItem, NgramIndex, ngrams, row_text, words
from thinktune.errors import ConfigError, DataError
from thinktune.recipes import decontaminate

# 19 words once normalised: let abc be a triangle with sides 3 4 and 5 what is the radius of its inscribed circle
EVAL = "Let ABC be a triangle with sides 3, 4 and 5. What is the radius of its inscribed circle?"
W = words(EVAL)


def test_words_lowercase_strip_punctuation_and_collapse_whitespace():
    assert words("What's  the VALUE of\tx_1,\ngiven: x+1=2?") == ["what", "s", "the", "value", "of", "x", "1",
                                                                "given", "x", "1", "2"]
    assert words("\\frac{1}{2} Ünïcode ok") == ["frac", "1", "2", "ünïcode", "ok"]
    assert list(ngrams(["a", "b", "c"], 2)) == ["a b", "b c"] and list(ngrams(["a"], 2)) == []


def test_thirteen_words_match_twelve_do_not():
    assert len(W) == 19
    index = NgramIndex([EvalItem("geo", "g1", EVAL)], n=13)
    hit = "Homework: " + " ".join(W[3:16]) + " -- good luck"  # words 4..16 of the item: 13 in a row
    near = "Homework: " + " ".join(W[3:15]) + " perimeter " + " ".join(W[16:])  # 12 in a row, then a break
    [match] = index.matches(hit)
    assert match.ngram == " ".join(W[3:16]) and (match.source, match.eval_id) == ("geo", "g1")
    assert index.matches(near) == []


def test_case_and_punctuation_variants_match():
    index = NgramIndex([EvalItem("geo", "g1", EVAL)], n=13)
    assert index.matches("LET abc BE a TRIANGLE -- with sides (3)/(4) and 5!!! what IS the")
    assert not index.matches("Let ABC be a triangle with sides 34 and 5. What is the radius")  # "3, 4" != "34"


def test_short_items_are_counted_and_one_row_may_match_several_items():
    items = [EvalItem("a", "1", EVAL), EvalItem("b", "2", EVAL + " Give a fraction."), EvalItem("c", "3", "2+3?")]
    index = NgramIndex(items, n=13)
    assert [i.id for i in index.short] == ["3"]
    assert {(m.source, m.eval_id) for m in index.matches(EVAL)} == {("a", "1"), ("b", "2")}


def test_row_text_reads_prompt_and_sft_rows():
    assert row_text({"prompt": "p"}) == "p"
    assert row_text({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]}) == "q\nr"
    assert row_text({"id": 1}) is None


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_recipe_drops_contaminated_rows_and_reports_the_pairs(tmp_path):
    gsm = _jsonl(tmp_path / "gsm8k.jsonl", [
        {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
         "answer": "She sold 24 in May.\n#### 72"},
        {"question": "What is 2+2?", "answer": "#### 4"}])
    mine = _jsonl(tmp_path / "heldout.jsonl", [{"id": "h1", "prompt": EVAL, "answer": "1"}])
    train = _jsonl(tmp_path / "train.jsonl", [
        {"id": "t1", "prompt": "A fresh problem about 7 apples and 3 pears.", "answer": "10"},
        {"id": "t2", "messages": [{"role": "user", "content": "Solve it."}, {"role": "assistant", "content":
         "natalia SOLD clips to 48 of her friends in april; and then she sold half"}]},
        {"id": "t3", "prompt": " ".join(W[:12]) + " diameter", "answer": "2"},
        {"id": "t4", "prompt": EVAL.upper(), "answer": "1"}])
    cfg = load_config(decontaminate.DecontaminateConfig, None, [
        f"data={train}", f"eval_sets=[gsm8k={gsm},{mine}]", f"output_dir={tmp_path / 'out'}"])
    summary = decontaminate.run(cfg)
    out = tmp_path / "out"
    assert summary["rows"] == 4 and summary["removed"] == 2 and summary["kept"] == 2
    assert summary["eval_sets"] == {"gsm8k": {"items": 2, "short": 1, "rows_matching": 1},
                                    "heldout": {"items": 1, "short": 0, "rows_matching": 1}}
    assert [json.loads(x)["id"] for x in (out / "clean.jsonl").read_text().splitlines()] == ["t1", "t3"]
    assert [json.loads(x)["id"] for x in (out / "removed.jsonl").read_text().splitlines()] == ["t2", "t4"]
    matches = [json.loads(x) for x in (out / "matches.jsonl").read_text().splitlines()]
    assert [(m["row"], m["id"], m["eval_set"], m["eval_id"]) for m in matches] == [
        (2, "t2", "gsm8k", "1"), (4, "t4", "heldout", "h1")]
    assert matches[0]["ngram"] == "natalia sold clips to 48 of her friends in april and then she"
    report = (out / "report.md").read_text()
    assert "| 2 | t2 | gsm8k | 1 | natalia sold clips" in report and "| heldout | 1 | 0 | 1 |" in report


def test_recipe_errors_name_the_problem(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [{"id": 1, "text": "no prompt here"}])
    evals = _jsonl(tmp_path / "e.jsonl", [{"id": "e", "prompt": EVAL, "answer": "1"}])
    base = [f"data={train}", f"output_dir={tmp_path / 'out'}"]
    with pytest.raises(DataError, match=rf"{train}: row 1: no 'prompt' or 'messages'"):
        decontaminate.run(load_config(decontaminate.DecontaminateConfig, None, [*base, f"eval_sets=[{evals}]"]))
    with pytest.raises(ConfigError, match="unknown benchmark 'mmlu'"):
        decontaminate.run(load_config(decontaminate.DecontaminateConfig, None, [*base, f"eval_sets=[mmlu={evals}]"]))
    with pytest.raises(ConfigError, match="eval_sets is empty"):
        load_config(decontaminate.DecontaminateConfig, None, base)
