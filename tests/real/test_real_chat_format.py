"""SmolLM2's own chat format under thinktune (``model.chat_template=auto``), the rows its two new tokens get, and
what another harness reads from a SmolLM2 checkpoint's tokenizer (docs/interop.md).

The reference for "its own" is the tokenizer as plain transformers loads it from the converted directory:
thinktune may add ``<think>``/``</think>`` and a system prompt, and must leave everything else as it was.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from smollm2_data import CUSTOM_SYSTEM, sft_rows
from transformers import AutoTokenizer

from thinktune.config import ModelConfig
from thinktune.data.chat import IGNORE_INDEX, render_prompt, render_sft
from thinktune.modeling import models
from thinktune.modeling.chat_format import IM_END, THINK_CLOSE, THINK_OPEN
from thinktune.train.checkpoint import save_pretrained_atomic

pytestmark = pytest.mark.real

QUESTION = [{"role": "user", "content": "816+948"}]


@pytest.fixture(scope="module")
def plain(smollm2_dir):
    """The tokenizer as transformers alone loads it: SmolLM2's template, no think tokens."""
    return AutoTokenizer.from_pretrained(smollm2_dir)


def render(tok, messages=QUESTION) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_auto_keeps_smollm2s_chatml_layout_and_its_default_system_prompt(smollm2, plain):
    tok, _, fmt = smollm2
    assert fmt.name == "model"  # auto chose the model's own template
    text = render(tok)
    assert text == render(plain)  # exactly SmolLM2's own rendering, its default system turn included
    assert text.startswith("<|im_start|>system\n") and "SmolLM" in text.split(IM_END)[0]
    assert text.endswith("<|im_start|>user\n816+948<|im_end|>\n<|im_start|>assistant\n")
    assert "<|im_sep|>" not in text and "<|im_sep|>" not in tok.chat_template  # no Phi-4 markup leaked in
    # The turn's end, read off the template, is the EOS of the tokenizer and first in the generation config.
    assert fmt.end_of_turn == tok.eos_token == IM_END
    _, model, _ = smollm2
    im_end = tok.convert_tokens_to_ids(IM_END)
    listed = model.generation_config.eos_token_id
    assert (listed if isinstance(listed, int) else listed[0]) == im_end == model.config.eos_token_id


def test_think_tags_are_single_new_tokens(smollm2, plain):
    tok, _, fmt = smollm2
    assert fmt.added_tokens == (THINK_OPEN, THINK_CLOSE)
    assert THINK_OPEN not in plain.get_vocab()  # new to SmolLM2, so the two ids come after its vocabulary
    ids = [tok.convert_tokens_to_ids(t) for t in (THINK_OPEN, THINK_CLOSE)]
    assert ids == [len(plain), len(plain) + 1] and len(tok) == len(plain) + 2
    encoded = tok("<think>6+8=14</think>\\boxed{14}", add_special_tokens=False).input_ids
    assert encoded[0] == ids[0] and encoded.count(ids[1]) == 1
    assert encoded[1:encoded.index(ids[1])] == plain("6+8=14", add_special_tokens=False).input_ids
    # Plain SmolLM2 spells the tag out in several pieces.
    assert len(plain(THINK_OPEN, add_special_tokens=False).input_ids) > 1


def test_a_set_system_prompt_replaces_the_default_one(smollm2_dir, smollm2):
    tok = models.load_tokenizer(ModelConfig(path=str(smollm2_dir), system_prompt=CUSTOM_SYSTEM))
    default_text = render(smollm2[0])
    default_system = default_text.split(IM_END)[0]  # "<|im_start|>system\nYou are ... SmolLM ..."
    text = render(tok)
    assert text.startswith(f"<|im_start|>system\n{CUSTOM_SYSTEM}<|im_end|>\n<|im_start|>user\n816+948")
    assert default_system not in text and text.count("<|im_start|>system") == 1
    # Everything after the system turn is SmolLM2's layout, unchanged.
    assert text.split(IM_END, 1)[1] == default_text.split(IM_END, 1)[1]
    # A conversation that brings its own system message keeps it.
    own = render(tok, [{"role": "system", "content": "Be terse."}, *QUESTION])
    assert own.startswith("<|im_start|>system\nBe terse.<|im_end|>") and CUSTOM_SYSTEM not in own


