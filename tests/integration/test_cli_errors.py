"""The ``thinktune`` command on user mistakes: exit code 2, one ``thinktune: error:`` line naming what and
where, no traceback. Each case runs the CLI as a subprocess (a few seconds each: the recipes import torch).

Hub access is switched off (HF_HUB_OFFLINE) so that no case can reach the network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
VERBS = ["synth", "build-model", "sft", "evaluate", "data", "run", "demo", "compare", "print-config"]
GOOD_ROW = {"id": 1, "messages": [{"role": "user", "content": "What is 2+3?"},
                                  {"role": "assistant", "content": "<think>2+3=5</think>\\boxed{5}"}],
            "answer": "5"}


def thinktune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "thinktune.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def assert_user_error(result: subprocess.CompletedProcess, *names: str) -> str:
    """Exit code 2 and exactly one stderr line, ``thinktune: error: ...``, containing each of ``names``."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("thinktune: error: ")
    for name in names:
        assert name in lines[0]
    return lines[0]


def write_jsonl(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "sft.yaml"
    result = thinktune("sft", "--config", str(missing), cwd=tmp_path)
    assert_user_error(result, f"{missing}: config file not found")


def test_unknown_config_key_names_key_file_and_suggestion(tmp_path: Path) -> None:
    cfg = tmp_path / "sft.yaml"
    cfg.write_text("data:\n  train: t.jsonl\noptim:\n  warmup: 10\n")
    result = thinktune("sft", "--config", str(cfg), cwd=tmp_path)
    assert_user_error(result, str(cfg), "unknown key 'optim.warmup'", "did you mean 'optim.warmup_steps'?")


@pytest.mark.parametrize(
    ("second_line", "message"),
    [('{"id": 2, "messages": [', ":2: not valid JSON"),
     ('{"id": 2, "answer": "5"}', ":2: missing field 'messages'")],
    ids=["not-json", "missing-field"],
)
def test_bad_jsonl_line_names_file_line_and_field(tmp_path: Path, tiny_model_dir: Path, second_line: str,
                                                  message: str) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", json.dumps(GOOD_ROW), second_line)
    result = thinktune("sft", f"model.path={tiny_model_dir}", f"data.train={data}",
                       f"output_dir={tmp_path / 'out'}", "max_steps=1", "log.progress=false", cwd=tmp_path)
    assert_user_error(result, f"{data}{message}")


def test_model_path_that_does_not_exist(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", json.dumps(GOOD_ROW))
    missing = tmp_path / "runs" / "model"
    result = thinktune("sft", f"model.path={missing}", f"data.train={data}", f"output_dir={tmp_path / 'out'}",
                       cwd=tmp_path)
    assert_user_error(result, f"model path {str(missing)!r} does not exist")


def test_relative_model_path_that_does_not_exist(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", json.dumps(GOOD_ROW))
    result = thinktune("sft", "model.path=runs/model", f"data.train={data}", f"output_dir={tmp_path / 'out'}",
                       cwd=tmp_path)
    assert_user_error(result, "runs/model")


def test_top_level_help_lists_every_verb_and_the_configs_directory(tmp_path: Path) -> None:
    result = thinktune("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for verb in VERBS:
        assert verb in result.stdout
    assert str(REPO / "configs") in result.stdout.replace("\n", "")


def test_verb_help_mentions_the_configs_directory_and_overrides(tmp_path: Path) -> None:
    result = thinktune("sft", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout.replace("\n", "")
    assert str(REPO / "configs") in out
    assert "--config" in out and "key.sub=value" in out


def test_verbs_that_are_not_training_stages_refuse_torchrun(tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    result = subprocess.run([sys.executable, "-m", "thinktune.cli", "evaluate", "model.path=x"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert_user_error(result, "thinktune evaluate runs on one process", "sft, dpo, grpo")


def bad_utf8(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(GOOD_ROW).encode() + b"\n" + json.dumps(GOOD_ROW).encode().replace(b"5", b"\xe9") + b"\n")
    return path


def list_answer(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "list.jsonl", json.dumps(GOOD_ROW), json.dumps({**GOOD_ROW, "answer": ["5"]}))


def not_a_model(tmp_path: Path) -> Path:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.txt").write_text("not weights")
    return tmp_path / "notes"


# (case, verb, overrides, words the one error line must hold; "!word": must not hold). "{data}" is a good SFT
# file, "{model}" the tiny model, and the other names the bad files built by the functions above.
BAD_VALUES = [
    ("batch-size-0", "sft", ["batch_size=0"], ["batch_size=0", ">= 1"]),
    ("micro-batch-size-0", "sft", ["micro_batch_size=0"], ["micro_batch_size=0", ">= 1"]),
    ("negative-batch", "dpo", ["batch_size=-4", "data.train={data}"], ["batch_size=-4", ">= 1"]),
    ("negative-prompts-per-step", "grpo", ["prompts_per_step=-1", "data.prompts={data}"], ["prompts_per_step=-1"]),
    ("negative-max-steps", "sft", ["max_steps=-3"], ["max_steps=-3", ">= 0"]),
    ("lr-nan", "sft", ["optim.lr=nan"], ["optim.lr=nan", "finite"]),
    ("max-new-tokens-0", "evaluate", ["sampling.max_new_tokens=0"], ["max_new_tokens=0", ">= 1", "!top_k"]),
    ("temperature-inf", "evaluate", ["sampling.temperature=inf"], ["temperature=inf", "finite"]),
    ("invalid-utf8", "sft", ["data.train={bad_utf8}"], ["latin1.jsonl:2:", "not valid UTF-8", "column"]),
    ("answer-is-a-list", "sft", ["data.train={list_answer}"], ["list.jsonl:2:", "'answer'", "got list"]),
    ("not-a-model", "sft", ["model.path={not_a_model}"], ["notes", "no config.json"]),
    ("bad-resume", "sft", ["resume=maybe"], ["'resume'", "'force'"]),
]


@pytest.mark.parametrize(("verb", "overrides", "words"), [c[1:] for c in BAD_VALUES], ids=[c[0] for c in BAD_VALUES])
def test_bad_values_are_one_line_errors(tmp_path: Path, tiny_model_dir: Path, capsys, verb: str,
                                        overrides: list[str], words: list[str]) -> None:
    """In-process (``main``) rather than a subprocess per case: the same handler, without a torch import each."""
    from thinktune.cli import main

    files = {"data": write_jsonl(tmp_path / "train.jsonl", json.dumps(GOOD_ROW)), "model": tiny_model_dir,
             "bad_utf8": bad_utf8(tmp_path), "list_answer": list_answer(tmp_path), "not_a_model": not_a_model(tmp_path)}
    args = {"model.path": str(tiny_model_dir), "output_dir": str(tmp_path / "out"), "log.progress": "false",
            "max_steps": "1"} if verb in ("sft", "dpo", "grpo") else {"model.path": str(tiny_model_dir),
                                                                       "output_dir": str(tmp_path / "out")}
    if verb == "sft":
        args["data.train"] = str(files["data"])
    for item in overrides:
        key, value = item.split("=", 1)
        args[key] = value.format(**files)
    code = main([verb, *(f"{k}={v}" for k, v in args.items())])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("thinktune: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert (word[1:] not in lines[0]) if word.startswith("!") else (word in lines[0]), lines[0]
    assert not (tmp_path / "out" / "config.yaml").exists()  # a refused invocation writes nothing
