"""``thinktune check-logprobs`` on a tiny random model of every architecture in ``modeling.arch.ARCH_SPECS``: in
fp32 the sampler's log-probs equal the training forward's to float32 rounding and the check passes; in bf16 the
figures are computed, reported and finite, and past a threshold the verb fails (``MismatchError``, exit 2)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from thinktune import cli
from thinktune.config import load_config
from thinktune.errors import ConfigError
from thinktune.modeling.arch import ARCH_SPECS
from thinktune.modeling.models import IM_END, sync_special_tokens
from thinktune.recipes import check_logprobs
from thinktune.recipes.check_logprobs import DEFAULT_THRESHOLDS, CheckLogprobsConfig, MismatchError
from thinktune.train.checkpoint import save_pretrained_atomic
from thinktune.train.mismatch import FIGURES

pytestmark = pytest.mark.integration

FAST = ["data.limit=2", "sampling.n=2", "sampling.max_new_tokens=12"]


def build(arch: str, tokenizer) -> torch.nn.Module:
    """A 2-layer random model of ``arch`` with its norm gains and biases moved off 1 and 0 (HF's start, which
    would hide them; as in tests/unit/test_arch.py)."""
    extra = {"head_dim": 8} if ARCH_SPECS[arch].head_dim_in_config else {}  # hidden / heads
    config = AutoConfig.for_model(
        arch, **extra, vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128, bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END), pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    sync_special_tokens(model, tokenizer)
    return model


@pytest.fixture(scope="module", params=sorted(ARCH_SPECS))
def arch_dir(request, tmp_path_factory, char_tokenizer) -> Path:
    path = tmp_path_factory.mktemp(request.param) / "model"
    save_pretrained_atomic(build(request.param, char_tokenizer), char_tokenizer, path)
    return path


def fp32_tolerance(model_dir: Path) -> float:
    """What float32 rounding allows on |delta log-prob|: both sides compute the same log-probs in float32 by
    different kernels (the lean decode step against the unpadded training forward), each rounding at every one
    of a few dozen operations through two layers, errors of half an ulp each that partly cancel. 64 ulps of
    the largest log-prob the model gives covers that count with room; a bug (a wrong temperature, a shifted
    token) moves log-probs by 1e-2 or more. The largest log-prob is measured here, over the whole vocabulary."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=torch.arange(40)[None]).logits.float(), -1)  # [1, 40, V]
    return 64 * torch.finfo(torch.float32).eps * float(logps.abs().max())


def config(model_dir: Path, out: Path, *overrides: str) -> CheckLogprobsConfig:
    return load_config(CheckLogprobsConfig, None, [f"model.path={model_dir}", f"output_dir={out}", *FAST,
                                                   *overrides])


def test_fp32_figures_are_rounding_and_the_check_passes(arch_dir, tmp_path):
    report = check_logprobs.run(config(arch_dir, tmp_path))
    tol = fp32_tolerance(arch_dir)
    figs = report["figures"]
    assert report["passed"] and report["compared"] == "sampling_logprobs" and report["num_completions"] == 4
    assert figs["mismatch/abs_max"] <= tol
    assert figs["mismatch/abs_mean"] <= figs["mismatch/abs_max"]
    # k3 = exp(r) - r - 1 ~ r^2 / 2 for small r, and the mean is at most the largest token's.
    assert 0 <= figs["mismatch/kl_k3"] <= tol ** 2
    assert json.loads((tmp_path / "report.json").read_text())["figures"] == figs


def test_bf16_figures_are_reported_and_a_tiny_threshold_fails(arch_dir, tmp_path):
    # threshold=0 fails on any gap. One process samples from the fp32 policy (as GRPO on one rank does) while the
    # training forward autocasts its products to bf16, which rounds their inputs to 8 bits: there is a gap.
    with pytest.raises(MismatchError, match="past the threshold"):
        check_logprobs.run(config(arch_dir, tmp_path, "model.dtype=bf16", "threshold=0"))
    report = json.loads((tmp_path / "report.json").read_text())
    figs = report["figures"]
    assert not report["passed"] and report["threshold"] == 0 and report["dtype"] == "bf16"
    assert all(math.isfinite(figs[name]) for name in FIGURES)
    assert 0 < figs["mismatch/abs_mean"] <= figs["mismatch/abs_max"] and figs["mismatch/kl_k3"] >= 0


def test_cli_exit_code_past_the_threshold(tiny_model_dir, tmp_path, capsys):
    args = ["check-logprobs", f"model.path={tiny_model_dir}", "model.dtype=bf16", f"output_dir={tmp_path}", *FAST]
    # The bf16 default (log 1.2) is far above this tiny model's gap: its logits are below 1 in size, so a bf16
    # rounding (2^-9 relative) moves each by less than 0.002.
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "verdict: PASS" in out and "mismatch/kl_k3" in out and f"{DEFAULT_THRESHOLDS['bf16']:.3g}" in out
    gap = json.loads((tmp_path / "report.json").read_text())["figures"]["mismatch/abs_max"]
    assert cli.main([*args, f"threshold={gap / 2}"]) == 2  # the same draws (same seed), half the allowed gap
    captured = capsys.readouterr()
    assert "verdict: FAIL" in captured.out
    assert captured.err.count("\n") == 1 and captured.err.startswith("thinktune: error: check-logprobs:")
    assert not json.loads((tmp_path / "report.json").read_text())["passed"]


def test_prompt_file_temperature_and_greedy(tiny_model_dir, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"What is {i}+{i}?", "answer": str(2 * i)}) + "\n"
                               for i in range(3)))
    # The trainer scores at the sampling temperature, so the sampler's temperature-scaled log-probs still match.
    report = check_logprobs.run(config(tiny_model_dir, tmp_path / "t", f"data.prompts={prompts}", "data.limit=0",
                                       "sampling.temperature=0.7"))
    assert report["passed"] and report["temperature"] == 0.7 and report["num_completions"] == 3 * 2
    assert report["figures"]["mismatch/abs_max"] <= fp32_tolerance(tiny_model_dir)
    # Greedy sampling log-probs are 0: the raw log-probs are compared, at temperature 1.
    report = check_logprobs.run(config(tiny_model_dir, tmp_path / "g", "sampling.greedy=true", "sampling.n=1"))
    assert report["passed"] and report["compared"] == "logprobs" and report["temperature"] == 1.0


@pytest.mark.parametrize("override, message", [
    ("model.lora.r=8", "merged checkpoint"),
    ("model.gradient_checkpointing=true", "share_prompt=false"),
    ("threshold=-1", "threshold=-1"),
    ("micro_batch_size=0", "micro_batch_size"),
])
def test_config_refuses(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, tmp_path, override)


def test_default_threshold_follows_the_dtype(tmp_path):
    assert config(tmp_path, tmp_path).resolved_threshold() == (DEFAULT_THRESHOLDS["fp32"], "default for fp32")
    assert config(tmp_path, tmp_path, "model.dtype=bf16").resolved_threshold()[0] == pytest.approx(math.log(1.2))
    assert config(tmp_path, tmp_path, "threshold=0.5").resolved_threshold() == (0.5, "given")
