"""The recipes on vLLM, on a tiny saved Qwen2: GRPO's engine samples, takes the policy's weights every step,
and the update takes the old policy from its own first pass (vLLM returns no sampling log-probs); evaluate
samples on vLLM what thinktune's sampler samples (greedy); select-prompts, like every curation verb, samples
there.

Runs where vllm (``pip install 'thinktune[vllm]'``) and a CUDA GPU exist; skipped elsewhere, with the reason in
the pytest summary. The CPU side of the same logic is in ``test_grpo.py`` (first-pass old log-probs, the
backend checks) and ``test_evaluate.py``.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("vllm", reason="vllm is not installed (pip install 'thinktune[vllm]'); "
                                   "the recipes' vLLM paths are tested only where it is")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM needs a CUDA GPU")]

from thinktune.config import load_config  # noqa: E402
from thinktune.data.synth import SynthConfig  # noqa: E402
from thinktune.data.synth import run as run_synth  # noqa: E402
from thinktune.modeling import build_model  # noqa: E402
from thinktune.recipes import evaluate, grpo, select_prompts  # noqa: E402
from thinktune.rollout.vllm_backend import VLLMSampler  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm")
    run_synth(SynthConfig(n_train=64, n_heldout_per_level=2, rollout_prompts=0, output_dir=str(root / "data")))
    build_model.run(build_model.BuildModelConfig(
        corpus=str(root / "data" / "sft_cot.jsonl"), arch="qwen2", hidden_size=64, num_layers=2, num_heads=4,
        num_kv_heads=2, intermediate_size=128, max_position_embeddings=256, output_dir=str(root / "model")))
    return root


def test_evaluate_greedy_on_vllm_matches_thinktune(world, tmp_path):
    samples = {}
    for backend in ("vllm", "thinktune"):
        out = tmp_path / backend
        evaluate.run(load_config(evaluate.EvalConfig, None, [
            f"model.path={world / 'model'}", "model.system_prompt=",
            f"data.prompts={world / 'data' / 'heldout_prompts.jsonl'}",
            "sampling.greedy=true", "sampling.n=1", "sampling.max_new_tokens=16", f"sampling.backend={backend}",
            "sampling.vllm.gpu_memory_utilization=0.2", f"output_dir={out}"]))
        lines = (out / "samples.jsonl").read_text().splitlines()
        samples[backend] = [json.loads(line)["completion"] for line in lines]
    assert samples["vllm"] == samples["thinktune"]


def test_grpo_samples_on_vllm_and_pushes_weights(world, tmp_path, monkeypatch):
    pushes = []
    push = VLLMSampler.push_weights
    monkeypatch.setattr(VLLMSampler, "push_weights", lambda self, weights: pushes.append(push(self, weights)))
    out = tmp_path / "grpo"
    grpo.run(load_config(grpo.GRPOConfig, None, [
        f"model.path={world / 'model'}", "model.system_prompt=",
        f"data.prompts={world / 'data' / 'train_prompts.jsonl'}",
        "sampling.backend=vllm", "sampling.vllm.gpu_memory_utilization=0.2", "prompts_per_step=4", "sampling.n=4",
        "sampling.max_new_tokens=16", "optim.lr=1e-3", "optim.warmup_steps=0", "beta=0.05", "max_steps=2",
        "log.log_every=1", "log.save_every=0", "log.progress=false", "dump_every=0", f"output_dir={out}"]))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert len(pushes) == 2 and all(n > 0 for n in pushes)  # before each step's sampling
    for r in rows:
        assert r["rollout/length_mean"] > 0
        assert r["update/ratio"] == pytest.approx(1.0, abs=1e-6)  # one pass: the old policy is the first pass's
    assert (out / "final" / "config.json").exists()


def test_select_prompts_samples_on_vllm(world, tmp_path):
    out = tmp_path / "sel"
    summary = select_prompts.run(load_config(select_prompts.SelectPromptsConfig, None, [
        f"model.path={world / 'model'}", "model.system_prompt=",
        f"prompts={world / 'data' / 'heldout_prompts.jsonl'}",
        "sampling.n=3", "sampling.max_new_tokens=16", "keep_fraction=0.5", "sampling.backend=vllm",
        "sampling.vllm.gpu_memory_utilization=0.2",
        f"output_dir={out}"]))
    assert summary["kept"] == len((out / "selected.jsonl").read_text().splitlines()) > 0
    assert summary["before"]["mean_std"] > 0  # k sampled responses per prompt, not one repeated
