"""The vLLM backend on a tiny saved Qwen2: same interface, log-probs, and weights pushed after an update.

Runs where vllm (``pip install 'thinktune[vllm]'``) and a CUDA GPU exist; skipped elsewhere, with the
reason in the pytest summary. Nothing here is mocked: a fake engine would test nothing about vLLM.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm", reason="vllm is not installed (pip install 'thinktune[vllm]'); "
                                   "the vLLM backend is tested only where it is")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM needs a CUDA GPU")]

from thinktune.modeling.models import build_tiny_model  # noqa: E402
from thinktune.rollout.sampler import RolloutEngine, SamplingParams  # noqa: E402
from thinktune.rollout.vllm_backend import VLLMSampler, resolve_backend  # noqa: E402
from thinktune.train.checkpoint import save_pretrained_atomic  # noqa: E402

SMALL = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
             max_position_embeddings=512)


def test_vllm_samples_like_thinktune_and_takes_pushed_weights(tmp_path, char_tokenizer):
    assert resolve_backend("auto") == "vllm"
    model = build_tiny_model("qwen2", char_tokenizer, **SMALL).eval()
    save_pretrained_atomic(model, char_tokenizer, tmp_path / "m")
    model = model.to("cuda")
    engine = VLLMSampler(str(tmp_path / "m"), char_tokenizer, dtype="float32", gpu_memory_utilization=0.2,
                         enforce_eager=True, max_model_len=256)
    prompts = [char_tokenizer(t)["input_ids"] for t in ["What is 2+3?", "7*8", "Be brief. Q"]]
    greedy = SamplingParams(greedy=True, max_new_tokens=16)

    def both() -> tuple[list[list[int]], list[list[int]]]:
        ours = RolloutEngine(model, char_tokenizer).sample(prompts, greedy, show_progress=False)
        theirs = engine.sample(prompts, greedy, show_progress=False)
        return [g[0].token_ids for g in ours], [g[0].token_ids for g in theirs]

    ours, theirs = both()
    assert ours == theirs
    sampled = engine.sample(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=16), seed=0,
                            show_progress=False)
    for prompt, group in zip(prompts, sampled, strict=True):
        for c in group:
            ids = torch.tensor([prompt + c.token_ids], device="cuda")
            with torch.no_grad():
                ref = torch.log_softmax(model(input_ids=ids).logits[0, len(prompt) - 1:-1].float(), -1)
            ref = ref.gather(1, torch.tensor(c.token_ids, device="cuda")[:, None]).squeeze(1).cpu()
            torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=1e-3, rtol=1e-3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)  # stands in for an optimizer step
    assert engine.push_weights(model.state_dict().items()) > 0
    ours_after, theirs_after = both()
    assert ours_after == theirs_after and theirs_after != theirs
