"""Named evaluation benchmarks, normalized to one row schema.

Every loader returns rows ``{"id", "prompt", "answer", "source", "mode"}`` where ``mode`` is the
``thinktune.rewards.verify`` mode that checks the answer. Sources are read in the schemas of the usual
Hugging Face datasets, either from a local file (.jsonl, .json list, .parquet, or a directory holding one)
or, when no path is given, from the Hub through ``datasets.load_dataset``.

Phi-4-reasoning reports AIME 2024/2025 and GPQA-Diamond (docs/recipe.md §4.1); MATH-500 and GSM8K are here for
small-model and CPU runs (Phi-4-mini-reasoning reports MATH-500).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinktune.data.io import read_jsonl
from thinktune.errors import DataError, UserError
from thinktune.rewards.verify import MODES

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
CHOICE_LETTERS = "ABCD"


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark lives on the Hub and how its rows map to the thinktune schema.

    Attributes:
        hub_id: Hugging Face dataset id.
        config: dataset config name, or None.
        split: default split.
        mode: verify mode of its answers.
        to_row: maps (raw row, where) to ``{"prompt", "answer"}`` plus ``"id"`` when the row has one;
            raises DataError naming ``where``.
    """

    hub_id: str
    config: str | None
    split: str
    mode: str
    to_row: Callable[[dict[str, Any], str], dict[str, Any]]


def _field(row: dict[str, Any], where: str, *names: str) -> Any:
    """The first of ``names`` present in ``row``; DataError naming ``where`` and the field otherwise."""
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    wanted = "' or '".join(names)
    raise DataError(f"{where}: missing field '{wanted}'")


def _own_id(row: dict[str, Any], *names: str) -> dict[str, str]:
    """``{"id": …}`` from the first id field present; empty if none (the caller uses the row number)."""
    for name in names:
        if row.get(name) is not None:
            return {"id": str(row[name])}
    return {}


def _aime_row(row: dict[str, Any], where: str) -> dict[str, str]:
    answer = str(_field(row, where, "answer")).strip()
    if not answer.lstrip("+-").isdigit():
        raise DataError(f"{where}: field 'answer' should be an integer for AIME, got {answer[:40]!r}")
    return {**_own_id(row, "id"), "prompt": str(_field(row, where, "problem", "question")), "answer": answer}


def _math500_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    return {
        **_own_id(row, "unique_id", "id"),
        "prompt": str(_field(row, where, "problem")),
        "answer": str(_field(row, where, "answer")).strip(),
        # Kept so evaluation can break results down by them (``data.group_by``).
        **{k: row[k] for k in ("subject", "level") if k in row},
    }


def _gsm8k_row(row: dict[str, Any], where: str) -> dict[str, str]:
    solution = str(_field(row, where, "answer"))
    if "####" not in solution:
        raise DataError(f"{where}: field 'answer' has no '#### <final answer>' line (GSM8K format)")
    answer = solution.rsplit("####", 1)[1].strip().replace(",", "")
    return {**_own_id(row, "id"), "prompt": str(_field(row, where, "question")), "answer": answer}


def gpqa_prompt(question: str, correct: str, incorrect: list[str]) -> tuple[str, str]:
    """Build a four-choice prompt with options shuffled deterministically from the question text.

    The seed comes from SHA-256 of the question (``hash()`` is salted per process), so every run and
    every machine sees the same option order.

    Args:
        question: the question text.
        correct: the correct option.
        incorrect: the three incorrect options.

    Returns:
        (prompt, letter of the correct option).
    """
    seed = int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:8], "big")
    options = [correct.strip(), *(o.strip() for o in incorrect)]
    order = list(range(len(options)))
    random.Random(seed).shuffle(order)
    lines = [f"({letter}) {options[i]}" for letter, i in zip(CHOICE_LETTERS, order, strict=True)]
    prompt = (
        f"{question.strip()}\n\n"
        + "\n".join(lines)
        + "\n\nAnswer with the letter of the correct option in \\boxed{}."
    )
    return prompt, CHOICE_LETTERS[order.index(0)]


def _gpqa_row(row: dict[str, Any], where: str) -> dict[str, str]:
    question = str(_field(row, where, "Question"))
    correct = str(_field(row, where, "Correct Answer"))
    incorrect = [str(_field(row, where, f"Incorrect Answer {i}")) for i in (1, 2, 3)]
    prompt, letter = gpqa_prompt(question, correct, incorrect)
    return {**_own_id(row, "Record ID", "id"), "prompt": prompt, "answer": letter}


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "aime24": BenchmarkSpec("HuggingFaceH4/aime_2024", None, "train", "integer", _aime_row),
    "aime25": BenchmarkSpec("math-ai/aime25", None, "test", "integer", _aime_row),
    "math500": BenchmarkSpec("HuggingFaceH4/MATH-500", None, "test", "math", _math500_row),
    "gsm8k": BenchmarkSpec("openai/gsm8k", "main", "test", "math", _gsm8k_row),
    "gpqa-diamond": BenchmarkSpec("Idavidrein/gpqa", "gpqa_diamond", "train", "choice", _gpqa_row),
}


