"""SFT end to end on the embedded world: learning signal, rejection sampling, HF-loadable checkpoints, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from thinktune.config import load_config
from thinktune.data.synth import SynthConfig
from thinktune.data.synth import run as run_synth
from thinktune.modeling import build_model
from thinktune.recipes import sft

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Data and a tiny Phi3 model, built once for the module."""
    root = tmp_path_factory.mktemp("world")
    run_synth(SynthConfig(n_train=400, n_heldout_per_level=5, slip_rate=0.25, output_dir=str(root / "data")))
    build_model.run(build_model.BuildModelConfig(
        corpus=str(root / "data" / "sft_cot.jsonl"), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=64, max_position_embeddings=160, output_dir=str(root / "model")))
    return root


def sft_overrides(world: Path, out: Path, **extra) -> list[str]:
    base = {"model.path": world / "model", "model.system_prompt": "", "data.train": world / "data" / "sft_cot.jsonl",
            "data.max_seq_len": 160, "optim.lr": 3e-3, "optim.warmup_steps": 2, "batch_size": 8,
            "micro_batch_size": 4, "max_steps": 12, "log.log_every": 1, "log.save_every": 4,
            "log.progress": "false", "output_dir": out}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def losses(out: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


def test_sft_learns_rejects_slips_and_saves_hf_checkpoint(world, tmp_path):
    out = tmp_path / "sft"
    summary = sft.run(load_config(sft.SFTConfig, None, sft_overrides(world, out, max_steps=30, **{"optim.lr": 1e-2})))
    slips = sum(1 for line in (world / "data" / "sft_cot.jsonl").read_text().splitlines()
                if json.loads(line)["teacher_slip"])
    # Every slipped trace ends in a wrong answer, so rejection sampling drops exactly those.
    assert summary["data"]["rejected"] == slips > 0
    assert summary["data"]["verified"] == 400 - slips
    curve = losses(out)
    assert curve[-1][1] < curve[0][1] - 0.5, curve  # it learns, so a sign or mask error cannot pass
    # train/lr at step n is the rate step n trained with: warm-up (n / 2) * lr over the first two steps.
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["train/lr"] for r in rows if "train/lr" in r}
    assert lrs[1] == pytest.approx(0.5e-2) and lrs[2] == pytest.approx(1e-2)

    # The final checkpoint loads with plain transformers and gives the same logits as in thinktune.
    tok = AutoTokenizer.from_pretrained(out / "final")
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    text = tok.apply_chat_template([{"role": "user", "content": "12*34"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user<|im_sep|>12*34<|im_end|><|im_start|>assistant<|im_sep|>"
    ids = torch.tensor([tok(text, add_special_tokens=False).input_ids])
    from thinktune.config import ModelConfig
    from thinktune.modeling import models
    cfg = ModelConfig(path=str(out / "final"), system_prompt="")
    ours = models.load_model(cfg, models.load_tokenizer(cfg), torch.device("cpu"), torch.float32)
    assert torch.equal(ours(ids).logits, model(ids).logits)
    # Checkpoints are HF directories too.
    step_dir = out / "checkpoints" / "step-28"
    assert (step_dir / "trainer_state.pt").is_file()
    AutoModelForCausalLM.from_pretrained(step_dir)


def test_killed_run_resumes_with_identical_losses(world, tmp_path):
    reference = tmp_path / "reference"
    args = sft_overrides(world, reference, max_steps=40, **{"log.save_every": 5, "micro_batch_size": 2})
    sft.run(load_config(sft.SFTConfig, None, args))

    killed = tmp_path / "killed"
    args = sft_overrides(world, killed, max_steps=40, **{"log.save_every": 5, "micro_batch_size": 2})
    cmd = [sys.executable, "-m", "thinktune.cli", "sft", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step-10").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up, as with a lost machine
    proc.wait()
    assert not (killed / "final").exists(), "the run finished before it could be killed; make it longer"
    resumed_from = max(int(d.name[5:]) for d in (killed / "checkpoints").glob("step-*"))
    assert 10 <= resumed_from < 40

    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming from {killed / 'checkpoints' / f'step-{resumed_from}'}" in result.stdout
    got, want = losses(killed), losses(reference)
    assert [s for s, _ in got] == [s for s, _ in want] == list(range(1, 41))
    for (step, a), (_, b) in zip(got, want, strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6), f"step {step}: resumed {a} vs uninterrupted {b}"
