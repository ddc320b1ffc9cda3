"""Tests for thinktune.modeling.models and checkpoint saving: plain-transformers round trips, tiny architectures,
path errors, and the Phi-4 format tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from thinktune.config import ModelConfig
from thinktune.errors import ConfigError, UserError
from thinktune.modeling.chat_format import PHI4_CHAT_TEMPLATE, PHI4_TOKENS, apply
from thinktune.modeling.models import build_tiny_model, load_model, load_tokenizer
from thinktune.train.checkpoint import save_pretrained_atomic


def add_phi4_format(tok) -> None:
    apply(tok, "phi4", "", "test")

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "<think>2+3=5</think>\\boxed{5}"}]
SMALL = dict(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32,
             max_position_embeddings=64)


def bare_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer that already has <|im_end|> but none of the other format tokens."""
    vocab = {"<unk>": 0, "<|im_end|>": 1, "a": 2, "b": 3}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.add_special_tokens(["<|im_end|>"])  # already in the vocab: keeps id 1, and is matched whole
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<unk>", eos_token="<|im_end|>")


# --------------------------------------------------------------------------------------------------------
# Saved checkpoints load in plain transformers


def test_saved_model_loads_in_plain_transformers_with_identical_logits(tiny_model_dir: Path, tiny_phi3,
                                                                         char_tokenizer) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert type(model) is type(tiny_phi3)
    ids = torch.tensor([char_tokenizer.apply_chat_template(CONV, tokenize=True, return_dict=False)])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, tiny_phi3(input_ids=ids).logits)
    assert model.config.eos_token_id == char_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.eos_token_id == model.config.eos_token_id


def test_saved_tokenizer_loads_in_plain_transformers_with_the_same_chat_template(tiny_model_dir: Path,
                                                                                   char_tokenizer) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for gen in (False, True):
        msgs = CONV if not gen else CONV[:2]
        assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen) == \
            char_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        assert tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen, return_dict=False) == \
            char_tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen, return_dict=False)
    assert tok.eos_token == "<|im_end|>"
    assert tok.get_vocab() == char_tokenizer.get_vocab()


