"""JSONL reading and writing with schema checks and atomic writes.

Rows follow docs/design.md's schemas. A row that breaks its schema is an error naming the file, the line and
the field, never a silent skip. Writes go to a temporary file in the same directory and are renamed into
place, so a crash never leaves half a file where a finished one is expected.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from thinktune.errors import DataError

# Required fields and their accepted types, per row kind.
SCHEMAS: dict[str, dict[str, tuple[type, ...]]] = {
    "prompt": {"id": (str, int), "prompt": (str, list), "answer": (str, int, float)},
    "sft": {"id": (str, int), "messages": (list,)},
    "preference": {"id": (str, int), "prompt": (str, list), "chosen": (str,), "rejected": (str,)},
}
# Fields a row may leave out, and their types when it has them.
OPTIONAL: dict[str, dict[str, tuple[type, ...]]] = {
    "prompt": {"mode": (str,)},
    "sft": {"answer": (str, int, float), "mode": (str,)},
    "preference": {},
}


@contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write rows atomically, one JSON object per line. Returns the number of rows written."""
    n = 0
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def read_jsonl(path: str | Path, kind: str | None = None) -> list[dict]:
    """Read a JSONL file; with ``kind`` ("prompt", "sft", "preference"), check each row's schema.

    Raises:
        DataError: the file is missing, a line is not a JSON object, or a row lacks a field or has one of
            the wrong type. The message names the file, the 1-based line number and the field.
    """
    return [row for _, row in read_jsonl_lines(path, kind)]


def read_jsonl_lines(path: str | Path, kind: str | None = None) -> list[tuple[int, dict]]:
    """``read_jsonl``'s rows, each with the 1-based line it came from (blank lines are skipped, so a row's
    index is not its line), for later messages that point at the row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path (data files are JSONL, one row per line)")
    rows = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                                "save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            if kind is not None:
                check_row(row, kind, where=f"{path}:{lineno}")
            rows.append((lineno, row))
    if not rows:
        raise DataError(f"{path}: no rows; the file is empty")
    return rows


def check_row(row: dict, kind: str, where: str) -> None:
    """Raise DataError naming ``where`` and the field if ``row`` breaks the ``kind`` schema."""
    for field, types in SCHEMAS[kind].items():
        if field not in row:
            raise DataError(f"{where}: missing field '{field}' (a {kind} row needs {', '.join(SCHEMAS[kind])})")
        if not isinstance(row[field], types) or isinstance(row[field], bool):
            names = " or ".join(t.__name__ for t in types)
            raise DataError(f"{where}: field '{field}' should be {names}, got {type(row[field]).__name__}")
    for field, types in OPTIONAL[kind].items():
        if field in row and (not isinstance(row[field], types) or isinstance(row[field], bool)):
            names = " or ".join(t.__name__ for t in types)
            raise DataError(f"{where}: field '{field}' should be {names}, got {type(row[field]).__name__} "
                            f"({str(row[field])[:40]})")
    if kind == "sft":
        check_messages(row["messages"], where)


def check_messages(messages: list, where: str) -> None:
    """Each message is {"role": system|user|assistant, "content": str}, and the last one is the assistant's."""
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: messages[{i}] needs a string 'content'")
        if m.get("role") not in ("system", "user", "assistant"):
            raise DataError(f"{where}: messages[{i}].role is {m.get('role')!r}; use system, user or assistant")
    if not messages or messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: 'messages' must end with an assistant turn (the text to train on)")
