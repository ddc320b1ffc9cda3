"""Build the embedded demo's tokenizer and a tiny randomly initialised model of a real HF architecture.

Run:
    thinktune build-model --config configs/demo/model.yaml corpus=runs/demo/data/sft_cot.jsonl

The tokenizer is character level (plus the chat-format markers as special tokens, ``<think>``/``</think>`` as
plain single tokens, and a few whole words), trained with ``tokenizers`` on the rendered conversations of
``corpus``. The model is ``Phi3ForCausalLM`` (the Phi-4 family) by default, or Qwen2 or Llama. Both are
written as every checkpoint is (``train.checkpoint``), so any later stage, or plain transformers 4.x or 5.x,
loads them from ``output_dir`` (docs/interop.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from thinktune.config import save_config
from thinktune.data.io import read_jsonl
from thinktune.errors import ConfigError
from thinktune.modeling import models
from thinktune.train import checkpoint


@dataclass
class BuildModelConfig:
    corpus: str = ""  # SFT or prompt JSONL(s), comma-separated, whose text the tokenizer learns
    arch: str = "phi3"  # phi3 | qwen2 | llama | qwen3
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 256
    tie_word_embeddings: bool = True
    seed: int = 0
    output_dir: str = "runs/model"

    def __post_init__(self) -> None:
        if not self.corpus:
            raise ConfigError("corpus is empty; give the JSONL file(s) the tokenizer should learn from (corpus=FILE)")
        if self.arch not in models.ARCHITECTURES:
            raise ConfigError(f"arch={self.arch!r}; choose one of {', '.join(models.ARCHITECTURES)}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ConfigError("hidden_size must be a multiple of num_heads, and num_heads of num_kv_heads")


def corpus_texts(paths: str) -> list[str]:
    """Every string the rows of the corpus files hold: prompts, answers and message contents."""
    texts = []
    for path in paths.split(","):
        for row in read_jsonl(path.strip()):
            for m in row.get("messages", []):
                texts.append(m["content"])
            for key in ("prompt", "answer"):
                if isinstance(row.get(key), str):
                    texts.append(row[key])
    return texts


def run(cfg: BuildModelConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")  # from_pretrained reads config.json and ignores this file
    tokenizer = models.train_char_tokenizer(corpus_texts(cfg.corpus))
    model = models.build_tiny_model(
        cfg.arch, tokenizer, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
        num_kv_heads=cfg.num_kv_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=cfg.tie_word_embeddings,
        seed=cfg.seed)
    checkpoint.save_pretrained_atomic(model, tokenizer, out)
    summary = {"arch": type(model).__name__, "parameters": models.num_parameters(model), "vocab": len(tokenizer)}
    tqdm.write(f"[model] {summary['arch']} with {summary['parameters'] / 1e6:.2f}M parameters, "
               f"vocabulary {summary['vocab']} -> {out}")
    return summary
