"""``VLLMSampler``'s calls into vLLM, run against the stand-in in ``tests/stubs/vllm`` (vLLM 0.34.0's signatures on
a transformers model, on CPU; not vLLM): sampling parameters and outputs mapped both ways, weights pushed, sleep
and wake in order, ``make_sampler`` and a GRPO run on the vLLM backend.

What this does not cover: vLLM itself (its kernels, scheduler, memory pools and packed parameter names). That is
``tests/integration/test_rollout_vllm.py`` and ``test_recipes_vllm.py``, where vllm and a GPU exist.
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from thinktune.config import LoRAConfig, ModelConfig, SamplingConfig, load_config
from thinktune.errors import ConfigError
from thinktune.rollout import vllm_backend
from thinktune.rollout.sampler import RolloutEngine, SamplingParams, end_token_ids
from thinktune.rollout.service import make_sampler
from thinktune.rollout.vllm_backend import VLLMSampler, resolve_backend, vllm_available
from thinktune.rollout.weights import full_parameters
from thinktune.runtime import Runtime

STUBS = Path(__file__).parents[1] / "stubs"
PROMPTS = ["What is 2+3?", "Q 7*8"]


@pytest.fixture
def stand_in(monkeypatch):
    """``import vllm`` finds the stand-in in this test only: on ``sys.path`` here, out of ``sys.modules`` after."""
    monkeypatch.syspath_prepend(str(STUBS))
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)  # VLLMSampler sets it; undone after
    yield
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


@pytest.fixture
def engine(stand_in, tiny_model_dir, char_tokenizer) -> VLLMSampler:
    return VLLMSampler(str(tiny_model_dir), char_tokenizer, dtype="float32")


def encode(tokenizer, texts=PROMPTS) -> list[list[int]]:
    return [tokenizer.encode(t) for t in texts]


def hf_logps(model: torch.nn.Module, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """Teacher-forced log-probs of ``tokens`` after ``prompt``: ``[T]``."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1:-1].float()  # [T, V]
    return logits.log_softmax(-1).gather(1, torch.tensor(tokens)[:, None]).squeeze(1)  # [T]


