"""Trackers beside metrics.jsonl (thinktune.trackers through MetricsLogger): what each writes reads back, with
its own reader, as exactly what metrics.jsonl holds; missing and failing trackers never cost a row."""

from __future__ import annotations

import json
import math
import struct
import sys
import types
from pathlib import Path

import pytest

from thinktune import trackers
from thinktune.config import REPORT_TO, LogConfig, load_config
from thinktune.errors import ConfigError
from thinktune.recipes.sft import SFTConfig
from thinktune.tracking import MetricsLogger, read_metrics

CONFIG = {"seed": 7, "optim": {"lr": 3e-4, "betas": [0.9, 0.999]}, "log": {"progress": True, "run_name": ""},
          "model": {"path": None}}


def log_rows(logger: MetricsLogger, steps: range, scale: float = 1.0) -> None:
    """A few steps of metrics of every kind a recipe logs: floats, ints, a non-finite value, a string."""
    for step in steps:
        logger.log(step, {"train/loss": scale / step, "train/lr": 1e-4 * step, "select/groups": step + 2,
                          "eval/pass@1": math.nan if step == 2 else 0.1 * step, "note": "text"})


def numeric_series(rows: list[dict], tag: str) -> list[tuple[int, float]]:
    return [(r["step"], r[tag]) for r in rows if isinstance(r.get(tag), int | float)]


# --------------------------------------------------------------------------------------------------------
# TensorBoard, read back with tensorboard's own EventAccumulator


