"""Named evaluation benchmarks, normalized to one row schema.

Every loader returns rows ``{"id", "prompt", "answer", "source", "mode"}`` where ``mode`` is the
``thinktune.rewards.verify`` mode that checks the answer. Sources are read in the schemas of the usual
Hugging Face datasets, either from a local file (.jsonl, .json list, .parquet, or a directory holding one)
or, when no path is given, from the Hub through ``datasets.load_dataset``.

Phi-4-reasoning reports AIME 2024/2025 and GPQA-Diamond (docs/recipe.md §4.1); MATH-500 and GSM8K are here for
small-model and CPU runs (Phi-4-mini-reasoning reports MATH-500).

A row's ``prompt`` is the problem alone (GPQA: question and options), which is what decontamination compares.
The answer-format instruction is added at evaluation time by a prompt template (``PROMPT_TEMPLATES``): each
benchmark names a default, ``resolve_template`` picks another by name or takes a custom string holding
``{problem}``. Neither Phi report prints its evaluation prompt in the sources we could read, so every default
is the closest documented one and says where it comes from (docs/evaluation.md has the reasoning).
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
from thinktune.errors import ConfigError, DataError, UserError
from thinktune.rewards.verify import MODES

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
CHOICE_LETTERS = "ABCD"


PROBLEM = "{problem}"  # the placeholder every template holds; filled by str.replace, so other braces stay


@dataclass(frozen=True)
class PromptTemplate:
    """An answer-format instruction around a problem, and where it comes from.

    Attributes:
        text: the user turn, with ``{problem}`` where the problem goes (only that placeholder is filled).
        source: repository, path and commit (or document) the string was taken from.
    """

    text: str
    source: str


# Each string is quoted exactly from its source (whitespace included), with the source's placeholder renamed to
# {problem} and format-string escapes ({{ }}) undone. They are facts we cite, so they stay verbatim even where
# they read oddly (lighteval's double space and surrounding newlines, Eureka's "Dont").
PROMPT_TEMPLATES: dict[str, PromptTemplate] = {
    "none": PromptTemplate(PROBLEM, "the problem alone (thinktune's behaviour before templates)"),
    # The directive DeepSeek-R1's README recommends for math; Qwen2.5-Math's harness appends it to the problem.
    "qwen-boxed": PromptTemplate(
        PROBLEM + "\nPlease reason step by step, and put your final answer within \\boxed{}.",
        "QwenLM/Qwen2.5-Math@a45202bd evaluation/utils.py PROMPT_TEMPLATES['qwen-boxed'] (user turn); the "
        "sentence is DeepSeek-R1's recommendation (deepseek-ai/DeepSeek-R1@0cf78561 README.md, Usage "
        "Recommendations 3)"),
    # The AIME template of Eureka ML Insights, the harness the Phi-4-reasoning report names; unchanged from
    # 2024-12-13 through the report (2025-04-30) to 2025-10.
    "eureka-aime": PromptTemplate(
        "You are a genius math graduate student solving math problems from the AIME competition. Follow the "
        "following steps.\n\nStep 1: Reflect on what the problem is asking.\nStep 2: Think step by step and "
        "explain your reasoning in detail.\nStep 3: Provide your final answer in the format: 'Final Answer: "
        "[numeric value]'. Dont box it, just provide the answer directly at the end.\n\n" + PROBLEM,
        "microsoft/eureka-ml-insights@5e1b30cb eureka_ml_insights/prompt_templates/aime_templates/"
        "Template_1clean.jinja (used by user_configs/aime.py)"),
    "lighteval-math": PromptTemplate(
        "\nSolve the following math problem efficiently and clearly.  The last line of your response should be "
        "of the following format: 'Therefore, the final answer is: $\\boxed{ANSWER}$. I hope it is correct' "
        "(without quotes) where ANSWER is just the final number or expression that solves the problem. Think "
        "step by step before answering.\n\n" + PROBLEM + "\n",
        "huggingface/lighteval@3fd15266 src/lighteval/tasks/tasks/aime.py MATH_PROMPT_TEMPLATE (aime24, aime25)"),
    "lighteval-math500": PromptTemplate(
        "Solve the following problem. The final line of your response MUST be of the following format:\n"
        "\"ANSWER: $ANSWER\" (without quotes) where $ANSWER is the final answer. Think step by step before "
        "answering.\n\n" + PROBLEM,
        "huggingface/lighteval@3fd15266 src/lighteval/tasks/tasks/math_500.py MATH_QUERY_TEMPLATE"),
    "lm-eval-minerva": PromptTemplate(
        "Problem:\n" + PROBLEM + "\n\nSolution:",
        "EleutherAI/lm-evaluation-harness@4e7e0d47 lm_eval/tasks/minerva_math/utils.py doc_to_text "
        "(minerva_math, minerva_math500; lm-eval adds 4 worked examples, thinktune none)"),
    "lm-eval-aime": PromptTemplate(
        "Question: " + PROBLEM + "\nAnswer:",
        "EleutherAI/lm-evaluation-harness@4e7e0d47 lm_eval/tasks/aime/aime24.yaml doc_to_text"),
    "lm-eval-gsm8k-cot-zeroshot": PromptTemplate(
        "Q: " + PROBLEM + "\nA: Let's think step by step.",
        "EleutherAI/lm-evaluation-harness@4e7e0d47 lm_eval/tasks/gsm8k/gsm8k-cot-zeroshot.yaml doc_to_text"),
    "lm-eval-gsm8k-cot-llama": PromptTemplate(
        "Given the following problem, reason and give a final answer to the problem.\nProblem: " + PROBLEM
        + "\nYour response should end with \"The final answer is [answer]\" where [answer] is the response to "
        "the problem.\n",
        "EleutherAI/lm-evaluation-harness@4e7e0d47 lm_eval/tasks/gsm8k/gsm8k-cot-llama.yaml doc_to_text "
        "(lm-eval adds 8 worked examples, thinktune none)"),
    # Not sourced: thinktune's own instruction for GPQA, kept from before templates existed. Eureka's GPQA
    # template lays the options out itself, so it cannot wrap the question-and-options text given here.
    "thinktune-choice": PromptTemplate(
        PROBLEM + "\n\nAnswer with the letter of the correct option in \\boxed{}.",
        "thinktune's own (no harness source)"),
}


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
        template: name of the default prompt template (``PROMPT_TEMPLATES``).
        group_by: row fields evaluation breaks results down by unless told otherwise.
    """

    hub_id: str
    config: str | None
    split: str
    mode: str
    to_row: Callable[[dict[str, Any], str], dict[str, Any]]
    template: str
    group_by: tuple[str, ...] = ()


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
    """Build a four-choice problem with options shuffled deterministically from the question text.

    The seed comes from SHA-256 of the question (``hash()`` is salted per process), so every run and
    every machine sees the same option order.

    Args:
        question: the question text.
        correct: the correct option.
        incorrect: the three incorrect options.

    Returns:
        (question and lettered options, letter of the correct option); the instruction to answer with a
        letter comes from the prompt template (``thinktune-choice`` by default).
    """
    seed = int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:8], "big")
    options = [correct.strip(), *(o.strip() for o in incorrect)]
    order = list(range(len(options)))
    random.Random(seed).shuffle(order)
    lines = [f"({letter}) {options[i]}" for letter, i in zip(CHOICE_LETTERS, order, strict=True)]
    return f"{question.strip()}\n\n" + "\n".join(lines), CHOICE_LETTERS[order.index(0)]


