"""Dataclass configs: defaults in code, deltas in YAML, dotted overrides on the command line.

Each stage owns one dataclass (``SFTConfig`` in ``recipes/sft.py`` and so on), composed from the shared
sub-configs below. Defaults live only in the dataclasses; a YAML file states what differs, and
``key.sub=value`` arguments override both. Values are coerced to the field's declared type. Unknown keys,
wrong types and invalid combinations raise ``ConfigError`` with a message that says how to fix them;
``__post_init__`` of each config checks its combinations.

    cfg = load_config(SFTConfig, "configs/demo/sft.yaml", ["optim.lr=3e-4", "max_steps=100"])
    save_config(cfg, run_dir / "config.yaml")
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from thinktune.errors import ConfigError

T = TypeVar("T")

# What a training stage (sft, dpo, grpo) does with a run already in its output_dir (thinktune.train.run_dir): auto
# continues it when its settings match and refuses when they do not; false starts a fresh run in a new directory
# beside it; force continues it with the changed settings.
Resume = Literal["auto", "false", "force"]


def check_sizes(**sizes: int) -> None:
    """Refuse counts below 1 (batch sizes, steps), naming each: a 0 would otherwise fail deep inside a run."""
    bad = [f"{name}={value}" for name, value in sizes.items() if value < 1]
    if bad:
        raise ConfigError(f"{', '.join(bad)}: must be a whole number >= 1")


@dataclass
class LoRAConfig:
    """LoRA adapters through peft (``thinktune.modeling.lora``); r = 0 trains every weight (full fine-tuning)."""

    r: int = 0  # adapter rank; 0: no LoRA
    alpha: float = 16.0  # the adapter's output is scaled by alpha / r
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])  # all-linear: every linear but lm_head

    def __post_init__(self) -> None:
        if self.r < 0 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ConfigError(f"model.lora: r={self.r} must be >= 0, alpha={self.alpha} > 0 and "
                              f"dropout={self.dropout} in [0, 1)")
        if not self.target_modules:
            raise ConfigError("model.lora.target_modules is empty; name modules (e.g. [q_proj, v_proj]) or "
                              "give [all-linear]")


@dataclass
class ModelConfig:
    """Which model to load and how."""

    path: str = ""  # local directory (a thinktune or HF checkpoint), a .gguf file or a hub id
    dtype: Literal["fp32", "bf16"] = "fp32"
    # model: the model's own template plus <think>/</think>; phi4: the Phi-4-reasoning format; auto: model's own
    # where it has a template, else phi4 (thinktune.modeling.chat_format)
    chat_template: Literal["auto", "phi4", "model"] = "auto"
    # None: the checkpoint's own (what a thinktune run wrote into its template, else the format's: phi4:
    # Phi-4-reasoning's fixed message; model: what its template adds, often none); "": add none; text: this one.
    # It is written into the saved template, so checkpoints carry it and harnesses render it (docs/interop.md).
    system_prompt: str | None = None
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% slower
    compile: bool = False  # torch.compile each decoder block for training (GPU; the first steps compile)
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    def check_sampling_only(self, verb: str) -> None:
        """Refuse the training-only options in a verb that only samples (they would be silently ignored)."""
        used = [name for name, on in (("model.lora.r", self.lora.r), ("model.compile", self.compile),
                                      ("model.gradient_checkpointing", self.gradient_checkpointing)) if on]
        if used:
            raise ConfigError(f"{', '.join(used)} apply to training (sft, dpo, grpo); `thinktune {verb}` only "
                              "samples from a checkpoint: drop them (a LoRA run's final/ is already merged)")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then a decay (Phi-4-reasoning SFT: lr 1e-5, 450 warm-up steps, wd 1e-4)."""

    lr: float = 1e-5
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 450
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.1  # the decay ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping

    def __post_init__(self) -> None:
        for name in ("lr", "weight_decay", "min_lr_ratio", "grad_clip"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"optim.{name}={getattr(self, name)} must be a finite number")
        if self.lr <= 0:
            raise ConfigError(f"optim.lr={self.lr} must be positive")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas={self.betas} must be two numbers in [0, 1), e.g. [0.9, 0.999]")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.warmup_steps < 0 or self.grad_clip < 0:
            raise ConfigError("optim.warmup_steps and optim.grad_clip must be >= 0")


# The trackers log.report_to may name: jsonl (metrics.jsonl, always on) and the ones thinktune.trackers adapts.
REPORT_TO = ("jsonl", "tensorboard", "wandb", "trackio")


