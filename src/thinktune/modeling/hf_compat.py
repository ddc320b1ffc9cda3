"""What differs between the transformers releases thinktune runs on, in one place.

thinktune supports transformers 5.16.1 and up: vLLM, which the ``[vllm]`` extra installs beside it, caps
transformers below the newest release (vLLM 0.33 takes >=5.16.1,<5.21 and 0.34 >=5.16.1,<5.23), while a
plain install gets the newest. Two of the APIs thinktune calls were renamed inside that range:

- 5.24 renamed the KV cache of the causal LMs' forward, argument and output field alike, from
  ``past_key_values`` to ``cache``. ``forward_with_cache`` passes it under the installed name and
  ``output_cache`` reads it back.
- 5.23 added ``activation_checkpointing_enable``; ``gradient_checkpointing_enable``, the only name before,
  warns from then on (to be removed in v6). ``enable_activation_checkpointing`` calls the installed one.

Which names apply is decided once, from the installed version, when this module is imported. Everything else
thinktune uses (``DynamicCache(config=...)`` and ``DynamicCache(ddp_cache_data=...)``, ``Cache.layers``,
``batch_select_indices``, ``logits_to_keep``, ``from_pretrained(dtype=...)``) is the same across the range,
which ``make test-lowest`` checks by running the suite on the lowest release.
"""

from __future__ import annotations

import torch
import transformers
from packaging.version import Version
from transformers import Cache
from transformers.utils import ModelOutput

TRANSFORMERS_VERSION = Version(transformers.__version__)
# The forward's cache argument and the output field holding it (the same name in either release).
CACHE_KEY = "cache" if TRANSFORMERS_VERSION >= Version("5.24") else "past_key_values"
_ACTIVATION_CHECKPOINTING = TRANSFORMERS_VERSION >= Version("5.23")


def forward_with_cache(model: torch.nn.Module, cache: Cache | None, **inputs) -> tuple[torch.Tensor, Cache]:
    """``model(**inputs)`` on the KV cache ``cache``, under whichever name the installed transformers uses.

    Args:
        model: an HF causal LM (or a wrapper, such as peft's, that passes keyword arguments through).
        cache: the keys and values of the columns before ``inputs``; the forward appends this call's to it.
            None: the model starts a ``DynamicCache`` of its own, returned here.
        **inputs: the other forward arguments (``input_ids`` [B, T], ``attention_mask``, ``position_ids``,
            ``logits_to_keep``, ...).

    Returns:
        (logits [B, T or logits_to_keep, V], the cache, holding every column so far).
    """
    out = model(**inputs, **{CACHE_KEY: cache}, use_cache=True)
    return out.logits, output_cache(out)


def output_cache(out: ModelOutput) -> Cache | None:
    """The KV cache a forward returned (None where it built none, as with ``use_cache=False``)."""
    return getattr(out, CACHE_KEY)


def enable_activation_checkpointing(model: torch.nn.Module, kwargs: dict) -> None:
    """Recompute each decoder block's activations in the backward pass (``torch.utils.checkpoint`` with
    ``kwargs``), through the installed transformers' name for it, so that no deprecation warning is printed."""
    if _ACTIVATION_CHECKPOINTING:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