def _gpqa_row(row: dict[str, Any], where: str) -> dict[str, str]:
    question = str(_field(row, where, "Question"))
    correct = str(_field(row, where, "Correct Answer"))
    incorrect = [str(_field(row, where, f"Incorrect Answer {i}")) for i in (1, 2, 3)]
    prompt, letter = gpqa_prompt(question, correct, incorrect)
    return {**_own_id(row, "Record ID", "id"), "prompt": prompt, "answer": letter}


# Default templates: AIME (reported by Phi-4-reasoning) takes the AIME template of the harness that report names;
# MATH-500 (reported by Phi-4-mini-reasoning, which names no harness or prompt) and GSM8K (reported by neither)
# take the directive of DeepSeek-R1, the teacher Phi-4-mini-reasoning was distilled from.
BENCHMARKS: dict[str, BenchmarkSpec] = {
    "aime24": BenchmarkSpec("HuggingFaceH4/aime_2024", None, "train", "integer", _aime_row, "eureka-aime"),
    "aime25": BenchmarkSpec("math-ai/aime25", None, "test", "integer", _aime_row, "eureka-aime"),
    "math500": BenchmarkSpec("HuggingFaceH4/MATH-500", None, "test", "math", _math500_row, "qwen-boxed",
                             group_by=("level", "subject")),
    "gsm8k": BenchmarkSpec("openai/gsm8k", "main", "test", "math", _gsm8k_row, "qwen-boxed"),
    "gpqa-diamond": BenchmarkSpec("Idavidrein/gpqa", "gpqa_diamond", "train", "choice", _gpqa_row,
                                  "thinktune-choice"),
}


def resolve_template(value: str, benchmark: str = "", field: str = "data.template") -> tuple[str, str]:
    """The prompt template a config asks for.

    Args:
        value: "" for the benchmark's default (``none`` without a benchmark), a name in ``PROMPT_TEMPLATES``,
            or a custom template: any string holding ``{problem}``.
        benchmark: the named benchmark being evaluated, or "" for a prompt file.
        field: the config field ``value`` came from, for error messages.

    Returns:
        (name, text): the name is "custom" for a custom string.

    Raises:
        ConfigError: an unknown name, or a custom string without ``{problem}``; the message names ``field``.
    """
    if not value:
        name = BENCHMARKS[benchmark].template if benchmark in BENCHMARKS else "none"
        return name, PROMPT_TEMPLATES[name].text
    if value in PROMPT_TEMPLATES:
        return value, PROMPT_TEMPLATES[value].text
    if PROBLEM in value:
        return "custom", value
    names = ", ".join(PROMPT_TEMPLATES)
    if any(c.isspace() for c in value) or "{" in value:
        raise ConfigError(f"{field}: the custom template {value[:60]!r} has no {PROBLEM} placeholder; write "
                          f"{PROBLEM} where the problem goes, or name one of {names}")
    raise ConfigError(f"{field}: unknown template name {value!r}; choose one of {names}, or give a custom "
                      f"string holding {PROBLEM}")


def apply_template(prompt: str | list[dict[str, str]], template: str) -> str | list[dict[str, str]]:
    """``prompt`` with ``{problem}`` in ``template`` replaced by it.

    A message-list prompt keeps its turns; the template wraps the content of its last user turn. The caller's
    prompt is never modified.
    """
    if isinstance(prompt, str):
        return template.replace(PROBLEM, prompt)
    last_user = max((i for i, m in enumerate(prompt) if m.get("role") == "user"), default=None)
    return [{**m, "content": template.replace(PROBLEM, m["content"])} if i == last_user else m
            for i, m in enumerate(prompt)]


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