@dataclass
class LogConfig:
    """Logging, checkpointing and progress display."""

    log_every: int = 10  # optimizer steps between metric lines
    save_every: int = 500  # optimizer steps between checkpoints (0: only the final model)
    keep_checkpoints: int = 2  # newest step-N checkpoints kept; older ones are deleted
    # With LoRA, each step-N checkpoint also holds the merged model, so it loads with from_pretrained; false
    # writes the adapter alone (megabytes, not the whole model); the final model is merged either way.
    lora_merged_checkpoints: bool = True
    progress: bool = True  # tqdm progress bar
    # Trackers that receive every metrics line besides metrics.jsonl, which is always written (TRL's names;
    # thinktune.trackers): e.g. [tensorboard] or [tensorboard, wandb]. Each needs its package installed.
    report_to: list[str] = field(default_factory=list)
    run_name: str = ""  # the run's name in W&B and Trackio; "" takes the output directory's name

    def __post_init__(self) -> None:
        if self.log_every < 1 or self.save_every < 0 or self.keep_checkpoints < 1:
            raise ConfigError("log.log_every and log.keep_checkpoints must be >= 1, log.save_every >= 0")
        if unknown := [name for name in self.report_to if name not in REPORT_TO]:
            raise ConfigError(f"log.report_to lists {', '.join(map(repr, unknown))}; choose from "
                              f"{', '.join(REPORT_TO)} (e.g. log.report_to=tensorboard,wandb)")


BACKENDS = ("auto", "thinktune", "vllm")  # auto: vLLM where it is installed and a GPU exists, else thinktune's


@dataclass
class VLLMOptions:
    """Options of the vLLM backend (``thinktune.rollout.vllm_backend``); ignored by thinktune's own sampler."""

    gpu_memory_utilization: float = 0.9  # vLLM's share of the GPU; a training stage leaves the rest to the update
    sleep: bool = True  # between samplings, give the GPU memory (weights, KV cache) back to the update (GRPO)

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"sampling.vllm.gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1]")


@dataclass
class SamplingConfig:
    """How a stage samples from a model: the one ``sampling:`` block of every stage that samples (grpo,
    evaluate, dpo-pairs, select, select-prompts), read by ``thinktune.rollout.make_sampler``."""

    n: int = 8  # completions per prompt
    temperature: float = 1.0  # (grpo: at step 0; its temperature_end anneals it)
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    greedy: bool = False  # argmax decoding (needs n = 1)
    max_new_tokens: int = 31744
    min_new_tokens: int = 0  # end-of-sequence tokens are not drawn before this many new tokens
    stop: list[str] = field(default_factory=list)  # stop strings: a completion ends once its text holds one
    seed: int = 0  # the draws; the same seed gives the same completions on the same backend
    backend: Literal["auto", "thinktune", "vllm"] = "auto"
    batch_size: int = 64  # sequences decoded together by thinktune's sampler (vLLM schedules its own)
    decoder: Literal["auto", "lean", "hf"] = "auto"  # thinktune's sampler: auto is lean where the architecture is
    vllm: VLLMOptions = field(default_factory=VLLMOptions)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"sampling.batch_size={self.batch_size} must be >= 1")
        self.params()  # the per-call checks (n, temperature, top_p, ...) fail here, at load time

    def params(self, **changes: Any) -> Any:
        """The per-call ``SamplingParams`` of this block (``changes``: e.g. GRPO's annealed temperature)."""
        from thinktune.rollout.sampler import SamplingParams

        fields = dict(n=self.n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                      greedy=self.greedy, max_new_tokens=self.max_new_tokens, min_new_tokens=self.min_new_tokens,
                      stop=tuple(self.stop))
        try:
            return SamplingParams(**(fields | changes))
        except ConfigError as e:
            raise ConfigError(f"sampling: {e}") from None


# The sampling knobs' names before they moved into the sampling block; a config that still uses one is told the
# new name. A recipe's config class lists its own in a RENAMED class attribute.
SAMPLING_RENAMED = {
    "samples_per_prompt": "sampling.n", "samples": "sampling.n", "k": "sampling.n", "n": "sampling.n",
    "temperature": "sampling.temperature", "top_p": "sampling.top_p", "top_k": "sampling.top_k",
    "greedy": "sampling.greedy", "max_new_tokens": "sampling.max_new_tokens",
    "batch_size": "sampling.batch_size", "rollout_batch_size": "sampling.batch_size",
    "rollout_backend": "sampling.backend",
    "vllm_gpu_memory_utilization": "sampling.vllm.gpu_memory_utilization", "vllm_sleep": "sampling.vllm.sleep",
}


# --------------------------------------------------------------------------------------------------------
# Loading and merging


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                validate: bool = True) -> T:
    """Build ``cls`` from its defaults, a YAML file of deltas, then ``key.sub=value`` overrides.

    ``validate=False`` skips the top-level ``__post_init__`` checks (required fields, combinations), for
    showing a config that is not complete yet (``thinktune print-config``); sections are still checked.

    Raises:
        ConfigError: the file is missing or not a mapping, a key is unknown, a value has the wrong type,
            or the resolved combination is invalid. The message names the key and the file.
    """
    data: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        data = read_yaml(path)
        where = str(path)
    for item in overrides or []:
        key, value = parse_override(item)
        set_dotted(data, key, value)
    if overrides:
        where = f"{where} + command-line overrides"
    return from_dict(cls, data, where=where, validate=validate)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of key: value, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.lr=3e-4"`` -> ``("optim.lr", "3e-4")``; the string is coerced later by the field's type."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value; write e.g. optim.lr=1e-5")
    key, value = item.split("=", 1)
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    return key.strip(), _Raw(value)


