"""Runs that a bad day cannot corrupt: a changed mind, a second run, a damaged checkpoint, a torn metrics line,
a killed writer, a full disk. Each test does to a run directory what a user or a machine did to one."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from thinktune.config import load_config
from thinktune.errors import ConfigError, DataError
from thinktune.recipes import dpo, grpo, sft
from thinktune.tracking import read_metrics
from thinktune.train import checkpoint, run_dir

pytestmark = pytest.mark.integration


def sft_config(world: Path, out: Path, **extra):
    base = {"model.path": world / "model", "model.system_prompt": "", "data.train": world / "data" / "sft_cot.jsonl",
            "data.max_seq_len": 160, "optim.lr": 3e-3, "optim.warmup_steps": 2, "batch_size": 8,
            "micro_batch_size": 4, "max_steps": 6, "log.log_every": 1, "log.save_every": 2,
            "log.keep_checkpoints": 3, "log.progress": "false", "output_dir": out}
    base.update(extra)
    return load_config(sft.SFTConfig, None, [f"{k}={v}" for k, v in base.items()])


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r}


def as_if_killed_after(out: Path, step: int) -> None:
    """Leave ``out`` as a run killed just after checkpoint ``step``: no final model, no later checkpoints."""
    shutil.rmtree(out / "final")
    for d in checkpoint.step_dirs(out):
        if int(d.name[5:]) > step:
            shutil.rmtree(d)


@pytest.fixture(scope="module")
def finished(small_world, tmp_path_factory) -> Path:
    """A finished SFT run with checkpoints at steps 2 and 4, copied by each test that changes it."""
    out = tmp_path_factory.mktemp("finished") / "sft"
    sft.run(sft_config(small_world, out))
    return out


def copy_run(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "sft"
    shutil.copytree(finished, out)
    return out


def test_changed_settings_are_refused_then_forced(small_world, finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path)
    as_if_killed_after(out, 4)
    config_before = (out / "config.yaml").read_bytes()
    with pytest.raises(ConfigError) as e:
        sft.run(sft_config(small_world, out, **{"optim.lr": 1e-3}))
    assert "optim.lr 0.003 -> 0.001" in str(e.value) and "resume=force" in str(e.value)
    assert "step 4" in str(e.value)
    assert (out / "config.yaml").read_bytes() == config_before  # the refusal wrote nothing
    assert not (out / "final").exists()

    # The same change with a longer budget and resume=force: max_steps may change, lr is taken as new.
    sft.run(sft_config(small_world, out, max_steps=8, resume="force", **{"optim.lr": 1e-3}))
    assert "resuming from" in capsys.readouterr().out
    assert (out / "config.before-step-4.yaml").read_bytes() == config_before
    assert load_config(sft.SFTConfig, out / "config.yaml").optim.lr == 1e-3
    assert sorted(losses(out)) == list(range(1, 9))


def test_changed_data_file_is_refused_by_name(small_world, finished, tmp_path):
    out = copy_run(finished, tmp_path)
    as_if_killed_after(out, 4)
    data = tmp_path / "train.jsonl"
    lines = (small_world / "data" / "sft_cot.jsonl").read_text().splitlines(keepends=True)
    data.write_text("".join(lines))
    # The run read the world's file; the copy has the same rows but another path: the path is a setting.
    with pytest.raises(ConfigError, match="data.train"):
        sft.run(sft_config(small_world, out, **{"data.train": data}))
    # Same path, other contents: point the run at the copy first, then edit the copy.
    moved = copy_run(finished, tmp_path / "moved")
    shutil.rmtree(moved / "checkpoints")
    shutil.rmtree(moved / "final")
    (moved / run_dir.FINGERPRINT_FILE).unlink()
    sft.run(sft_config(small_world, moved, max_steps=4, **{"data.train": data}))
    shutil.rmtree(moved / "final")
    data.write_text("".join(lines[:-1]))  # one row fewer
    with pytest.raises(ConfigError, match="data.train: the file's contents changed"):
        sft.run(sft_config(small_world, moved, max_steps=4, **{"data.train": data}))


def test_resume_false_starts_fresh_beside_the_old_run(small_world, finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    sft.run(sft_config(small_world, out, max_steps=2, resume="false", **{"optim.lr": 1e-3}))
    fresh = tmp_path / "sft-2"
    assert f"writes to {fresh}" in capsys.readouterr().out
    assert sorted(losses(fresh)) == [1, 2]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # old run untouched


def test_a_failed_invocation_leaves_a_finished_run_untouched(small_world, finished, tmp_path):
    out = copy_run(finished, tmp_path)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(DataError, match="file not found"):
        sft.run(sft_config(small_world, out, **{"data.train": tmp_path / "missing.jsonl", "optim.lr": 1e-3}))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_second_run_into_a_locked_directory_is_refused(small_world, tmp_path):
    out = tmp_path / "sft"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from thinktune.train import run_dir; "
         "run_dir.lock(Path(sys.argv[1])); print('locked', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(run_dir.RunDirError, match=f"in use by another thinktune run \\(pid {holder.pid}\\)"):
            sft.run(sft_config(small_world, out, max_steps=2))
        assert not (out / "metrics.jsonl").exists() and not (out / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    # The OS dropped the dead holder's lock: the same command now runs.
    sft.run(sft_config(small_world, out, max_steps=2))
    assert sorted(losses(out)) == [1, 2]


def truncate_weights(ckpt: Path) -> None:
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])


def garbage_state(ckpt: Path) -> None:
    (ckpt / checkpoint.STATE_FILE).write_bytes(b"not a trainer state")


@pytest.mark.parametrize("damage", [truncate_weights, garbage_state], ids=["truncated-weights", "garbage-state"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(small_world, finished, tmp_path, capsys, damage):
    out = copy_run(finished, tmp_path)
    as_if_killed_after(out, 4)
    damage(out / "checkpoints" / "step-4")
    sft.run(sft_config(small_world, out))
    printed = capsys.readouterr().out
    assert "checkpoints/step-4 is damaged" in printed and "step-2" in printed
    want, got = losses(finished), losses(out)
    assert got.keys() == want.keys()
    for step in want:  # steps 3-6 rerun from step 2 exactly as the uninterrupted run did them
        assert got[step] == pytest.approx(want[step], rel=1e-5), step


def test_a_torn_metrics_line_is_dropped_with_a_warning(small_world, finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path)
    as_if_killed_after(out, 4)
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "train/lo')  # killed mid-line
    sft.run(sft_config(small_world, out))
    assert "metrics.jsonl:7 is not a metrics row" in capsys.readouterr().err
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6]


def test_orphans_of_dead_writers_are_removed_and_a_lone_old_copy_restored(small_world, finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path)
    as_if_killed_after(out, 4)
    dead = 2**22 + 1  # above Linux's default pid_max: no live process has it
    half = out / "checkpoints" / f".step-6.tmp-{dead}"
    shutil.copytree(out / "checkpoints" / "step-4", half)
    # A writer that died between moving step-4 aside and moving its replacement in left the only copy as .old.
    (out / "checkpoints" / "step-4").rename(out / "checkpoints" / f".step-4.old-{dead}")
    sft.run(sft_config(small_world, out))
    assert not half.exists() and not list((out / "checkpoints").glob(".*"))
    assert f"resuming from {out / 'checkpoints' / 'step-4'}" in capsys.readouterr().out
    assert sorted(losses(out)) == list(range(1, 7))
    assert losses(out)[5] == pytest.approx(losses(finished)[5], rel=1e-5)  # resumed from the restored step-4


def test_checkpoints_are_fsynced_before_the_rename(small_world, tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = checkpoint.os.fsync
    monkeypatch.setattr(checkpoint.os, "fsync", lambda fd: (synced.append(Path(f"/proc/self/fd/{fd}").resolve()
                                                                         .name), real_fsync(fd))[1])
    sft.run(sft_config(small_world, tmp_path / "sft", max_steps=3))
    assert {"model.safetensors", checkpoint.STATE_FILE} <= set(synced)


def fill_disk_after_first_checkpoint(monkeypatch) -> None:
    """Every trainer-state write after the first fails as a full disk does."""
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(small_world, tmp_path, monkeypatch):
    out = tmp_path / "sft"
    fill_disk_after_first_checkpoint(monkeypatch)
    with pytest.raises(checkpoint.DiskFullError) as e:
        sft.run(sft_config(small_world, out))
    assert str(e.value).startswith("no space left on the device of") and "step-4" in str(e.value)
    assert "\n" not in str(e.value)
    assert [d.name for d in checkpoint.step_dirs(out)] == ["step-2"]
    assert not list((out / "checkpoints").glob(".*"))  # no orphan holding the space
    assert checkpoint.verify(out / "checkpoints" / "step-2")[0] is None


def mount_tmpfs(path: Path, size: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                        capture_output=True).returncode == 0
    return ok


def test_a_real_full_tmpfs(small_world, finished, tmp_path):
    """The same on a real small filesystem, where this machine lets a test mount one (root, CAP_SYS_ADMIN)."""
    page = 4096  # tmpfs gives each file whole pages
    pages = sum(-(-p.stat().st_size // page) for p in (finished / "checkpoints" / "step-2").rglob("*") if p.is_file())
    disk = tmp_path / "disk"
    # Room for one checkpoint and a half, and 8 pages for the run's small files (config, fingerprint, metrics,
    # lock): the second checkpoint cannot fit beside the first.
    if not mount_tmpfs(disk, (pages * 3 // 2 + 8) * page):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN); the simulated test covers it")
    try:
        out = disk / "sft"
        with pytest.raises(checkpoint.DiskFullError, match="no space left on the device of"):
            sft.run(sft_config(small_world, out, **{"log.keep_checkpoints": 1}))
        assert [d.name for d in checkpoint.step_dirs(out)] == ["step-2"]
        assert checkpoint.verify(out / "checkpoints" / "step-2")[0] is None
        assert not list((out / "checkpoints").glob(".*"))
    finally:
        run_dir.release(disk / "sft")
        subprocess.run(["umount", str(disk)], check=False)


def dpo_config(world: Path, out: Path, pairs: Path, **extra):
    base = {"model.path": world / "model", "model.system_prompt": "", "data.train": pairs, "batch_size": 4,
            "micro_batch_size": 2, "max_steps": 2, "log.log_every": 1, "log.save_every": 0,
            "log.progress": "false", "output_dir": out, "optim.lr": 1e-3}
    base.update(extra)
    return load_config(dpo.DPOConfig, None, [f"{k}={v}" for k, v in base.items()])


def test_stale_reference_logps_are_recomputed(small_world, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = (small_world / "pairs.jsonl").read_text().splitlines(keepends=True)
    pairs.write_text("".join(rows[:8]))
    out = tmp_path / "dpo"
    dpo.run(dpo_config(small_world, out, pairs))
    pairs.write_text("".join(rows[8:16]))  # other pairs, same file
    shutil.rmtree(out / "final")
    dpo.run(dpo_config(small_world, out, pairs, resume="force"))
    first = next(r for r in read_metrics(out / "metrics.jsonl") if r["step"] == 1)
    # At step 1 the policy is the reference, so each implicit reward is exactly 0 -- unless the reference
    # log-probs belong to other pairs.
    assert first["train/rewards/chosen"] == pytest.approx(0, abs=1e-6)
    assert first["train/rewards/rejected"] == pytest.approx(0, abs=1e-6)


def test_grpo_refuses_a_changed_reward_on_resume(small_world, tmp_path):
    args = {"model.path": small_world / "model", "model.system_prompt": "",
            "data.prompts": small_world / "data" / "train_prompts.jsonl", "prompts_per_step": 2, "sampling.n": 2,
            "sampling.max_new_tokens": 8, "max_steps": 2, "log.save_every": 1, "log.log_every": 1, "log.progress": "false",
            "output_dir": tmp_path / "grpo", "reward.name": "phi4"}

    def config(**extra):
        return load_config(grpo.GRPOConfig, None, [f"{k}={v}" for k, v in (args | extra).items()])

    grpo.run(config())
    shutil.rmtree(tmp_path / "grpo" / "final")
    with pytest.raises(ConfigError, match="beta"):
        grpo.run(config(beta=0.5))
    grpo.run(config(max_steps=3))  # a longer budget is not a change of run
    assert sorted({r["step"] for r in read_metrics(tmp_path / "grpo" / "metrics.jsonl")}) == [1, 2, 3]
