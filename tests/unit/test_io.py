"""Tests for thinktune.data.io: schema errors name the file, line and field; writes are atomic."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from thinktune.data.io import atomic_write, read_jsonl, read_jsonl_lines, write_json, write_jsonl
from thinktune.errors import DataError, UserError

SFT_OK = {"id": 1, "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
PROMPT_OK = {"id": "p1", "prompt": "2+3", "answer": "5"}


def at(path: Path) -> str:
    """The regex for a message starting with ``path``."""
    return re.escape(str(path))


def lines(tmp_path: Path, *rows: str, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(r + "\n" for r in rows))
    return path


def test_read_jsonl_round_trips_write_jsonl(tmp_path: Path) -> None:
    rows = [SFT_OK, {**SFT_OK, "id": "two", "note": "ünïcode"}]
    assert write_jsonl(tmp_path / "a.jsonl", rows) == 2
    assert read_jsonl(tmp_path / "a.jsonl", kind="sft") == rows


def test_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    path = lines(tmp_path, json.dumps(PROMPT_OK), "", "   ", "{oops")
    with pytest.raises(DataError, match=at(path) + ":4: not valid JSON"):
        read_jsonl(path)


def test_rows_keep_the_line_they_came_from(tmp_path: Path) -> None:
    second = {**PROMPT_OK, "id": "p2"}
    path = lines(tmp_path, json.dumps(PROMPT_OK), "", json.dumps(second))
    assert read_jsonl_lines(path, kind="prompt") == [(1, PROMPT_OK), (3, second)]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=at(path) + ": file not found"):
        read_jsonl(path)


def test_empty_file(tmp_path: Path) -> None:
    path = lines(tmp_path, "")
    with pytest.raises(DataError, match=at(path) + ": no rows"):
        read_jsonl(path)


def test_line_that_is_not_json_names_path_and_line(tmp_path: Path) -> None:
    path = lines(tmp_path, json.dumps(PROMPT_OK), json.dumps(PROMPT_OK), '{"id": 3, "prompt": ')
    with pytest.raises(DataError) as e:
        read_jsonl(path, kind="prompt")
    assert str(e.value).startswith(f"{path}:3: not valid JSON")
    assert isinstance(e.value, UserError)  # the CLI prints it as one line, exit code 2


@pytest.mark.parametrize(("line", "got"), [("[1, 2]", "list"), ('"text"', "str"), ("7", "int"), ("null", "NoneType")])
def test_line_that_is_not_an_object(tmp_path: Path, line: str, got: str) -> None:
    path = lines(tmp_path, json.dumps(PROMPT_OK), line)
    with pytest.raises(DataError, match=at(path) + f":2: expected a JSON object, got {got}"):
        read_jsonl(path)


@pytest.mark.parametrize(
    ("kind", "row", "field"),
    [("prompt", {"id": 1, "prompt": "q"}, "answer"),
     ("prompt", {"prompt": "q", "answer": "1"}, "id"),
     ("sft", {"id": 1}, "messages"),
     ("preference", {"id": 1, "prompt": "q", "chosen": "a"}, "rejected")],
)
def test_missing_field_names_field_and_line(tmp_path: Path, kind: str, row: dict, field: str) -> None:
    good = {"prompt": PROMPT_OK, "sft": SFT_OK,
            "preference": {"id": 0, "prompt": "q", "chosen": "a", "rejected": "b"}}[kind]
    path = lines(tmp_path, json.dumps(good), json.dumps(good), json.dumps(row))
    with pytest.raises(DataError, match=at(path) + f":3: missing field '{field}'"):
        read_jsonl(path, kind=kind)


@pytest.mark.parametrize(
    ("kind", "row", "field", "should", "got"),
    [("prompt", {"id": 1.5, "prompt": "q", "answer": "1"}, "id", "str or int", "float"),
     ("prompt", {"id": 1, "prompt": "q", "answer": True}, "answer", "str or int or float", "bool"),
     ("prompt", {"id": 1, "prompt": 3, "answer": "1"}, "prompt", "str or list", "int"),
     ("sft", {"id": 1, "messages": "hi"}, "messages", "list", "str"),
     ("preference", {"id": 1, "prompt": "q", "chosen": ["a"], "rejected": "b"}, "chosen", "str", "list")],
)
def test_wrong_type_names_field_expected_and_actual(tmp_path: Path, kind: str, row: dict, field: str,
                                                    should: str, got: str) -> None:
    path = lines(tmp_path, json.dumps(row))
    with pytest.raises(DataError, match=at(path) + f":1: field '{field}' should be {should}, got {got}$"):
        read_jsonl(path, kind=kind)


@pytest.mark.parametrize(
    ("messages", "match"),
    [([{"role": "user", "content": "Q"}], "'messages' must end with an assistant turn"),
     ([], "'messages' must end with an assistant turn"),
     ([{"role": "user", "content": "Q"}, {"role": "bot", "content": "A"}], r"messages\[1\]\.role is 'bot'"),
     ([{"role": "user"}, {"role": "assistant", "content": "A"}], r"messages\[0\] needs a string 'content'"),
     (["hi", {"role": "assistant", "content": "A"}], r"messages\[0\] needs a string 'content'")],
)
def test_bad_sft_messages_name_the_line(tmp_path: Path, messages: list, match: str) -> None:
    path = lines(tmp_path, json.dumps(SFT_OK), json.dumps({"id": 2, "messages": messages}))
    with pytest.raises(DataError, match=at(path) + f":2: {match}"):
        read_jsonl(path, kind="sft")


def test_without_kind_any_object_is_accepted(tmp_path: Path) -> None:
    assert read_jsonl(lines(tmp_path, '{"x": 1}', "{}")) == [{"x": 1}, {}]


# --------------------------------------------------------------------------------------------------------
# Atomic writes


def test_failed_atomic_write_keeps_previous_content_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"a": 1}])
    before = path.read_text()

    def rows():
        yield {"a": 2}
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError, match="crash mid-write"):
        write_jsonl(path, rows())
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_failed_first_write_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "new.json"
    with pytest.raises(KeyboardInterrupt), atomic_write(path) as f:
        f.write("partial")
        raise KeyboardInterrupt
    assert not path.exists()
    assert list(path.parent.iterdir()) == []


def test_atomic_write_binary_and_json(tmp_path: Path) -> None:
    with atomic_write(tmp_path / "b.bin", "wb") as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    write_json(tmp_path / "r.json", {"k": [1, 2]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"k": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "r.json"]