def assert_logps_follow(model, prompts, groups) -> None:
    for prompt, group in zip(prompts, groups, strict=True):
        for c in group:
            torch.testing.assert_close(torch.tensor(c.logprobs), hf_logps(model, prompt, c.token_ids),
                                       atol=1e-4, rtol=0)


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy of ``model`` with every weight moved, as a few optimizer steps would."""
    policy = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.5)
    return policy


def engine_weights_nan(sampler: VLLMSampler) -> bool:
    model = sampler.llm.collective_rpc(lambda worker: worker.get_model())[0]
    return all(p.isnan().all() for _, p in model.named_parameters())


def test_greedy_matches_thinktunes_sampler_with_teacher_forced_logprobs(engine, tiny_phi3, char_tokenizer):
    prompts, params = encode(char_tokenizer), SamplingParams(greedy=True, max_new_tokens=12)
    ours = RolloutEngine(tiny_phi3, char_tokenizer).sample(prompts, params, show_progress=False)
    theirs = engine.sample(prompts, params, show_progress=False)
    assert [[(c.token_ids, c.text, c.finish_reason) for c in g] for g in theirs] == \
           [[(c.token_ids, c.text, c.finish_reason) for c in g] for g in ours]
    assert all(c.sampling_logprobs is None for g in theirs for c in g)  # vLLM returns one kind
    assert_logps_follow(tiny_phi3, prompts, theirs)
    # top_k=1 or a tiny top_p leaves one token to draw: greedy again, so both filters reach vLLM's params
    for narrow in (SamplingParams(temperature=1.0, top_k=1, max_new_tokens=12),
                   SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=12)):
        assert [g[0].token_ids for g in engine.sample(prompts, narrow, seed=9, show_progress=False)] == \
               [g[0].token_ids for g in theirs]


def test_samples_per_prompt_are_seeded_and_their_logprobs_untempered(engine, tiny_phi3, char_tokenizer):
    prompts, params = encode(char_tokenizer), SamplingParams(n=3, temperature=0.7, top_k=20, max_new_tokens=10)
    first = engine.sample(prompts, params, seed=5, show_progress=False)
    ids = lambda groups: [[c.token_ids for c in g] for g in groups]  # noqa: E731
    assert [len(g) for g in first] == [3, 3]
    assert all(len({tuple(t) for t in g}) > 1 for g in ids(first))  # n draws, not one repeated
    assert ids(engine.sample(prompts, params, seed=5, show_progress=False)) == ids(first)
    assert ids(engine.sample(prompts, params, seed=6, show_progress=False)) != ids(first)
    assert_logps_follow(tiny_phi3, prompts, first)  # the model's log-probs, not the tempered, filtered ones


def test_finish_reasons_stop_tokens_stop_strings_and_min_tokens(engine, tiny_phi3, char_tokenizer, monkeypatch):
    reasons = []  # vLLM's (finish_reason, stop_reason) behind every Completion
    mapped = vllm_backend.finish_reason
    monkeypatch.setattr(vllm_backend, "finish_reason",
                        lambda out: reasons.append((out.finish_reason, out.stop_reason)) or mapped(out))
    prompts, ends = encode(char_tokenizer), end_token_ids(tiny_phi3, char_tokenizer)
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=16)
    for seed in range(50):  # a seed whose samples end both ways; most do
        reasons.clear()
        base = engine.sample(prompts, params, seed=seed, show_progress=False)
        if {c.finish_reason for g in base for c in g} == {"eos", "length"}:
            break
    else:
        pytest.fail("no seed below 50 gave samples ending both ways")
    for c, (vllm_reason, stop_reason) in zip([c for g in base for c in g], reasons, strict=True):
        if c.token_ids[-1] in ends:  # the EOS: vLLM's stop_reason None
            assert (c.finish_reason, c.finished, vllm_reason, stop_reason) == ("eos", True, "stop", None)
            assert c.text == char_tokenizer.decode(c.token_ids[:-1])
        else:
            assert (c.finish_reason, c.finished, vllm_reason, len(c.token_ids)) == ("length", False, "length", 16)

    long = next(c for g in base for c in g if c.finish_reason == "length").token_ids
    token = long[2]  # another stop token: the same draws, cut where it first appears; stop_reason is its id
    cut = long.index(token) + 1
    reasons.clear()
    stopped = engine.sample(prompts, replace(params, stop_token_ids=(token,)), seed=seed, show_progress=False)
    c = next(c for g in stopped for c in g if c.token_ids == long[:len(c.token_ids)])  # the same draws as long
    assert (c.token_ids, c.finish_reason) == (long[:cut], "eos")
    assert ("stop", token) in reasons

    text = char_tokenizer.decode(long)
    stop = text[3:5]  # a stop string: the completion ends at the token that completes it, its text right after
    end = text.index(stop) + len(stop)
    reasons.clear()
    stopped = engine.sample(prompts, replace(params, stop=(stop,)), seed=seed, show_progress=False)
    c = next(c for g in stopped for c in g if c.token_ids == long[:len(c.token_ids)])
    assert (c.text, c.finish_reason, c.finished) == (text[:end], "stop", True)
    assert char_tokenizer.decode(c.token_ids).startswith(text[:end]) and ("stop", stop) in reasons

    quick = min((c for g in base for c in g if c.finish_reason == "eos"), key=lambda c: len(c.token_ids))
    at_least = min(len(quick.token_ids) + 1, 16)  # min_tokens: no end token before it, though one came sooner
    held = engine.sample(prompts, replace(params, min_new_tokens=at_least), seed=seed, show_progress=False)
    assert all(len(c.token_ids) >= at_least and not set(c.token_ids[:at_least]) & set(ends)
               for g in held for c in g)


def test_the_stand_in_refuses_keywords_vllm_lacks(stand_in, tiny_model_dir):
    import vllm

    with pytest.raises(TypeError):
        vllm.SamplingParams(max_new_tokens=8)  # thinktune's name, not vLLM's
    with pytest.raises(TypeError):
        vllm.LLM(str(tiny_model_dir), rollout_backend="vllm")
    with pytest.raises(ValueError, match="top_k"):
        vllm.SamplingParams(top_k=-2)


def test_sync_weights_pushes_every_weight(engine, tiny_phi3, char_tokenizer):
    policy = perturbed(tiny_phi3, seed=1)
    prompts, params = encode(char_tokenizer), SamplingParams(greedy=True, max_new_tokens=12)
    before = engine.sample(prompts, params, show_progress=False)
    engine.sync_weights(policy)
    after = engine.sample(prompts, params, show_progress=False)
    ours = RolloutEngine(policy, char_tokenizer).sample(prompts, params, show_progress=False)
    assert [g[0].token_ids for g in after] == [g[0].token_ids for g in ours]
    assert_logps_follow(policy, prompts, after)
    old = before[0][0]
    assert not torch.allclose(torch.tensor(old.logprobs), hf_logps(policy, prompts[0], old.token_ids))


def test_release_then_sync_wakes_weights_loads_resets_then_wakes_the_cache(stand_in, tiny_model_dir, tiny_phi3,
                                                                           char_tokenizer, monkeypatch):
    engine = VLLMSampler(str(tiny_model_dir), char_tokenizer, dtype="float32", sleep_mode=True)
    events = []
    for name in ("sleep", "wake_up", "collective_rpc", "reset_prefix_cache"):
        method = getattr(engine.llm, name)

        def spy(*args, _method=method, _name=name, **kwargs):
            shown = [getattr(a, "__name__", repr(a)) for a in args[:1]] + [f"{k}={v!r}" for k, v in kwargs.items()
                                                                           if k != "args"]
            events.append(f"{_name}({', '.join(shown)})")
            return _method(*args, **kwargs)

        monkeypatch.setattr(engine.llm, name, spy)
    engine.release()
    assert events == ["sleep(level=2)"]
    assert engine_weights_nan(engine)  # the stand-in really discards them
    events.clear()
    policy = perturbed(tiny_phi3, seed=2)
    engine.sync_weights(policy)
    assert events == ["wake_up(tags=['weights'])", "collective_rpc(_load_weights)",
                          "collective_rpc(_parameter_names)", "reset_prefix_cache()", "wake_up(tags=['kv_cache'])"]
    prompts, params = encode(char_tokenizer), SamplingParams(greedy=True, max_new_tokens=8)
    assert_logps_follow(policy, prompts, engine.sample(prompts, params, show_progress=False))


def test_release_then_resume_cannot_sample(stand_in, tiny_model_dir, char_tokenizer):
    engine = VLLMSampler(str(tiny_model_dir), char_tokenizer, dtype="float32", sleep_mode=True)
    engine.release()
    engine.resume()
    assert engine_weights_nan(engine)  # the memory is back, the weights are not
    with pytest.raises(RuntimeError, match="discarded by release"):
        engine.sample(encode(char_tokenizer), SamplingParams(greedy=True, max_new_tokens=4), show_progress=False)


def test_a_push_after_release_that_misses_a_parameter_raises(stand_in, tiny_model_dir, tiny_phi3, char_tokenizer):
    engine = VLLMSampler(str(tiny_model_dir), char_tokenizer, dtype="float32", sleep_mode=True)
    engine.release()
    *kept, (missed, _) = list(full_parameters(tiny_phi3))
    total = len(kept) + 1
    with pytest.raises(RuntimeError, match=rf"left 1 of the vLLM engine's {total} parameters unwritten \({missed}\)"):
        engine.push_weights(kept)


def test_make_sampler_builds_vllm_on_the_stand_in_and_refuses_lora(stand_in, tiny_model_dir, tiny_phi3,
                                                                   char_tokenizer, monkeypatch):
    monkeypatch.setattr(vllm_backend, "pick_device", lambda: torch.device("cuda", 0))  # the rest stays on CPU
    assert vllm_available() and resolve_backend("auto") == "vllm"
    rt, cfg = Runtime(torch.device("cpu"), torch.float32), SamplingConfig(backend="vllm", max_new_tokens=8)
    model_cfg = ModelConfig(path=str(tiny_model_dir))
    trained = make_sampler(cfg, model_cfg, char_tokenizer, rt, model=tiny_phi3, longest_prompt=10)
    assert isinstance(trained, VLLMSampler) and trained.sleep_mode  # a policy to push: sleep between steps
    assert trained.llm.max_model_len == 10 + 8  # the engine's context: prompt plus new tokens
    loaded = make_sampler(cfg, model_cfg, char_tokenizer, rt)
    assert isinstance(loaded, VLLMSampler) and not loaded.sleep_mode
    with pytest.raises(ConfigError, match="model.lora.r > 0"):
        make_sampler(cfg, ModelConfig(path=str(tiny_model_dir), lora=LoRAConfig(r=4)), char_tokenizer, rt)
    with pytest.raises(ConfigError, match="vLLM refuses temperatures above 2.0"):  # at start, not at sampling
        make_sampler(SamplingConfig(backend="vllm", temperature=2.5), model_cfg, char_tokenizer, rt)
    assert make_sampler(SamplingConfig(backend="thinktune", temperature=2.5), model_cfg, char_tokenizer, rt)


def test_grpo_on_the_vllm_backend_pushes_weights_every_step(stand_in, small_world, tmp_path, monkeypatch):
    from thinktune.recipes import grpo

    monkeypatch.setattr(vllm_backend, "pick_device", lambda: torch.device("cuda", 0))  # the run stays on CPU
    pushes, sleeps = [], []
    push, sleep = VLLMSampler.push_weights, VLLMSampler.sleep
    monkeypatch.setattr(VLLMSampler, "push_weights", lambda self, weights: pushes.append(push(self, weights)))
    monkeypatch.setattr(VLLMSampler, "sleep", lambda self: sleeps.append(sleep(self)))
    out = tmp_path / "grpo"
    grpo.run(load_config(grpo.GRPOConfig, None, [
        f"model.path={small_world / 'model'}", "model.system_prompt=",
        f"data.prompts={small_world / 'data' / 'train_prompts.jsonl'}", "sampling.backend=vllm", "prompts_per_step=2",
        "sampling.n=2", "sampling.max_new_tokens=8", "optim.lr=1e-3", "optim.warmup_steps=0", "beta=0.05",
        "max_steps=2", "log.log_every=1", "log.save_every=0", "log.progress=false", "dump_every=0",
        f"output_dir={out}"]))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    parameters = len(list(AutoModelForCausalLM.from_pretrained(small_world / "model").named_parameters()))
    assert pushes == [parameters, parameters] and len(sleeps) == 2  # every weight, before each step's sampling
    for r in rows:
        assert r["rollout/length_mean"] > 0
        assert r["update/ratio"] == pytest.approx(1.0, abs=1e-6)  # one pass: the old policy is the first pass's
    assert (out / "final" / "config.json").exists()


def test_the_stand_in_is_gone_after_its_tests():
    assert not vllm_available() and "vllm" not in sys.modules
