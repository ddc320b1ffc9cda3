"""LoRA through peft, for every training stage: load the trainable policy, export it merged.

``model.lora.r > 0`` freezes the base weights and trains low-rank adapters (``get_peft_model``). A
checkpoint then holds two things: the merged model at its top level (``merge_and_unload``), so that it
loads with plain ``AutoModelForCausalLM.from_pretrained`` like every other checkpoint, and the adapter
alone in ``adapter/`` (``log.lora_merged_checkpoints=false``: step-N checkpoints hold the adapter only;
the final export is always merged). A resumed run loads the *starting* base weights again and this adapter on top, not
the merged weights, so it continues exactly where it stopped (merging, then training an adapter on the
merged weights, would be a different model).

For DPO and GRPO the reference is the base itself: ``ReferenceView`` runs the policy with its adapters
switched off (``disable_adapter``), so no second copy of the weights is loaded. That is the same model as
the frozen starting point, since a fresh adapter's B matrix is zero.

GRPO samples from the peft model's inner HF model with its adapters active. On CPU the lean decoder folds
each adapter into the weight copies it makes anyway (``rollout.lean.effective_weight``); on GPU, where it
reads the model's own weights, folding would need a second copy, so there it applies each adapter as the step
runs (``rollout.lean.low_rank_terms``), inside its CUDA graphs.

Caveat: when the tokenizer adds the chat-format tokens to a base that lacks them, the embedding grows
with rows drawn from the global RNG; they are not adapter weights, so they are frozen, and a resume
redraws the same rows only because every run seeds that RNG the same way before loading (under torchrun,
rank 0's rows are broadcast to every rank).
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from thinktune.config import LoRAConfig, ModelConfig
from thinktune.errors import ConfigError
from thinktune.modeling import models

ADAPTER_DIR = "adapter"


def enabled(model: torch.nn.Module) -> bool:
    return isinstance(model, PeftModel)


def peft_config(cfg: LoRAConfig) -> LoraConfig:
    targets = "all-linear" if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                      task_type="CAUSAL_LM")


def load_policy(cfg: ModelConfig, resume_from: Path | None, tokenizer: PreTrainedTokenizerBase,
                device: torch.device) -> torch.nn.Module:
    """The model a recipe trains, in fp32 (master weights), in train mode.

    Without LoRA: the weights of the last checkpoint, or of ``cfg.path`` at the start. With LoRA: the
    starting base from ``cfg.path`` with the checkpoint's adapter (trainable), or a fresh adapter.
    """
    if not cfg.lora.r:
        start = ModelConfig(**{**vars(cfg), "path": str(resume_from or cfg.path)})
        return models.load_model(start, tokenizer, device, torch.float32).train()
    base = models.load_model(cfg, tokenizer, device, torch.float32)
    if resume_from is not None:
        model = PeftModel.from_pretrained(base, Path(resume_from) / ADAPTER_DIR, is_trainable=True)
    else:
        try:
            model = get_peft_model(base, peft_config(cfg.lora))
        except ValueError as e:  # peft's message names the modules it could not find
            raise ConfigError(f"model.lora.target_modules={cfg.lora.target_modules}: {e}") from None
    return model.train()


def merged(model: PeftModel, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A plain HF model with the adapter merged in, built on the CPU from a full (gathered) ``state``.

    The skeleton is made on the meta device and takes ``state``'s tensors as they are (``assign``), so
    merging costs no second initialisation of a large model. The weights the merge adds into are cloned
    first: on one process ``state`` holds the live training tensors, and merging into them in place would
    change the base that training goes on from.
    """
    with torch.device("meta"):
        skeleton = get_peft_model(AutoModelForCausalLM.from_config(model.get_base_model().config),
                                  model.peft_config["default"])
    state = {k: v.clone() if ".base_layer." in k else v for k, v in state.items()}
    skeleton.load_state_dict(state, assign=True)
    plain = skeleton.merge_and_unload()
    missing = [n for n, p in plain.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"merging the adapter left parameters without values: {missing[:3]}")
    # Non-persistent buffers (rotary frequencies) are in no state dict: take them from the live model, so
    # the merged model runs as well as saves.
    live = dict(model.get_base_model().named_buffers())
    for name, buf in plain.named_buffers():
        if buf.is_meta:
            owner, _, attr = name.rpartition(".")
            plain.get_submodule(owner).register_buffer(attr, live[name].detach().cpu(), persistent=False)
    plain.generation_config = model.get_base_model().generation_config
    return plain


