"""thinktune.modeling.hf_compat on whichever transformers is installed (`make test-lowest` runs it on the lowest)."""

import inspect
import warnings

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from thinktune.modeling import hf_compat


@pytest.fixture(scope="module")
def tiny_llama():
    config = LlamaConfig(vocab_size=37, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).float().eval()


def _ids(batch: int, width: int) -> torch.Tensor:
    return torch.randint(0, 37, (batch, width), generator=torch.Generator().manual_seed(1))  # [B, T]


def test_the_cache_key_is_the_installed_forwards_argument_and_output_field(tiny_llama):
    # The version decides the name; the model's own signature and output confirm it.
    assert hf_compat.CACHE_KEY in inspect.signature(LlamaForCausalLM.forward).parameters
    out = tiny_llama(input_ids=_ids(1, 3), use_cache=True)
    assert isinstance(hf_compat.output_cache(out), DynamicCache)
    assert hf_compat.output_cache(tiny_llama(input_ids=_ids(1, 3), use_cache=False)) is None


@torch.no_grad()
def test_prefill_and_decode_on_the_cache_give_the_logits_of_one_full_forward(tiny_llama):
    ids = _ids(2, 7)  # [B, T]
    full = tiny_llama(input_ids=ids, use_cache=False).logits  # [B, T, V]
    cache = DynamicCache(config=tiny_llama.config)
    logits, returned = hf_compat.forward_with_cache(tiny_llama, cache, input_ids=ids[:, :4])  # [B, 4, V]
    assert returned is cache
    steps = [logits]
    for t in range(4, 7):
        logits, _ = hf_compat.forward_with_cache(tiny_llama, cache, input_ids=ids[:, t:t + 1])  # [B, 1, V]
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert [layer.keys.shape[2] for layer in cache.layers] == [7, 7]


@torch.no_grad()
def test_without_a_cache_the_model_starts_one_and_forwards_go_on_from_it(tiny_llama):
    ids = _ids(2, 6)  # [B, T]
    full = tiny_llama(input_ids=ids, use_cache=False).logits  # [B, T, V]
    last, cache = hf_compat.forward_with_cache(tiny_llama, None, input_ids=ids[:, :5], logits_to_keep=1)
    torch.testing.assert_close(last, full[:, 4:5], atol=1e-5, rtol=1e-5)  # [B, 1, V]
    cache.batch_select_indices(torch.tensor([1]))  # keep row 1 only, as the HF decoder drops finished rows
    after, _ = hf_compat.forward_with_cache(tiny_llama, cache, input_ids=ids[1:, 5:])  # [1, 1, V]
    torch.testing.assert_close(after, full[1:, 5:], atol=1e-5, rtol=1e-5)


def test_activation_checkpointing_is_enabled_without_a_deprecation_warning():
    config = LlamaConfig(vocab_size=37, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config).train()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        hf_compat.enable_activation_checkpointing(model, {"use_reentrant": False})
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    model(input_ids=_ids(1, 5), labels=_ids(1, 5), use_cache=False).loss.backward()
    assert model.model.embed_tokens.weight.grad is not None
