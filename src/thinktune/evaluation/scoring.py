"""Grade sampled completions and summarize them overall and per group, as ``thinktune evaluate`` reports them.

``recipes/evaluate.py`` and held-out evaluation during training (``train/heldout.py``) both call these, so the
two grade and group the same way (a recipe cannot be imported by the library, hence this module).
"""

from __future__ import annotations

from collections.abc import Sequence

from thinktune.evaluation.metrics import summarize
from thinktune.rewards.verify import extract_answer, has_valid_think, is_correct_groups


def score(rows: list[dict], completions: list[list], tokenizer, prompts: list[list[int]]) -> tuple[dict, list[dict]]:
    """Verify every completion; returns the per-problem matrices for ``summarize`` and rollout records (with
    each prompt as the model saw it, chat template and system prompt included).

    Args:
        rows: [P] prompt rows (``answer``, optional ``mode``).
        completions: [P][N] completions (``text``, ``token_ids``, ``finished``).
        tokenizer: decodes ``prompts`` for the records.
        prompts: [P] tokenized prompts as sampled.

    Returns:
        ``{"correct", "answers", "lengths", "well_formed", "finished"}`` each [P][N], ``"modes"`` [P], and one
        record per completion.
    """
    mats: dict[str, list[list]] = {"correct": [], "answers": [], "lengths": [], "well_formed": [], "finished": []}
    records = []
    verdicts = is_correct_groups([[c.text for c in outs] for outs in completions], [str(r["answer"]) for r in rows],
                                 [r.get("mode", "math") for r in rows])
    for row, outs, correct, prompt in zip(rows, completions, verdicts, prompts, strict=True):
        rendered = tokenizer.decode(prompt)
        mats["correct"].append(correct)
        mats["answers"].append([extract_answer(c.text) for c in outs])
        mats["lengths"].append([len(c.token_ids) for c in outs])
        mats["well_formed"].append([has_valid_think(c.text) for c in outs])
        mats["finished"].append([c.finished for c in outs])
        records += [{"prompt_id": row["id"], "sample": j, "prompt": rendered, "completion": c.text, "num_tokens": len(c.token_ids),
                     "finished": c.finished, "correct": ok, "answer": row["answer"]}
                    for j, (c, ok) in enumerate(zip(outs, correct, strict=True))]
    mats["modes"] = [r.get("mode", "math") for r in rows]  # maj@N asks each problem's verifier which answers agree
    return mats, records


def _value_order(value: object) -> tuple[int, float | str]:
    """Numbers in numeric order (level 2 before level 10), then anything else by its text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return 0, value
    return 1, str(value)


def summarize_groups(rows: list[dict], mats: dict, fields: Sequence[str], ks: Sequence[int] = (1,)) -> dict[str, dict]:
    """Overall metrics ("all") plus one entry per value of each grouping field ("level=3", "subject=Algebra", ...),
    field by field in ``fields`` order, values sorted within a field; rows lacking a field are only in "all".

    Args:
        rows: [P] prompt rows, holding the grouping fields.
        mats: ``score``'s matrices for the same P problems.
        fields: row fields to break the results down by.
        ks: the k values of pass@k (``summarize``).
    """
    groups: dict[str, list[int]] = {"all": list(range(len(rows)))}
    for f in fields:
        named: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            if f in row:
                named.setdefault(f"{f}={row[f]}", []).append(i)
        groups |= dict(sorted(named.items(), key=lambda kv: _value_order(rows[kv[1][0]][f])))
    return {name: summarize(**{k: [v[i] for i in idx] for k, v in mats.items()}, ks=ks)
            for name, idx in groups.items()}