class _Raw(str):
    """A command-line value: a string to be coerced by the target field's type."""


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    *parents, last = key.split(".")
    for p in parents:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {key}: {p} is a value, not a section")
        node = child
    node[last] = value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config", prefix: str = "",
              base: Any = None, validate: bool = True) -> T:
    """Instantiate dataclass ``cls`` from a nested dict, coercing and checking every value.

    ``base`` is the instance whose values stand for keys ``data`` does not give. For a nested section it is
    the section's default in the parent (e.g. GRPO's ``optim`` defaults to lr 5e-8 and 10 warm-up steps,
    not to ``OptimConfig``'s own defaults), so setting one key of a section keeps the parent's others.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = prefix + key
        if key not in fields:
            renamed = getattr(cls, "RENAMED", {}).get(key)
            if renamed:
                raise ConfigError(f"{where}: '{full}' is now '{prefix}{renamed}'; write it there instead")
            raise ConfigError(_unknown_key_message(full, list(fields), prefix, where))
        tp = hints[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            section_base = getattr(base, key) if base is not None else _field_default(fields[key])
            kwargs[key] = from_dict(tp, value, where, prefix=full + ".", base=section_base)
        else:
            kwargs[key] = _coerce(value, tp, full, where)
    if base is not None:
        kwargs = {f: copy.deepcopy(getattr(base, f)) for f in fields if f not in kwargs and fields[f].init} | kwargs
    if not validate:  # the fields as given, defaults for the rest, and no __post_init__
        obj = cls.__new__(cls)
        for name, f in fields.items():
            object.__setattr__(obj, name, kwargs[name] if name in kwargs else _field_default(f))
        return obj
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field without default
        raise ConfigError(f"{where}: {e}") from None


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _unknown_key_message(full: str, names: list[str], prefix: str, where: str) -> str:
    key = full[len(prefix):]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"did you mean '{prefix}{close[0]}'? " if close else ""
    section = f"under '{prefix[:-1]}'" if prefix else "at the top level"
    return f"{where}: unknown key '{full}'; {hint}valid keys {section}: {', '.join(names)}"


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:  # noqa: C901 - one branch per type kind
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' is a section; give it as a mapping of keys, not {value!r}")
        return from_dict(tp, value, where, prefix=key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, _Raw) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, where)
    if origin is Literal:
        if isinstance(value, bool) and str(value).lower() in args:  # YAML reads `resume: false` as a bool
            value = str(value).lower()
        if value not in args:
            raise ConfigError(f"{where}: '{key}' is {value!r}; choose one of {', '.join(map(repr, args))}")
        return str(value) if isinstance(value, _Raw) else value
    if origin in (list, tuple):
        if isinstance(value, _Raw):
            value = yaml.safe_load(value) if value.strip() else []
            if not isinstance(value, list):
                value = [v.strip() for v in str(value).split(",")]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: '{key}' should be a list, e.g. [1, 2, 3]; got {value!r}")
        item_tp = args[0] if args else Any
        return [_coerce(_Raw(v) if isinstance(v, str) and item_tp is not str else v, item_tp, key, where)
                for v in value]
    if origin is dict or tp is dict:
        if isinstance(value, _Raw):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' should be a mapping; got {value!r}")
        return value
    if tp is Any:
        return yaml.safe_load(value) if isinstance(value, _Raw) else value
    return _coerce_scalar(value, tp, key, where)


def _coerce_scalar(value: Any, tp: type, key: str, where: str) -> Any:
    """Coerce one scalar: YAML gives typed values, the command line gives strings (_Raw)."""
    bad = ConfigError(f"{where}: '{key}' should be {tp.__name__}, got {value!r}")
    if tp not in _SCALARS:
        raise ConfigError(f"{where}: '{key}' has an unsupported field type {tp}")
    if isinstance(value, bool) and tp is not bool:
        raise bad  # True is an int to Python, never to a config
    try:
        return _SCALARS[tp](value)
    except (TypeError, ValueError):
        raise bad from None


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.lower()]
    raise ValueError(value)


def _to_int(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value.replace("_", ""))
    raise TypeError(value)


def _to_float(value: Any) -> float:
    if isinstance(value, int | float | str):  # YAML 1.1 reads "1e-5" as a string
        return float(value)
    raise TypeError(value)


def _to_str(value: Any) -> str:
    if isinstance(value, str | int | float):
        return str(value)
    raise TypeError(value)


_BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


# --------------------------------------------------------------------------------------------------------
# Writing


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically), so a run records exactly what it ran with."""
    from thinktune.data.io import atomic_write

    with atomic_write(path) as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False, width=110)


def format_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, width=110)


def env_secret(name: str) -> str | None:
    """The value of environment variable ``name`` (an API key); None when ``name`` is empty.

    Secrets are read from the environment only, never from config files, so that no config, log or
    output file written by thinktune holds one.

    Raises:
        ConfigError: ``name`` is given but the variable is unset or empty.
    """
    if not name:
        return None
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"environment variable {name} is not set; export it with the API key, or set "
                          "api_key_env= (empty) for a server that needs no key")
    return value