def read_tensorboard(logdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return acc


def test_tensorboard_events_hold_what_the_jsonl_holds(tmp_path):
    pytest.importorskip("tensorboard")
    with MetricsLogger(tmp_path / "metrics.jsonl", report_to=["jsonl", "tensorboard"], config=CONFIG) as logger:
        log_rows(logger, range(1, 4))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    acc = read_tensorboard(tmp_path / "tensorboard")

    numeric_tags = {k for r in rows for k, v in r.items() if k != "step" and isinstance(v, int | float)}
    assert numeric_tags == {"train/loss", "train/lr", "select/groups", "eval/pass@1"}
    assert set(acc.Tags()["scalars"]) == numeric_tags  # "note" (a string) is not sent
    for tag in numeric_tags:
        events = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert events == [(s, pytest.approx(v, rel=1e-6)) for s, v in numeric_series(rows, tag)], tag
    assert [e.step for e in acc.Scalars("eval/pass@1")] == [1, 3]  # step 2's nan is "nan" in the JSONL


def test_tensorboard_hparams_are_the_flattened_config(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    with MetricsLogger(tmp_path / "metrics.jsonl", report_to=["tensorboard"], config=CONFIG) as logger:
        logger.log(1, {"train/loss": 1.0})
    content = read_tensorboard(tmp_path / "tensorboard").PluginTagToContent("hparams")
    hparams = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info.hparams

    assert set(hparams) == set(trackers.flat_hparams(CONFIG))
    assert hparams["seed"].number_value == CONFIG["seed"]
    assert hparams["optim.lr"].number_value == CONFIG["optim"]["lr"]
    assert hparams["optim.betas"].string_value == json.dumps(CONFIG["optim"]["betas"])
    assert hparams["log.progress"].bool_value is True
    assert hparams["model.path"].string_value == "null"


def test_tensorboard_resume_drops_the_events_past_the_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    with MetricsLogger(tmp_path / "metrics.jsonl", report_to=["tensorboard"]) as logger:
        log_rows(logger, range(1, 5))  # the attempt that crashed after its step-2 checkpoint
    with MetricsLogger(tmp_path / "metrics.jsonl", resume_step=2, report_to=["tensorboard"]) as logger:
        log_rows(logger, range(3, 5), scale=10.0)  # the resumed attempt logs steps 3 and 4 again, differently
    rows = read_metrics(tmp_path / "metrics.jsonl")
    acc = read_tensorboard(tmp_path / "tensorboard")

    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    events = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert events == [(s, pytest.approx(v, rel=1e-6)) for s, v in numeric_series(rows, "train/loss")]
    assert events[2][1] == pytest.approx(10.0 / 3, rel=1e-6)  # the resumed attempt's value, not the crashed one's


# --------------------------------------------------------------------------------------------------------
# Weights & Biases offline, read back from the run's transaction log with wandb's own Record protobuf


def wandb_records(path: Path):
    """The Records of a .wandb file: a 7-byte file header (":W&B", magic, version), then LevelDB-log blocks of
    32 KiB whose chunks (4-byte checksum, 2-byte length, 1-byte type) carry one serialized Record each or
    split across FIRST/MIDDLE/LAST chunks. wandb 0.31 reads these in Go only, so there is no Python reader."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # nothing written outside tmp_path
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))


def test_wandb_offline_run_holds_what_the_jsonl_holds(tmp_path, wandb_offline):
    out = tmp_path / "run"
    with MetricsLogger(out / "metrics.jsonl", report_to=["wandb"], config=CONFIG, name="tiny-sft") as logger:
        log_rows(logger, range(1, 4))
    rows = read_metrics(out / "metrics.jsonl")
    [log_file] = (out / "wandb").glob("offline-run-*/run-*.wandb")
    records = [(r.WhichOneof("record_type"), r) for r in wandb_records(log_file)]

    history = {}
    for kind, r in records:
        if kind == "history":
            items = {"/".join(i.nested_key or [i.key]): json.loads(i.value_json) for i in r.history.item}
            history[r.history.step.num] = {k: v for k, v in items.items() if not k.startswith("_")}
    assert history == {r["step"]: trackers.numeric_scalars(r) for r in rows}

    summary = {}
    for kind, r in records:
        if kind == "summary":
            summary |= {"/".join(u.nested_key or [u.key]): json.loads(u.value_json) for u in r.summary.update}
    last = trackers.numeric_scalars(rows[-1])
    assert {k: summary[k] for k in last} == last

    [run] = [r.run for kind, r in records if kind == "run"]
    config = {u.key: json.loads(u.value_json) for u in run.config.update if u.key != "_wandb"}
    assert (config, run.display_name, run.project) == (CONFIG, "tiny-sft", trackers.PROJECT)


@pytest.mark.parametrize(("env", "mode"), [
    ({}, "offline"),
    ({"WANDB_API_KEY": "k"}, "online"),
    ({"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}, "offline"),
    ({"WANDB_MODE": "disabled"}, "disabled"),
])
def test_wandb_mode_is_offline_unless_the_environment_says_otherwise(monkeypatch, env, mode):
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert trackers.wandb_mode() == mode


class FakeRun:
    """What WandbTracker and TrackioTracker use of a run: log(scalars, step) and finish()."""

    def __init__(self, finish_error: Exception | None = None) -> None:
        self.logged: list[tuple[int, dict]] = []
        self.finished = False
        self.finish_error = finish_error

    def log(self, scalars, step):
        self.logged.append((step, scalars))

    def finish(self):
        if self.finish_error:
            raise self.finish_error
        self.finished = True


def test_wandb_that_cannot_start_online_logs_offline(tmp_path, monkeypatch, capsys):
    inits = []

    def init(mode, **start):
        inits.append(mode)
        if mode == "online":
            raise ConnectionError("no route to api.wandb.ai")
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "k")
    with MetricsLogger(tmp_path / "metrics.jsonl", report_to=["wandb"]) as logger:
        logger.log(1, {"train/loss": 0.5})
        [tracker] = logger.trackers
    assert inits == ["online", "offline"]
    assert tracker.run.logged == [(1, {"train/loss": 0.5})] and tracker.run.finished
    assert "no route to api.wandb.ai" in capsys.readouterr().err


def test_trackio_gets_the_run_name_config_and_numeric_scalars(tmp_path, monkeypatch):
    inits = []

    def init(**kwargs):
        inits.append(kwargs)
        return FakeRun()

    monkeypatch.setitem(sys.modules, "trackio", types.SimpleNamespace(init=init))
    with MetricsLogger(tmp_path / "metrics.jsonl", report_to=["trackio"], config=CONFIG) as logger:
        logger.log(5, {"train/loss": 0.25, "eval/pass@1": math.inf, "note": "text"})
        [tracker] = logger.trackers
    assert inits == [{"project": trackers.PROJECT, "name": tmp_path.name, "config": CONFIG, "embed": False}]
    assert tracker.run.logged == [(5, {"train/loss": 0.25})] and tracker.run.finished


# --------------------------------------------------------------------------------------------------------
# Missing, failing and disabled trackers


def test_a_tracker_not_installed_is_a_one_line_error_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` meets where it is not installed
    with pytest.raises(ConfigError) as error:
        MetricsLogger(tmp_path / "metrics.jsonl", report_to=["tensorboard", "wandb"])
    message = str(error.value)
    assert "\n" not in message
    assert "log.report_to lists 'wandb', which is not installed" in message
    assert "pip install 'thinktune[tracking]'" in message
    assert not (tmp_path / "tensorboard").exists()  # every package is checked before any tracker starts


def test_a_tracker_failing_mid_run_is_switched_off_once_and_the_jsonl_keeps_every_row(tmp_path, monkeypatch,
                                                                                      capsys):
    pytest.importorskip("tensorboard")
    logger = MetricsLogger(tmp_path / "metrics.jsonl", report_to=["tensorboard"])
    [tracker] = logger.trackers

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    log_rows(logger, range(1, 2))
    monkeypatch.setattr(tracker.writer, "add_scalar", full_disk)
    log_rows(logger, range(2, 5))
    logger.close()

    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "tensorboard failed at step 2" in warnings[0] and "No space left on device" in warnings[0]
    assert logger.trackers == []
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    steps = [e.step for e in read_tensorboard(tmp_path / "tensorboard").Scalars("train/loss")]
    assert steps == [1]  # what it had before it failed


def test_a_tracker_failing_to_close_is_a_warning(tmp_path, monkeypatch, capsys):
    def init(**kwargs):
        return FakeRun(finish_error=RuntimeError("server gone"))

    monkeypatch.setitem(sys.modules, "trackio", types.SimpleNamespace(init=init))
    logger = MetricsLogger(tmp_path / "metrics.jsonl", report_to=["trackio"])
    logger.close()
    logger.close()  # twice is fine: the trackers are gone after the first
    assert capsys.readouterr().err.count("trackio failed to close (RuntimeError: server gone)") == 1


def test_other_ranks_open_no_tracker_and_write_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # not even the package check runs
    with MetricsLogger(tmp_path / "metrics.jsonl", enabled=False, report_to=["tensorboard", "wandb"]) as logger:
        logger.log(1, {"train/loss": 1.0})
        assert logger.trackers == []
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------------
# log.report_to in the config


def test_report_to_choices_are_the_adapters_and_jsonl():
    assert set(REPORT_TO) == {"jsonl", *trackers.ADAPTERS}
    assert set(trackers.INSTALL) == set(trackers.ADAPTERS)


def test_unknown_report_to_name_is_a_config_error_naming_the_key_and_choices():
    with pytest.raises(ConfigError, match=r"log\.report_to lists 'tb'; choose from jsonl, tensorboard, wandb"):
        load_config(SFTConfig, None, ["log.report_to=[tensorboard,tb]"], validate=False)


@pytest.mark.parametrize("override", ["log.report_to=[tensorboard,wandb]", "log.report_to=tensorboard,wandb"])
def test_report_to_override_reads_a_list(override):
    cfg = load_config(SFTConfig, None, [override], validate=False)
    assert cfg.log.report_to == ["tensorboard", "wandb"]
    assert LogConfig().report_to == []
