"""The parts of the vLLM backend that are thinktune's own logic and run without vLLM: how pushed weights are
cut into chunks, and the backend choice. The calls into vLLM run against a stand-in in test_vllm_glue.py; the
engine itself is exercised in tests/integration/test_*vllm*.py where vLLM and a GPU exist."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from thinktune.errors import ConfigError
from thinktune.rollout import vllm_backend
from thinktune.rollout.sampler import SamplingParams
from thinktune.rollout.vllm_backend import (
    VLLMSampler,
    _load_weights,
    _parameter_names,
    finish_reason,
    request_seed,
    resolve_backend,
)


class RecordingLLM:
    """Stands in for ``vllm.LLM`` to record what ``VLLMSampler`` asks of it: the weights loaded, in which calls,
    and every sleep, wake-up and prefix-cache reset, in order."""

    def __init__(self, parameters: int = 10) -> None:
        self.calls: list[list[tuple[str, torch.Tensor]]] = []
        self.events: list[str] = []
        self.parameters = parameters  # what the engine's model has; a load of "wK" writes parameter "pK"
        self.resets_succeed = True

    def collective_rpc(self, fn, args=()):
        if fn is _parameter_names:
            return [sorted(f"p{i}" for i in range(self.parameters))]
        assert fn is _load_weights
        (chunk,) = args
        self.calls.append(list(chunk))
        self.events.append("load")
        return [[f"p{name[1:]}" for name, _ in chunk]]

    def reset_prefix_cache(self) -> bool:
        self.events.append("reset")
        return self.resets_succeed

    def sleep(self, level: int) -> None:
        self.events.append(f"sleep{level}")

    def wake_up(self, tags: list[str]) -> None:
        self.events.append("wake:" + ",".join(tags))


def fake_engine(sleep_mode: bool = False, parameters: int = 10) -> VLLMSampler:
    engine = object.__new__(VLLMSampler)  # no vLLM here: only thinktune's side of the calls is under test
    engine.llm, engine.sleep_mode, engine.asleep, engine.stale = RecordingLLM(parameters), sleep_mode, False, False
    return engine


def test_pushed_weights_go_in_bounded_chunks_and_all_arrive():
    engine = fake_engine()
    weights = [(f"w{i}", torch.zeros(256)) for i in range(10)]  # 1 KiB each
    consumed = []

    def lazily():  # a generator, as distributed.full_parameters is
        for name, t in weights:
            consumed.append(name)
            yield name, t

    assert engine.push_weights(lazily(), chunk_bytes=3 * 1024) == 10
    assert [len(c) for c in engine.llm.calls] == [3, 3, 3, 1]  # a chunk closes once it reaches 3 KiB
    assert [n for c in engine.llm.calls for n, _ in c] == consumed == [n for n, _ in weights]
    assert engine.llm.events.count("reset") == 1  # the prefix cache is dropped once, after every weight is in
    engine.llm.resets_succeed = False
    with pytest.raises(RuntimeError, match="prefix cache"):
        engine.push_weights(iter(weights))


def test_a_sleeping_engine_wakes_weights_then_loads_then_wakes_its_cache(monkeypatch):
    """Sleep discards the weights (level 2); the next push wakes the weights' memory, loads every weight, drops
    the prefix cache and only then wakes the KV cache, so the two never need memory at once. Before each wake
    this process's garbage is collected and PyTorch's cached blocks are freed, for vLLM's cuMem pools."""
    engine = fake_engine(sleep_mode=True, parameters=4)
    monkeypatch.setattr(vllm_backend.gc, "collect", lambda: engine.llm.events.append("gc"))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: engine.llm.events.append("empty_cache"))
    weights = [(f"w{i}", torch.zeros(256)) for i in range(4)]
    engine.sleep()
    assert engine.asleep and engine.llm.events == ["sleep2"]
    with pytest.raises(RuntimeError, match="discarded by release"):
        engine.sample([[1, 2]], SamplingParams())
    assert engine.push_weights(iter(weights), chunk_bytes=2 * 1024) == 4
    assert engine.llm.events == ["sleep2", "gc", "empty_cache", "wake:weights", "load", "load", "reset",
                                 "gc", "empty_cache", "wake:kv_cache"]
    assert not engine.asleep


