"""Tests for thinktune.modeling.models and checkpoint saving: plain-transformers round trips, tiny architectures,
path errors, the Phi-4 format tokens, and what another harness reads from a checkpoint (docs/interop.md)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from thinktune.config import ModelConfig
from thinktune.data.chat import render_prompt
from thinktune.errors import ConfigError, UserError
from thinktune.modeling.chat_format import PHI4_CHAT_TEMPLATE, PHI4_TOKENS, apply
from thinktune.modeling.models import (
    PORTABLE_TOKENIZER_CLASS,
    build_tiny_model,
    load_model,
    load_tokenizer,
    portable_tokenizer_config,
)
from thinktune.recipes.evaluate import EvalConfig, EvalDataConfig
from thinktune.serving.serve import ServeConfig
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
# What another harness (lm-eval, vLLM, a server, transformers 4.x) reads from a checkpoint


def test_a_saved_checkpoint_keeps_think_tags_under_skip_special_tokens_decoding(tiny_model_dir: Path) -> None:
    """lm-eval's hf backend decodes with skip_special_tokens=True and splits at think_end_token=</think>."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok("<think>2+3=5</think>\\boxed{5}<|im_end|>", add_special_tokens=False).input_ids
    think = [tok.convert_tokens_to_ids(t) for t in ("<think>", "</think>")]
    assert ids[0] == think[0] and ids.count(think[1]) == 1  # still one id each
    assert tok.decode(ids, skip_special_tokens=True) == "<think>2+3=5</think>\\boxed{5}"


def test_a_saved_checkpoint_names_a_tokenizer_class_transformers_4_and_5_both_load(tiny_model_dir: Path,
                                                                                  char_tokenizer) -> None:
    """transformers 5 writes TokenizersBackend, a class 4.x does not have (tests/integration/test_interop.py loads
    the checkpoint under 4.x itself)."""
    config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == PORTABLE_TOKENIZER_CLASS == "PreTrainedTokenizerFast"
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tok.get_vocab() == char_tokenizer.get_vocab() and tok.eos_token == "<|im_end|>"


def test_portable_tokenizer_config_turns_a_list_of_extra_special_tokens_into_additional_ones(tmp_path: Path,
                                                                                            char_tokenizer) -> None:
    char_tokenizer.save_pretrained(tmp_path)
    path = tmp_path / "tokenizer_config.json"
    config = json.loads(path.read_text()) | {"extra_special_tokens": ["<|im_sep|>"], "tokenizer_class": "Qwen2Tokenizer"}
    path.write_text(json.dumps(config))
    portable_tokenizer_config(tmp_path)
    written = json.loads(path.read_text())
    assert written["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "extra_special_tokens" not in written and written["additional_special_tokens"] == ["<|im_sep|>"]
    assert AutoTokenizer.from_pretrained(tmp_path).get_vocab() == char_tokenizer.get_vocab()


QUESTION = [{"role": "user", "content": "What is 2+3?"}]


@pytest.mark.parametrize(("choice", "system_prompt", "rendered"), [
    ("auto", "", ""), ("auto", "Be brief.", "Be brief."), ("phi4", None, "You are Phi, a language model"),
    ("phi4", "Be brief.", "Be brief.")])
def test_the_saved_template_renders_the_training_prompt_exactly_as_evaluate_and_serve_do(
        tmp_path: Path, char_tokenizer, choice: str, system_prompt: str | None, rendered: str) -> None:
    """A checkpoint trained with model.chat_template=CHOICE and model.system_prompt=PROMPT: a harness's plain
    apply_chat_template on the saved tokenizer, thinktune's evaluate and serve with their default model settings,
    and either of them with chat_template=phi4, render the same prompt tokens, with the training system prompt."""
    trained = copy.deepcopy(char_tokenizer)
    apply(trained, choice, system_prompt, "train")  # what sft's load_chat does
    save_pretrained_atomic(build_tiny_model("phi3", trained, **SMALL), trained, tmp_path / "ckpt")
    path = str(tmp_path / "ckpt")
    harness_tok = AutoTokenizer.from_pretrained(path)
    harness = harness_tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert harness.startswith(f"<|im_start|>system<|im_sep|>{rendered}" if rendered else "<|im_start|>user")
    settings = {"evaluate": EvalConfig(model=ModelConfig(path=path), data=EvalDataConfig(prompts="p.jsonl")).model,
                "serve": ServeConfig(model=ModelConfig(path=path)).model,
                "phi4": ModelConfig(path=path, chat_template="phi4")}
    for name, cfg in settings.items():
        tok = load_tokenizer(cfg)
        assert tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True) == harness, name
        assert render_prompt(tok, QUESTION) == harness_tok(harness, add_special_tokens=False).input_ids, name


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
    assert tok.chat_template.endswith(PHI4_CHAT_TEMPLATE) and tok.eos_token == "<|im_end|>"
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
    save_pretrained_atomic(build_tiny_model("phi3", bare, **SMALL), bare, tmp_path / "t")
    with pytest.raises(ConfigError, match="has no chat template"):
        load_tokenizer(ModelConfig(path=str(tmp_path / "t"), chat_template="model"))