def _pick_file(directory: Path, split: str | None) -> Path:
    """The one data file in ``directory`` (the one naming ``split`` when there are several)."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES)
    if split is not None and len(files) > 1:
        files = [p for p in files if split in p.name] or files
    if len(files) != 1:
        found = ", ".join(p.name for p in files) or "none"
        raise DataError(
            f"{directory}: expected one {'/'.join(LOCAL_SUFFIXES)} file (found {found}); pass the file itself"
        )
    return files[0]


def _read_local(path: Path, split: str | None) -> list[dict[str, Any]]:
    """Raw rows of a local .jsonl/.json/.parquet file, or of the one such file in a directory."""
    if path.is_dir():
        path = _pick_file(path, split)
    if not path.exists():
        raise DataError(f"{path}: file not found; check the path")
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{path}: a .json benchmark file must hold a list of objects")
        return rows
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # lazy: only parquet users pay the import

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises many types for a corrupt file
            raise DataError(f"{path}: could not read parquet ({e})") from None
    raise DataError(f"{path}: unsupported format; use one of {', '.join(LOCAL_SUFFIXES)}")


def _read_hub(spec: BenchmarkSpec, name: str, split: str) -> list[dict[str, Any]]:
    import datasets  # lazy: importing datasets is slow and most runs read local files

    try:
        return list(datasets.load_dataset(spec.hub_id, spec.config, split=split))
    except Exception as e:  # network, auth (GPQA is gated) and missing-split errors alike
        raise DataError(
            f"could not load {name} ({spec.hub_id}, split {split}) from the Hugging Face Hub: {e}; "
            f"download it and pass a local file with path=..."
        ) from None


def load_benchmark(
    name: str, path: str | None = None, split: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Load a named benchmark as thinktune rows.

    Args:
        name: one of ``BENCHMARKS``.
        path: a local .jsonl/.json/.parquet file or a directory holding one, in the Hub dataset's schema;
            None loads from the Hub.
        split: Hub split (default: the spec's); for a directory, picks the file whose name contains it.
        limit: keep only the first ``limit`` rows.

    Returns:
        Rows ``{"id", "prompt", "answer", "source": name, "mode"}``, all strings (MATH-500 rows also keep
        ``subject`` and ``level`` for per-group results).

    Raises:
        UserError: unknown benchmark name.
        DataError: unreadable source, or a row missing a field (naming the source, row and field).
    """
    if name not in BENCHMARKS:
        raise UserError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    spec = BENCHMARKS[name]
    if path is not None:
        raw, source = _read_local(Path(path), split), str(path)
    else:
        raw, source = _read_hub(spec, name, split or spec.split), spec.hub_id
    if limit is not None:
        raw = raw[:limit]
    rows = []
    for i, row in enumerate(raw, start=1):
        # Rows without an id field (GSM8K) are numbered by position, which is stable for a fixed file.
        rows.append(
            {"id": str(i), **spec.to_row(row, f"{source}: row {i}"), "source": name, "mode": spec.mode}
        )
    return rows


def load_prompts(path: str, limit: int | None = None,
                 difficulties: Sequence[int] = ()) -> list[dict[str, Any]]:
    """Load a thinktune prompt JSONL (``{"id", "prompt", "answer"}`` rows) for evaluation or training.

    Args:
        path: the JSONL file.
        limit: keep only the first ``limit`` rows (after the difficulty filter).
        difficulties: keep only rows whose ``difficulty`` is one of these (empty: all).

    Returns:
        The rows with ``id`` and ``answer`` cast to str, ``mode`` defaulting to "math" and ``source``
        defaulting to the file's stem; other fields are kept.

    Raises:
        DataError: the file breaks the prompt schema, a row names an unknown mode, or no row is left
            after the difficulty filter.
    """
    rows = read_jsonl(path, kind="prompt")
    if difficulties:
        rows = [r for r in rows if r.get("difficulty") in difficulties]
        if not rows:
            raise DataError(f"{path}: no prompts left after the difficulty filter {list(difficulties)}")
    if limit is not None:
        rows = rows[:limit]
    out = []
    for i, row in enumerate(rows, start=1):
        mode = row.get("mode", "math")
        if mode not in MODES:
            raise DataError(f"{path}: row {i}: field 'mode' is {mode!r}; use one of {', '.join(MODES)}")
        source = row.get("source", Path(path).stem)
        out.append(
            {**row, "id": str(row["id"]), "answer": str(row["answer"]), "source": source, "mode": mode}
        )
    return out