def decodable(model: torch.nn.Module) -> torch.nn.Module:
    """What the rollout engine samples from: the HF model inside a peft wrapper (adapters active)."""
    return model.get_base_model() if enabled(model) else model


def save_adapter(model: PeftModel, state: dict[str, torch.Tensor], path: Path) -> None:
    """Write only the adapter weights (peft's format) to ``path / adapter``."""
    model.save_pretrained(Path(path) / ADAPTER_DIR, state_dict=state)


class ReferenceView(torch.nn.Module):
    """The frozen reference of a LoRA policy: the same module with its adapters disabled for the call."""

    def __init__(self, policy: PeftModel) -> None:
        super().__init__()
        self.policy = [policy]  # a list, so the policy's parameters are not registered twice

    def forward(self, **kwargs):
        policy = self.policy[0]
        was_training = policy.training
        policy.eval()  # a frozen reference has no dropout, whatever mode the policy is trained in
        try:
            with torch.no_grad(), policy.disable_adapter():
                return policy(**kwargs)
        finally:
            policy.train(was_training)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.policy[0].get_input_embeddings()

    def get_base_model(self) -> torch.nn.Module:
        """The transformers model under the adapters, as peft's own ``get_base_model`` (``logprobs`` swaps its
        head for one that scores inside the forward)."""
        return self.policy[0].get_base_model()


def is_lora_linear(module: torch.nn.Module) -> bool:
    """A peft LoRA linear (``peft.tuners.lora.layer.Linear``): a base linear plus low-rank adapters."""
    return hasattr(module, "base_layer") and hasattr(module, "get_delta_weight") and hasattr(module, "lora_A")


def fold_reason(module: torch.nn.Module) -> str | None:
    """Why a LoRA linear's adapters cannot be read as a plain low-rank delta (None: they can)."""
    if type(module.base_layer) is not torch.nn.Linear:
        return f"LoRA over a {type(module.base_layer).__name__}, not a plain nn.Linear"
    active = [a for a in module.active_adapters if a in module.lora_A]
    variants = getattr(module, "lora_variant", {})  # DoRA and the like: not a plain low-rank delta
    if any(module.use_dora.get(a) or getattr(module, "lora_bias", {}).get(a) or a in variants for a in active):
        return "a LoRA variant (DoRA or a LoRA bias), not a plain low-rank delta"
    if getattr(module, "fan_in_fan_out", False):  # a base stored [in, out] (GPT-2's Conv1D layout)
        return "a LoRA linear with fan_in_fan_out"
    return None


def active_adapters(module: torch.nn.Module) -> list[str]:
    """The adapters a LoRA linear applies in its forward: none once merged into the base, or disabled."""
    if module.merged or module.disable_adapters:
        return []
    return [name for name in module.active_adapters if name in module.lora_A]


def linears_reason(model: torch.nn.Module) -> str | None:
    """Why thinktune's own forwards (the lean decoder, the unpadded training forward) cannot read ``model``'s
    linears (None: they can): each projection and the head must be a plain ``nn.Linear`` or a peft LoRA linear
    whose adapters are a plain low-rank delta."""
    linears = [("lm_head", model.get_output_embeddings())]
    linears += [(f"layers.{i}.{name}", module) for i, layer in enumerate(model.model.layers)
                for name, module in layer.named_modules() if name.endswith("_proj")]
    for name, module in linears:
        if type(module) is torch.nn.Linear:
            continue
        if not is_lora_linear(module):
            return f"{name} is a {type(module).__name__}, not a plain nn.Linear or a peft LoRA linear"
        if reason := fold_reason(module):
            return f"{name}: {reason}"
    return None
