"""Decontamination on hand-built rows: a 13-word overlap, a 12-word near miss, case and punctuation variants, and
items shorter than the n-gram, checked by their whole text."""

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


# Shorter than the 13-word n-gram: it has no n-gram, so only its whole text can match.
SHORT = "Compute $\\dbinom{16}{5}$."
SHORT_WORDS = words(SHORT)  # compute dbinom 16 5


def test_short_item_copied_into_a_row_matches_whole_and_a_few_shared_words_do_not():
    assert 0 < len(SHORT_WORDS) < 13
    index = NgramIndex([EvalItem("math500", "m1", SHORT), EvalItem("geo", "g1", EVAL)], n=13)
    assert [i.id for i in index.short] == ["m1"]
    copies = [SHORT, SHORT.upper(), "  compute   $\\DBINOM{16} {5}$ ", f"Warm-up. {SHORT} Then explain why."]
    for text in copies:
        [match] = index.matches(text)
        assert (match.source, match.eval_id, match.ngram) == ("math500", "m1", " ".join(SHORT_WORDS))
    # The same words, but not all of them in a row: kept.
    for text in ["Compute $\\dbinom{16}{4}$.", "Compute 16 choose 5.", "dbinom 16 5", "compute dbinom 165"]:
        assert index.matches(text) == [], text


def test_short_item_matches_on_word_boundaries_only():
    index = NgramIndex([EvalItem("s", "1", "What is 2+2?")], n=13)  # what is 2 2
    assert index.matches("so, WHAT IS 2 + 2 ?")
    assert not index.matches("what is 22")  # "2+2" is two words, "22" one
    assert not index.matches("somewhat is 2 2")  # "somewhat" is not "what"
    assert NgramIndex([EvalItem("s", "2", " ?! ")], n=13).matches("anything at all") == []  # no words: no match


def test_recipe_removes_verbatim_short_items_and_keeps_rows_sharing_a_few_words(tmp_path):
    math500 = _jsonl(tmp_path / "math500.jsonl", [
        {"problem": SHORT, "answer": "4368", "unique_id": "test/counting/1.json"},
        {"problem": EVAL, "answer": "1", "unique_id": "test/geometry/2.json"}])
    copies = [SHORT, SHORT.lower(), "COMPUTE\t$\\dbinom{16}{5}$ !", f"Warm-up: {SHORT.upper()} (show work)"]
    near = ["Compute $\\dbinom{16}{6}$.", "Compute the sum of 16 and 5."]
    train = _jsonl(tmp_path / "train.jsonl",
                   [{"id": f"c{i}", "prompt": t, "answer": "4368"} for i, t in enumerate(copies)]
                   + [{"id": f"n{i}", "messages": [{"role": "user", "content": t}, {"role": "assistant",
                      "content": "<think>..</think> \\boxed{1}"}]} for i, t in enumerate(near)])
    cfg = load_config(decontaminate.DecontaminateConfig, None, [
        f"data={train}", f"eval_sets=[math500={math500}]", f"output_dir={tmp_path / 'out'}"])
    summary = decontaminate.run(cfg)
    out = tmp_path / "out"
    assert summary["removed"] == len(copies) and summary["kept"] == len(near)
    assert summary["eval_sets"]["math500"] == {"items": 2, "short": 1, "rows_matching": len(copies)}
    assert [json.loads(x)["id"] for x in (out / "removed.jsonl").read_text().splitlines()] == [
        f"c{i}" for i in range(len(copies))]
    assert [json.loads(x)["id"] for x in (out / "clean.jsonl").read_text().splitlines()] == [
        f"n{i}" for i in range(len(near))]
    matches = [json.loads(x) for x in (out / "matches.jsonl").read_text().splitlines()]
    assert {(m["eval_id"], m["ngram"]) for m in matches} == {("test/counting/1.json", " ".join(SHORT_WORDS))}
