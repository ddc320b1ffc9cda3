"""Rollouts as a service: one ``Sampler`` protocol, two backends, one factory that picks between them.

Every stage that samples (grpo, evaluate, dpo-pairs, select, select-prompts, serve) asks ``make_sampler`` for a
``Sampler`` from its ``sampling:`` block and never names a backend class:

    sampler = make_sampler(cfg.sampling, cfg.model, tokenizer, rt, model=policy)  # before sharding the policy
    for step in ...:
        sampler.sync_weights(policy)         # the policy's current weights (under FSDP: gathered)
        groups = sampler.sample(prompts, cfg.sampling.params(temperature=t), seed=...)
        sampler.release()                    # the update gets the memory (vLLM sleeps)
        ...update...

Backends: ``"thinktune"`` is ``RolloutEngine`` (``sampler.py``: our decode loop on the lean decoder or HF's
forward, any device); ``"vllm"`` is ``VLLMSampler`` (``vllm_backend.py``: CUDA, ``pip install
'thinktune[vllm]'``). ``"auto"`` takes vLLM where it is installed and the run is on a GPU.
"""

from __future__ import annotations

from typing import Protocol

import torch
from transformers import PreTrainedTokenizerBase

from thinktune.config import ModelConfig, SamplingConfig
from thinktune.errors import ConfigError
from thinktune.modeling import models
from thinktune.rollout import weights
from thinktune.rollout.sampler import Completion, OnComplete, RolloutEngine, SamplingParams
from thinktune.rollout.vllm_backend import check_vocab, engine_for, resolve_backend
from thinktune.runtime import Runtime

VLLM_MAX_TEMPERATURE = 2.0  # vLLM 0.33 and 0.34 reject a higher one at the first request, not at start


class Sampler(Protocol):
    """What every stage asks of a rollout backend."""

    backend: str  # "thinktune" | "vllm", for logs

    def sample(self, prompts: list[list[int]], params: SamplingParams, seed: int = 0, batch_size: int | None = None,
               show_progress: bool = True, on_complete: OnComplete | None = None) -> list[list[Completion]]:
        """``params.n`` completions per tokenized prompt: ``out[p][j]`` is completion ``j`` of prompt ``p``;
        ``on_complete(p, j, completion)`` is called as each one ends (or, where a backend cannot, once all have)."""
        ...

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Sample from ``policy``'s current weights from now on (every rank calls it together under FSDP)."""
        ...

    def release(self) -> None:
        """Give back the memory the sampler can spare while another phase (the update) runs."""
        ...

    def resume(self) -> None:
        """Take back what ``release`` gave (``sync_weights`` does too)."""
        ...


def check_sampling(cfg: SamplingConfig, model_cfg: ModelConfig) -> str:
    """The backend ``make_sampler`` will build ("thinktune" | "vllm"), checked before any model is loaded.

    Raises:
        ConfigError: vLLM asked for where it cannot run, with LoRA adapters (the engine would need the
            merged weights pushed every step, which thinktune does not do yet), or at a temperature it refuses.
    """
    backend = resolve_backend(cfg.backend)
    if backend == "vllm" and model_cfg.lora.r:
        raise ConfigError("model.lora.r > 0 with vLLM rollouts: the engine would need the merged weights pushed "
                          "every step, which thinktune does not do yet; use sampling.backend=thinktune")
    if backend == "vllm" and not cfg.greedy and cfg.temperature > VLLM_MAX_TEMPERATURE:
        raise ConfigError(f"sampling.temperature={cfg.temperature}: vLLM refuses temperatures above "
                          f"{VLLM_MAX_TEMPERATURE}; lower it or use sampling.backend=thinktune")
    return backend


def make_sampler(cfg: SamplingConfig, model_cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, rt: Runtime,
                 model: torch.nn.Module | None = None, longest_prompt: int = 0) -> Sampler:
    """The sampler ``cfg.backend`` names (``"auto"``: vLLM where it is installed and ``rt`` is on CUDA).

    Args:
        cfg: the stage's ``sampling`` block.
        model_cfg: the model (vLLM loads ``model_cfg.path`` itself).
        tokenizer: its tokenizer, as the stage renders prompts with it.
        rt: the run's device, dtype and ranks.
        model: a model already in memory, such as the policy GRPO trains (before sharding it). thinktune's
            sampler reads it (under FSDP a plain copy, refreshed by ``sync_weights``); vLLM loads
            ``model_cfg.path`` and takes this model's weights at every ``sync_weights``. None: the sampler
            loads ``model_cfg.path`` itself.
        longest_prompt: tokens in the longest prompt, so vLLM's context is sized to prompt + ``max_new_tokens``
            (0: the model's own).

    Raises:
        ConfigError: vLLM asked for where it cannot run, with a LoRA policy, or with a vocabulary the saved model
            lacks.
    """
    if check_sampling(cfg, model_cfg) == "vllm":
        if model is not None:  # its weights will be pushed: they must match the saved shapes exactly
            check_vocab(model_cfg.path, model.get_input_embeddings().num_embeddings, exact=True)
        else:
            check_vocab(model_cfg.path, len(tokenizer), exact=False)
        max_len = longest_prompt + cfg.max_new_tokens if longest_prompt else None
        return engine_for(model_cfg.path, tokenizer, model_cfg.dtype, cfg.vllm.gpu_memory_utilization, max_len,
                          sleep_mode=cfg.vllm.sleep and model is not None)
    if model is None:
        model = models.load_model(model_cfg, tokenizer, rt.device, rt.dtype)
    return RolloutEngine(weights.rollout_copy(model, rt), tokenizer, decoder=cfg.decoder, batch_size=cfg.batch_size)
