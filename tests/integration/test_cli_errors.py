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