def test_a_push_after_sleep_must_cover_every_parameter():
    engine = fake_engine(sleep_mode=True, parameters=5)
    engine.sleep()
    with pytest.raises(RuntimeError, match=r"left 1 of the vLLM engine's 5 parameters unwritten \(p4\).*"
                                           r"push every weight, or set sampling.vllm.sleep=false"):
        engine.push_weights([(f"w{i}", torch.zeros(4)) for i in range(4)])
    # as many names as the engine has parameters, but one of them not the engine's: p4 is still missing
    with pytest.raises(RuntimeError, match=r"left 1 of .* unwritten \(p4\)"):
        engine.push_weights([(f"w{i}", torch.zeros(4)) for i in [0, 1, 2, 3, 9]])
    with pytest.raises(RuntimeError, match=r"left 4 of .* unwritten \(p1, p2, p3, p4\)"):
        engine.push_weights([("w0", torch.zeros(4))])
    many = fake_engine(sleep_mode=True, parameters=10)
    many.sleep()
    with pytest.raises(RuntimeError, match=r"left 9 of the vLLM engine's 10 parameters unwritten "
                                           r"\(p1, p2, p3, p4, p5, \.\.\.\)"):  # the first five named
        many.push_weights([("w0", torch.zeros(4))])
    awake = fake_engine(parameters=5)  # awake, a partial push is an update of some weights: allowed
    assert awake.push_weights([(f"w{i}", torch.zeros(4)) for i in range(4)]) == 4


def test_an_engine_built_without_sleep_mode_refuses_to_sleep():
    with pytest.raises(RuntimeError, match="without sleep_mode"):
        fake_engine().sleep()


def test_request_seeds_give_every_sample_its_own_stream():
    # vLLM seeds sample j of a request seed + j: no two samples of any prompt, call, rank or step may share one,
    # as GRPO's rank_seed values lie a few apart.
    n, prompts = 8, 64
    seeds = [request_seed(call, i, n) + j for call in range(6) for i in range(prompts) for j in range(n)]
    assert len(set(seeds)) == len(seeds)
    with pytest.raises(ConfigError, match="at most 4096"):
        request_seed(0, 0, 4097)


def test_finish_reasons_map_to_thinktunes():
    out = lambda reason, stop: SimpleNamespace(finish_reason=reason, stop_reason=stop)  # noqa: E731
    assert finish_reason(out("length", None)) == "length"
    assert finish_reason(out("stop", None)) == "eos"  # the EOS
    assert finish_reason(out("stop", 7)) == "eos"  # another stop token id
    assert finish_reason(out("stop", "</answer>")) == "stop"  # a stop string
    with pytest.raises(RuntimeError, match="abort"):
        finish_reason(out("abort", None))


def test_backend_choice_without_vllm_or_off_the_gpu():  # conftest keeps this test on the CPU
    assert resolve_backend("auto") == "thinktune" and resolve_backend("thinktune") == "thinktune"
    with pytest.raises(ConfigError, match="use sampling.backend=thinktune"):
        resolve_backend("vllm")
    with pytest.raises(ConfigError, match="choose one of auto, thinktune, vllm"):
        resolve_backend("sglang")


@pytest.mark.parametrize("verb, data", [("grpo", "data.prompts"), ("evaluate", "data.prompts"), ("select", "prompts"),
                                        ("select-prompts", "prompts"), ("dpo-pairs", "prompts")])
def test_every_sampling_verb_refuses_an_unknown_backend_when_its_config_loads(verb, data):
    from thinktune.config import load_config
    from thinktune.recipes.pipeline import recipe

    _, config_class = recipe(verb)
    with pytest.raises(ConfigError, match="'sampling.backend' is 'vlm'; choose one of 'auto', 'thinktune'"):
        load_config(config_class, None, ["model.path=m", f"{data}=p.jsonl", "sampling.backend=vlm"])
