"""Models and tokenizers: load any HF causal LM, give it the Phi-4-reasoning chat format, build tiny ones.

The Phi-4-reasoning format (RECIPE.md section 1.2)::

    <|im_start|>system<|im_sep|>{system}<|im_end|><|im_start|>user<|im_sep|>{question}<|im_end|>
    <|im_start|>assistant<|im_sep|><think>{reasoning}</think>{solution with \\boxed{answer}}<|im_end|>

``<|im_end|>`` is the end-of-turn and end-of-sequence token. ``<think>`` and ``</think>`` are single special
tokens (Phi-4 repurposed two unused placeholders; for other models we add them and grow the embedding).
The chat template is stored in the tokenizer, so every checkpoint saved with it works with
``apply_chat_template`` in plain transformers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from thinktune.config import ModelConfig
from thinktune.errors import ConfigError, UserError

IM_START, IM_SEP, IM_END = "<|im_start|>", "<|im_sep|>", "<|im_end|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
PAD = "<|dummy_pad|>"
FORMAT_TOKENS = [IM_START, IM_SEP, IM_END, THINK_OPEN, THINK_CLOSE]

# The Phi-4-reasoning chat template (S9 in RECIPE.md), with no default system message: the recipes add
# the configured system prompt themselves, so the template renders exactly the messages it is given.
PHI4_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '<|im_sep|>' + message['content'] + '<|im_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}"
)

# Tiny architectures for the embedded demo and tests: the Phi-4 family's Phi3 by default.
ARCHITECTURES = {"phi3": "Phi3Config", "qwen2": "Qwen2Config", "llama": "LlamaConfig", "qwen3": "Qwen3Config"}


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """Load a tokenizer and make sure it speaks the configured chat format."""
    _check_path(cfg.path)
    try:
        tok = AutoTokenizer.from_pretrained(cfg.path, trust_remote_code=cfg.trust_remote_code)
    except OSError as e:
        raise _not_found(cfg.path, e) from None
    if cfg.chat_template == "phi4":
        add_phi4_format(tok)
    elif tok.chat_template is None:
        raise ConfigError(f"{cfg.path} has no chat template; use model.chat_template=phi4")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, device: torch.device,
               dtype: torch.dtype) -> torch.nn.Module:
    """Load a causal LM, grow its embedding if the tokenizer gained tokens, and move it to ``device``."""
    _check_path(cfg.path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            cfg.path, dtype=dtype, attn_implementation=cfg.attn_implementation,
            trust_remote_code=cfg.trust_remote_code,
        )
    except OSError as e:
        raise _not_found(cfg.path, e) from None
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    sync_special_tokens(model, tokenizer)
    return model.to(device)


def _check_path(path: str) -> None:
    if not path:
        raise ConfigError("model.path is empty; set it to a model directory or a hub id (model.path=DIR)")
    looks_local = path.startswith((".", "/", "~")) or Path(path).exists() or path.count("/") != 1
    if looks_local and not Path(path).expanduser().is_dir():
        raise UserError(f"model path {path!r} does not exist; give a directory with config.json or a hub id")


def _not_found(path: str, error: OSError) -> UserError:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return UserError(f"model path {path!r} is neither a model directory nor a reachable hub id ({first})")


def add_phi4_format(tok: PreTrainedTokenizerBase) -> None:
    """Add the Phi-4-reasoning special tokens (only those missing) and set its chat template and EOS."""
    missing = [t for t in FORMAT_TOKENS if t not in tok.get_vocab()]
    if missing:
        tok.add_tokens(missing, special_tokens=True)  # the same call in transformers 4.x and 5.x
    tok.chat_template = PHI4_CHAT_TEMPLATE
    tok.eos_token = IM_END


def sync_special_tokens(model: torch.nn.Module, tok: PreTrainedTokenizerBase) -> None:
    """Keep the model's config and generation config in step with the tokenizer's EOS and PAD. The generation
    config keeps the end ids it already lists after the tokenizer's EOS: a chat model may end a turn with
    either of two (``<|im_end|>``, ``<|endoftext|>``), and sampling, ``generate`` and vLLM stop at each."""
    eos, pad = tok.convert_tokens_to_ids(tok.eos_token), tok.pad_token_id
    model.config.eos_token_id = eos
    model.config.pad_token_id = pad
    if model.generation_config is not None:
        listed = model.generation_config.eos_token_id
        ids = list(dict.fromkeys([eos, *([listed] if isinstance(listed, int) else listed or [])]))
        model.generation_config.eos_token_id = ids[0] if len(ids) == 1 else ids
        model.generation_config.pad_token_id = pad


# --------------------------------------------------------------------------------------------------------
# Tiny models for the embedded world and tests


def train_char_tokenizer(texts: list[str], words: tuple[str, ...] = ("user", "assistant", "system", "\\boxed"),
                         ) -> PreTrainedTokenizerFast:
    """Train a character-level tokenizer (plus a few whole words) on ``texts`` with ``tokenizers``.

    Every character seen becomes a token, so decoding round-trips exactly; the chat-format markers are
    single special tokens. Characters never seen map to ``<unk>``.
    """
    pattern = "|".join(w.replace("\\", "\\\\") for w in words) + "|."
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    specials = [PAD, "<unk>", *FORMAT_TOKENS]
    trainer = trainers.WordLevelTrainer(special_tokens=specials, min_frequency=1)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token=PAD, eos_token=IM_END)
    fast.chat_template = PHI4_CHAT_TEMPLATE
    return fast


def build_tiny_model(arch: str, tokenizer: PreTrainedTokenizerBase, *, hidden_size: int, num_layers: int,
                     num_heads: int, num_kv_heads: int, intermediate_size: int, max_position_embeddings: int,
                     tie_word_embeddings: bool = True, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised causal LM of a real HF architecture (``ARCHITECTURES``)."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"arch {arch!r} is not known; choose one of {', '.join(ARCHITECTURES)}")
    # Qwen3's head size is its own setting (128 by default, whatever the hidden size): keep hidden / heads.
    extra = {"head_dim": hidden_size // num_heads} if arch == "qwen3" else {}
    config = AutoConfig.for_model(
        arch, **extra, vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=tie_word_embeddings,
        bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    sync_special_tokens(model, tokenizer)
    return model


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
