"""Models and tokenizers: load any HF causal LM (a directory, a hub id or a GGUF file), give it its chat
format (``thinktune.modeling.chat_format``), build tiny ones.

A ``.gguf`` ``model.path`` is converted once into a plain HF directory in thinktune's cache
(``thinktune.modeling.gguf_cache``) and loaded from there; checkpoints are always plain safetensors.

Tokenizers are written by ``save_tokenizer``, which names ``PreTrainedTokenizerFast`` as their class:
transformers 5 writes its own class name, ``TokenizersBackend`` (or a model's, such as ``GPT2Tokenizer``),
and the first is unknown to transformers 4.x, which many vLLM and lm-eval installs still pin. Both releases
load ``PreTrainedTokenizerFast`` from ``tokenizer.json`` exactly as saved (docs/interop.md).
"""

from __future__ import annotations

import json
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

from thinktune import runtime
from thinktune.config import ModelConfig
from thinktune.errors import ConfigError, UserError
from thinktune.modeling import chat_format, gguf_cache
from thinktune.modeling.chat_format import IM_END, PHI4_CHAT_TEMPLATE, PHI4_TOKENS, THINK_TOKENS, ChatFormat

PAD = "<|dummy_pad|>"
# The tokenizer class a saved tokenizer_config.json names: transformers 4.x and 5.x both load it from
# tokenizer.json as it was saved (5.x as TokenizersBackend).
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"

# Tiny architectures for the embedded demo and tests: the Phi-4 family's Phi3 by default.
ARCHITECTURES = {"phi3": "Phi3Config", "qwen2": "Qwen2Config", "llama": "LlamaConfig", "qwen3": "Qwen3Config"}


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """Load a tokenizer in its configured chat format (see ``load_chat``)."""
    return load_chat(cfg)[0]


def load_chat(cfg: ModelConfig, quiet: bool = False) -> tuple[PreTrainedTokenizerBase, ChatFormat]:
    """Load a tokenizer, give it the configured chat format and say once which format that is.

    Returns:
        The tokenizer and what ``chat_format.apply`` made of it (added tokens, system prompt, its cost).
    """
    path = resolve_path(cfg.path)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except OSError as e:
        raise _not_found(cfg.path, e) from None
    fmt = chat_format.apply(tok, cfg.chat_template, cfg.system_prompt, cfg.path)
    if not quiet:
        runtime.print0(f"[model] {fmt.describe()}")
    return tok, fmt


def save_tokenizer(tok: PreTrainedTokenizerBase, directory: Path) -> None:
    """``tok.save_pretrained(directory)``, with a ``tokenizer_config.json`` that transformers 4.x loads too
    (``portable_tokenizer_config``)."""
    tok.save_pretrained(directory)
    portable_tokenizer_config(Path(directory))


def portable_tokenizer_config(directory: Path) -> None:
    """Rewrite ``directory/tokenizer_config.json`` so that transformers 4.x and 5.x both load the tokenizer.

    Where ``tokenizer.json`` holds the whole tokenizer, the class becomes ``PORTABLE_TOKENIZER_CLASS``; 5.x's
    list of ``extra_special_tokens`` (4.x reads that key as a dict of named tokens and fails on a list)
    becomes the ``additional_special_tokens`` both read. A directory without ``tokenizer.json`` (a
    sentencepiece-only tokenizer) is left as it is.
    """
    path = directory / "tokenizer_config.json"
    if not (directory / "tokenizer.json").is_file() or not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):
        del config["extra_special_tokens"]
        listed = config.get("additional_special_tokens") or []
        config["additional_special_tokens"] = list(dict.fromkeys([*listed, *extra]))
    path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def resolve_path(path: str) -> str:
    """``path`` as ``from_pretrained`` takes it: a GGUF file becomes its converted HF directory."""
    _check_path(path)
    if path.endswith(".gguf"):
        return str(gguf_cache.converted(Path(path).expanduser()))
    return path


def load_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, device: torch.device,
               dtype: torch.dtype) -> torch.nn.Module:
    """Load a causal LM, grow its embedding if the tokenizer gained tokens, and move it to ``device``."""
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolve_path(cfg.path), dtype=dtype, attn_implementation=cfg.attn_implementation,
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
    if path.endswith(".gguf"):
        if not Path(path).expanduser().is_file():
            raise UserError(f"model path {path!r}: no such GGUF file")
        return
    looks_local = path.startswith((".", "/", "~")) or Path(path).exists() or path.count("/") != 1
    if looks_local and not Path(path).expanduser().is_dir():
        raise UserError(f"model path {path!r} does not exist; give a directory with config.json, a .gguf file "
                        "or a hub id")
    if looks_local and not (Path(path).expanduser() / "config.json").is_file():
        found = sorted(p.name for p in Path(path).expanduser().iterdir())[:5]
        raise UserError(f"model path {path!r} is a directory but not a model: it has no config.json (it holds "
                        f"{', '.join(found) or 'nothing'}); give the directory save_pretrained wrote, e.g. a run's "
                        "final/")


def _not_found(path: str, error: OSError) -> UserError:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return UserError(f"model path {path!r} is neither a model directory nor a reachable hub id ({first})")


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
    single special tokens and ``<think>``/``</think>`` single plain ones, which
    ``decode(skip_special_tokens=True)`` keeps (``thinktune.modeling.chat_format``). Characters never seen map
    to ``<unk>``.
    """
    pattern = "|".join(w.replace("\\", "\\\\") for w in words) + "|."
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    trainer = trainers.WordLevelTrainer(special_tokens=[PAD, "<unk>", *PHI4_TOKENS], min_frequency=1)
    tok.train_from_iterator(texts, trainer=trainer)
    # The trainer adds every token it is given as special; rebuilt with the think tokens plain (same ids).
    spec = json.loads(tok.to_str())
    for added in spec["added_tokens"]:
        added["special"] = added["content"] not in THINK_TOKENS
    tok = Tokenizer.from_str(json.dumps(spec))
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
