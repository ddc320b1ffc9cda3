"""The parts of the vLLM backend that are thinktune's own logic and run without vLLM: how pushed weights are
cut into chunks, and the backend choice. The engine itself is exercised in tests/integration/test_*vllm*.py
where vLLM and a GPU exist."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from thinktune.errors import ConfigError
from thinktune.rollout.vllm_backend import (
    VLLMSampler,
    finish_reason,
    request_seed,
    resolve_backend,
    vllm_available,
)


class RecordingLLM:
    """Stands in for ``vllm.LLM`` to record what ``push_weights`` sends it (the tensors loaded, the calls)."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, torch.Tensor]]] = []
        self.resets = 0

    def collective_rpc(self, fn, args):
        (chunk,) = args
        self.calls.append(list(chunk))
        return [len(chunk)]

    def reset_prefix_cache(self) -> bool:
        self.resets += 1
        return self.resets_succeed

    resets_succeed = True


def test_pushed_weights_go_in_bounded_chunks_and_all_arrive():
    engine = object.__new__(VLLMSampler)  # no vLLM here: only the chunking is under test
    engine.llm = RecordingLLM()
    weights = [(f"w{i}", torch.zeros(256)) for i in range(10)]  # 1 KiB each
    consumed = []

    def lazily():  # a generator, as distributed.full_parameters is
        for name, t in weights:
            consumed.append(name)
            yield name, t

    assert engine.push_weights(lazily(), chunk_bytes=3 * 1024) == 10
    assert [len(c) for c in engine.llm.calls] == [3, 3, 3, 1]  # a chunk closes once it reaches 3 KiB
    assert [n for c in engine.llm.calls for n, _ in c] == consumed == [n for n, _ in weights]
    assert engine.llm.resets == 1  # the prefix cache is dropped once, after every weight is in
    engine.llm.resets_succeed = False
    with pytest.raises(RuntimeError, match="prefix cache"):
        engine.push_weights(iter(weights))


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


@pytest.mark.skipif(vllm_available() and torch.cuda.is_available(), reason="vLLM can run here")
def test_backend_choice_without_vllm():
    assert resolve_backend("auto") == "thinktune" and resolve_backend("thinktune") == "thinktune"
    with pytest.raises(ConfigError, match="use rollout_backend=thinktune"):
        resolve_backend("vllm")
    with pytest.raises(ConfigError, match="choose one of auto, thinktune, vllm"):
        resolve_backend("sglang")


@pytest.mark.parametrize("verb, data", [("grpo", "data.prompts"), ("evaluate", "data.prompts"), ("select", "prompts"),
                                        ("select-prompts", "prompts"), ("dpo-pairs", "prompts")])
def test_every_sampling_verb_refuses_an_unknown_backend_when_its_config_loads(verb, data):
    from thinktune.config import load_config
    from thinktune.recipes.pipeline import recipe

    _, config_class = recipe(verb)
    with pytest.raises(ConfigError, match="rollout_backend='vlm'"):
        load_config(config_class, None, ["model.path=m", f"{data}=p.jsonl", "rollout_backend=vlm"])