def test_save_pretrained_atomic_replaces_an_existing_checkpoint_and_leaves_no_temp(tmp_path: Path,
                                                                                   char_tokenizer) -> None:
    path = tmp_path / "step-1"
    first = build_tiny_model("llama", char_tokenizer, **SMALL, seed=1)
    second = build_tiny_model("llama", char_tokenizer, **SMALL, seed=2)
    save_pretrained_atomic(first, char_tokenizer, path)
    save_pretrained_atomic(second, char_tokenizer, path, extra={"step": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1"]
    loaded = AutoModelForCausalLM.from_pretrained(path)
    for a, b in zip(loaded.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.load(path / "trainer_state.pt") == {"step": 1}


# --------------------------------------------------------------------------------------------------------
# Tiny architectures


@pytest.mark.parametrize(("arch", "cls"), [("phi3", "Phi3ForCausalLM"), ("qwen2", "Qwen2ForCausalLM"),
                                           ("llama", "LlamaForCausalLM")])
def test_build_tiny_model_gives_the_architecture(char_tokenizer, arch: str, cls: str) -> None:
    model = build_tiny_model(arch, char_tokenizer, **SMALL)
    assert type(model).__name__ == cls
    assert model.config.vocab_size == len(char_tokenizer)
    assert model.config.hidden_size == 16 and model.config.num_hidden_layers == 1
    assert model.config.num_key_value_heads == 1
    assert model.config.pad_token_id == char_tokenizer.pad_token_id
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_build_tiny_model_is_deterministic_per_seed(char_tokenizer) -> None:
    a, b, c = (build_tiny_model("qwen2", char_tokenizer, **SMALL, seed=s) for s in (3, 3, 4))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(x, z) for x, z in zip(a.parameters(), c.parameters(), strict=True))


def test_build_tiny_model_rejects_an_unknown_arch(char_tokenizer) -> None:
    with pytest.raises(ConfigError, match="'gpt2'.*phi3, qwen2, llama"):
        build_tiny_model("gpt2", char_tokenizer, **SMALL)


# --------------------------------------------------------------------------------------------------------
# Loading: paths and format


@pytest.mark.parametrize("loader", ["tokenizer", "model"])
@pytest.mark.parametrize("relative", [False, True])
def test_missing_model_directory_is_a_user_error_naming_the_path(tmp_path: Path, char_tokenizer, loader: str,
                                                                 relative: bool, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = "./runs/none/model" if relative else str(tmp_path / "no" / "such" / "model")
    cfg = ModelConfig(path=path)
    with pytest.raises(UserError, match=f"model path {path!r} does not exist"):
        if loader == "tokenizer":
            load_tokenizer(cfg)
        else:
            load_model(cfg, char_tokenizer, torch.device("cpu"), torch.float32)


def test_empty_model_path_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model.path is empty"):
        load_tokenizer(ModelConfig(path=""))


def test_add_phi4_format_adds_exactly_the_missing_tokens() -> None:
    tok = bare_tokenizer()
    before = dict(tok.get_vocab())
    add_phi4_format(tok)
    vocab = tok.get_vocab()
    missing = [t for t in PHI4_TOKENS if t != "<|im_end|>"]
    assert set(vocab) - set(before) == set(missing)
    assert len(tok) == len(before) + 4
    assert vocab["<|im_end|>"] == before["<|im_end|>"] == 1  # the existing token keeps its id
    assert all(vocab[t] == before[t] for t in before)
    for t in PHI4_TOKENS:
        assert tok("a" + t + "b", add_special_tokens=False).input_ids == [2, vocab[t], 3]
    assert tok.chat_template == PHI4_CHAT_TEMPLATE and tok.eos_token == "<|im_end|>"
    add_phi4_format(tok)  # idempotent
    assert tok.get_vocab() == vocab


def test_add_phi4_format_on_a_complete_tokenizer_adds_nothing(char_tokenizer) -> None:
    n = len(char_tokenizer)
    tok = PreTrainedTokenizerFast(tokenizer_object=char_tokenizer.backend_tokenizer)
    add_phi4_format(tok)
    assert len(tok) == n


def test_load_grows_embeddings_for_added_format_tokens(tmp_path: Path) -> None:
    bare = bare_tokenizer()
    model = build_tiny_model("phi3", bare, **SMALL)
    assert model.get_input_embeddings().num_embeddings == 4
    save_pretrained_atomic(model, bare, tmp_path / "m")
    cfg = ModelConfig(path=str(tmp_path / "m"))
    tok = load_tokenizer(cfg)
    assert len(tok) == 8
    loaded = load_model(cfg, tok, torch.device("cpu"), torch.float32)
    assert loaded.get_input_embeddings().num_embeddings == 8
    assert loaded.config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>") == 1
    # The original rows are untouched by the resize.
    assert torch.equal(loaded.get_input_embeddings().weight[:4], model.get_input_embeddings().weight)


def test_load_keeps_the_generation_configs_other_end_ids_after_the_tokenizers_eos(tmp_path: Path,
                                                                                 char_tokenizer) -> None:
    """A saved generation config listing two end ids (a chat model's <|im_end|> and <|endoftext|>) keeps both
    on load, the tokenizer's EOS first; the model config takes the tokenizer's alone."""
    model = build_tiny_model("phi3", char_tokenizer, **SMALL)
    eos = char_tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.eos_token_id = [7, eos]
    save_pretrained_atomic(model, char_tokenizer, tmp_path / "m")
    cfg = ModelConfig(path=str(tmp_path / "m"), chat_template="model")
    loaded = load_model(cfg, load_tokenizer(cfg), torch.device("cpu"), torch.float32)
    assert loaded.generation_config.eos_token_id == [eos, 7]
    assert loaded.config.eos_token_id == eos


def test_model_chat_template_without_one_is_a_config_error(tmp_path: Path) -> None:
    bare = bare_tokenizer()
    bare.save_pretrained(tmp_path / "t")
    with pytest.raises(ConfigError, match="has no chat template"):
        load_tokenizer(ModelConfig(path=str(tmp_path / "t"), chat_template="model"))