def test_sft_labels_end_at_im_end_not_the_newline_after_it(smollm2):
    tok, _, _ = smollm2
    row = sft_rows(1)[0]
    completion = row["messages"][-1]["content"]
    full = tok.apply_chat_template(row["messages"], tokenize=False)
    assert full.endswith(completion + IM_END + "\n")  # ChatML writes a newline after the turn's end
    ex = render_sft(tok, row["messages"])
    labelled = [t for t in ex.labels if t != IGNORE_INDEX]
    assert tok.decode(labelled) == completion + IM_END  # the reply and its end, nothing after it
    assert ex.labels[-1] == ex.input_ids[-1] == tok.convert_tokens_to_ids(IM_END)
    # The labels are the tail of the inputs; everything before the reply (system, user, header) is masked.
    n = len(ex.input_ids) - len(labelled)
    assert ex.input_ids[n:] == labelled and set(ex.labels[:n]) == {IGNORE_INDEX}
    assert tok.decode(ex.input_ids[:n]) == render(tok, row["messages"][:-1])


def test_new_token_rows_start_at_the_mean_and_the_head_stays_tied(smollm2_dir, smollm2):
    tok, model, _ = smollm2
    with safe_open(str(smollm2_dir / "model.safetensors"), "pt") as f:
        before = f.get_tensor("model.embed_tokens.weight")  # [V, D], as converted from the GGUF
    weight = model.get_input_embeddings().weight.detach()  # [V + 2, D]
    v = before.shape[0]
    assert weight.shape == (v + 2, before.shape[1]) and v + 2 == len(tok)
    assert torch.equal(weight[:v], before)  # the old rows are untouched
    # transformers' mean_resizing draws the new rows from N(mean, 1e-9 * covariance of the old rows): their
    # distance to the mean is about sqrt(1e-9) = 3e-5 of the old rows' spread around it. 1e-3 leaves 30x
    # room, and a default init (N(0, 0.02^2) per entry, or a copy of some old row) is nowhere near it.
    mean = before.mean(0)  # [D]
    spread = (before - mean).pow(2).sum(1).mean().sqrt()
    distance = (weight[v:] - mean).norm(dim=1)  # [2]
    assert (distance < 1e-3 * spread).all(), (distance, spread)
    # The head is still the embedding itself, so the new rows are also the new tokens' output weights.
    assert model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


# --------------------------------------------------------------------------------------------------------
# A SmolLM2 checkpoint's tokenizer, as another harness reads it


@pytest.fixture(scope="module")
def saved(smollm2_dir, tmp_path_factory) -> Path:
    """The tokenizer of a SmolLM2 run with a custom system prompt, saved as every checkpoint saves it; beside it
    SmolLM2's config (no weights: these tests read the tokenizer only)."""
    tok = models.load_tokenizer(ModelConfig(path=str(smollm2_dir), system_prompt=CUSTOM_SYSTEM))
    path = tmp_path_factory.mktemp("real_saved") / "final"
    save_pretrained_atomic(None, tok, path)
    for name in ("config.json", "generation_config.json"):
        shutil.copy2(smollm2_dir / name, path / name)
    return path


def test_a_saved_checkpoint_keeps_think_tags_under_skip_special_tokens_decoding(saved):
    tok = AutoTokenizer.from_pretrained(saved)
    ids = tok("<think>6+8=14</think>\\boxed{14}<|im_end|>", add_special_tokens=False).input_ids
    assert ids[0] == tok.convert_tokens_to_ids(THINK_OPEN) and ids.count(tok.convert_tokens_to_ids(THINK_CLOSE)) == 1
    assert tok.decode(ids, skip_special_tokens=True) == "<think>6+8=14</think>\\boxed{14}"


def test_a_saved_checkpoint_names_a_tokenizer_class_transformers_4_and_5_both_load(saved, smollm2):
    config = json.loads((saved / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    # Loaded under that class, the tokenizer encodes as thinktune's own does.
    tok, text = AutoTokenizer.from_pretrained(saved), render(smollm2[0]) + "<think>6+8=14</think>\\boxed{14}"
    assert tok(text, add_special_tokens=False).input_ids == smollm2[0](text, add_special_tokens=False).input_ids


def test_the_saved_template_renders_the_training_prompt_exactly_as_evaluate_and_serve_do(saved):
    harness_tok = AutoTokenizer.from_pretrained(saved)
    harness = render(harness_tok)
    assert harness.startswith(f"<|im_start|>system\n{CUSTOM_SYSTEM}<|im_end|>\n<|im_start|>user\n816+948")
    tok = models.load_tokenizer(ModelConfig(path=str(saved)))  # evaluate's and serve's default model settings
    assert render(tok) == harness
    assert render_prompt(tok, QUESTION) == harness_tok(harness, add_special_tokens=False).input_ids
