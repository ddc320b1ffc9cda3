"""Tests for thinktune.config: YAML deltas, typed dotted overrides, helpful errors, and every shipped YAML.

The recipe config classes are imported inside the tests that need them, so that a recipe module that fails
to import fails those tests only, not the collection of this whole file.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from thinktune.config import (
    LogConfig,
    ModelConfig,
    OptimConfig,
    SamplingConfig,
    load_config,
    save_config,
)
from thinktune.errors import ConfigError
from thinktune.modeling.chat_format import PHI4_REASONING_SYSTEM_PROMPT
from thinktune.recipes.sft import SFTConfig, SFTDataConfig

REPO = Path(__file__).resolve().parents[2]
CONFIG_FILES = sorted((REPO / "configs").rglob("*.yaml"))
# A pipeline file is one with stages (pipeline.yaml, and others over the same run_dir such as objectives.yaml).
PIPELINE_FILES = [p for p in CONFIG_FILES if "stages" in (yaml.safe_load(p.read_text()) or {})]
STAGE_FILES = [p for p in CONFIG_FILES if p not in PIPELINE_FILES]


def rel(p: Path) -> str:
    return str(p.relative_to(REPO))


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def sft(overrides: list[str] | None = None, path: Path | None = None) -> SFTConfig:
    """An SFTConfig with the one required field (data.train) set, then ``overrides``."""
    return load_config(SFTConfig, path, ["data.train=train.jsonl", *(overrides or [])])


@dataclass
class Optionals:
    """Fields typed ``X | None``, which no shipped config has yet."""

    limit: int | None = None
    name: str | None = "x"
    ratio: float | None = 0.5


# --------------------------------------------------------------------------------------------------------
# YAML deltas and overrides


def test_yaml_states_only_deltas_over_dataclass_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  train: t.jsonl\n  max_seq_len: 256\noptim:\n  lr: 3e-4\nmax_steps: 5\n")
    cfg = load_config(SFTConfig, path)
    expected = SFTConfig(
        data=SFTDataConfig(train="t.jsonl", max_seq_len=256),
        optim=OptimConfig(lr=3e-4),
        max_steps=5,
    )
    assert cfg == expected
    # PyYAML (YAML 1.1) reads "3e-4" as a string; it must still arrive as a float.
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 3e-4
    assert cfg.optim.warmup_steps == 450 and cfg.optim.betas == [0.9, 0.999]
    assert cfg.model == ModelConfig() and cfg.log == LogConfig()


def test_empty_yaml_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_config(OptimConfig, write(tmp_path, "# nothing differs\n")) == OptimConfig()


@pytest.mark.parametrize(
    ("override", "field", "expected"),
    [
        ("optim.lr=1e-5", "optim.lr", 1e-5),
        ("optim.lr=0.002", "optim.lr", 0.002),
        ("epochs=3", "epochs", 3.0),
        ("max_steps=12", "max_steps", 12),
        ("max_steps=1_000", "max_steps", 1000),
        ("data.packing=true", "data.packing", True),
        ("data.packing=True", "data.packing", True),
        ("data.verify=false", "data.verify", False),
        ("log.progress=no", "log.progress", False),
        ("optim.betas=[0.9, 0.95]", "optim.betas", [0.9, 0.95]),
        ("optim.betas=0.8,0.9", "optim.betas", [0.8, 0.9]),
        ("model.dtype=bf16", "model.dtype", "bf16"),
        ("optim.schedule=linear", "optim.schedule", "linear"),
        ("model.system_prompt=", "model.system_prompt", ""),
        ("output_dir=123", "output_dir", "123"),
        ("model.path=a=b", "model.path", "a=b"),  # only the first '=' splits
    ],
)
def test_dotted_override_is_coerced_to_the_field_type(override: str, field: str, expected: object) -> None:
    cfg = sft([override])
    value = cfg
    for part in field.split("."):
        value = getattr(value, part)
    assert value == expected
    assert type(value) is type(expected)
    if isinstance(value, list):
        assert all(type(v) is float for v in value)


def test_override_wins_over_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "max_steps: 5\noptim: {lr: 1.0e-3, warmup_steps: 7}\n")
    cfg = sft(["max_steps=9", "optim.lr=2e-3"], path)
    assert (cfg.max_steps, cfg.optim.lr, cfg.optim.warmup_steps) == (9, 2e-3, 7)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], Optionals()),
        (["limit=7"], Optionals(limit=7)),
        (["limit=none", "name=null", "ratio=None"], Optionals(limit=None, name=None, ratio=None)),
        (["name=abc", "ratio=1e-2"], Optionals(name="abc", ratio=0.01)),
    ],
)
def test_optional_fields_accept_a_value_or_none(overrides: list[str], expected: Optionals) -> None:
    cfg = load_config(Optionals, None, overrides)
    assert cfg == expected
    if cfg.limit is not None:
        assert type(cfg.limit) is int


def test_optional_field_from_yaml_null(tmp_path: Path) -> None:
    assert load_config(Optionals, write(tmp_path, "name: null\nlimit: 3\n")) == Optionals(limit=3, name=None)


def test_optional_field_still_checks_the_inner_type() -> None:
    with pytest.raises(ConfigError, match=r"'limit' should be int, got 'abc'"):
        load_config(Optionals, None, ["limit=abc"])


# --------------------------------------------------------------------------------------------------------
# Errors


def test_unknown_top_level_key_names_key_file_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "data: {train: t.jsonl}\nmax_step: 5\n")
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ")
    assert "unknown key 'max_step'" in msg
    assert "did you mean 'max_steps'?" in msg
    assert "at the top level" in msg


def test_unknown_nested_key_names_full_dotted_key_file_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "data: {train: t.jsonl}\noptim:\n  lrr: 1.0e-3\n")
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ")
    assert "unknown key 'optim.lrr'" in msg
    assert "did you mean 'optim.lr'?" in msg
    assert "under 'optim'" in msg and "warmup_steps" in msg  # lists the valid keys of that section


def test_unknown_key_in_an_override_gets_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.warmup'; did you mean 'optim\.warmup_steps'\?"):
        sft(["optim.warmup=3"])


def test_unknown_key_with_nothing_close_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(OptimConfig, None, ["zzzzzz=1"])
    assert "did you mean" not in str(e.value)
    assert "valid keys at the top level: lr, weight_decay" in str(e.value)


@pytest.mark.parametrize(
    ("yaml_text", "key", "what"),
    [
        ("max_steps: ten\n", "max_steps", "int"),
        ("batch_size: 3.5\n", "batch_size", "int"),
        ("max_steps: true\n", "max_steps", "int"),  # a bool is not an int here
        ("optim: {lr: fast}\n", "optim.lr", "float"),
        ("data: {train: t.jsonl, packing: maybe}\n", "data.packing", "bool"),
        ("model: {dtype: fp16}\n", "model.dtype", "choose one of 'fp32', 'bf16'"),
        ("optim: {betas: 0.9}\n", "optim.betas", "should be a list"),
        ("optim: 3\n", "optim", "is a section"),
        ("output_dir: [a, b]\n", "output_dir", "str"),
    ],
)
def test_wrong_type_in_yaml_names_the_key_and_the_file(tmp_path: Path, yaml_text: str, key: str,
                                                        what: str) -> None:
    path = write(tmp_path, "data: {train: t.jsonl}\n" + yaml_text if "data:" not in yaml_text else yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ")
    assert f"'{key}'" in msg
    assert what in msg


@pytest.mark.parametrize(
    ("override", "key"),
    [("max_steps=1.5", "max_steps"), ("data.packing=2", "data.packing"), ("optim.schedule=step", "optim.schedule"),
     ("optim.betas=[0.9, x]", "optim.betas")],
)
def test_wrong_type_in_override_names_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{re.escape(key)}'"):
        sft([override])


@pytest.mark.parametrize("bad", ["optim.lr", "=3"])
def test_malformed_override_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(repr(bad))):
        sft([bad])


def test_missing_file_invalid_yaml_and_non_mapping_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"{missing}: config file not found")):
        load_config(OptimConfig, missing)
    broken = write(tmp_path, "lr: [1, 2\n", "broken.yaml")
    with pytest.raises(ConfigError, match=re.escape(f"{broken}: not valid YAML")):
        load_config(OptimConfig, broken)
    listing = write(tmp_path, "- lr\n- 3\n", "list.yaml")
    with pytest.raises(ConfigError, match=re.escape(f"{listing}: a config file must be a mapping")):
        load_config(OptimConfig, listing)


# --------------------------------------------------------------------------------------------------------
# Invalid combinations


def test_sft_batch_size_must_be_a_multiple_of_micro_batch_size() -> None:
    with pytest.raises(ConfigError, match=r"batch_size=10 is not a multiple of micro_batch_size=4"):
        sft(["batch_size=10", "micro_batch_size=4"])
    assert sft(["batch_size=12", "micro_batch_size=4"]).grad_accum == 3


def test_sft_needs_train_data_and_some_length() -> None:
    with pytest.raises(ConfigError, match="data.train is empty"):
        load_config(SFTConfig)
    with pytest.raises(ConfigError, match="max_steps > 0 or epochs > 0"):
        sft(["epochs=0", "max_steps=0"])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["data.prompts=p.jsonl", "data.benchmark=aime25"], "exactly one of data.prompts"),
        ([], "exactly one of data.prompts"),
        (["data.prompts=p.jsonl", "sampling.greedy=true", "sampling.n=4"], "sampling: greedy decoding with n=4"),
        (["data.prompts=p.jsonl", "sampling.n=2", "ks=[1, 4]"], r"ks=\[4\] must lie in \[1, sampling.n=2\]"),
        (["data.prompts=p.jsonl", "sampling.n=0"], "sampling: n=0: must be >= 1"),
        (["data.prompts=p.jsonl", "sampling.top_p=0"], r"sampling: top_p=0.0 must be in \(0, 1\]"),
        (["data.prompts=p.jsonl", "sampling.backend=vlm"], "'sampling.backend' is 'vlm'; choose one of"),
    ],
)
def test_eval_config_rejects_invalid_combinations(overrides: list[str], match: str) -> None:
    from thinktune.recipes.evaluate import EvalConfig

    with pytest.raises(ConfigError, match=match):
        load_config(EvalConfig, None, overrides)


def test_eval_config_accepts_valid_combinations() -> None:
    from thinktune.recipes.evaluate import EvalConfig

    greedy = load_config(EvalConfig, None, ["data.benchmark=aime25", "sampling.greedy=true", "sampling.n=1"])
    assert greedy.sampling.greedy and greedy.sampling.n == 1
    cfg = load_config(EvalConfig, None, ["data.prompts=p.jsonl", "sampling.n=4", "ks=1,4"])
    assert cfg.ks == [1, 4]


SAMPLING_VERBS = ("grpo", "evaluate", "dpo-pairs", "select", "select-prompts")


def test_every_sampling_stage_has_the_same_sampling_block() -> None:
    from thinktune.verbs import recipe

    for verb in SAMPLING_VERBS:
        cls = recipe(verb)[1]
        assert typing.get_type_hints(cls)["sampling"] is SamplingConfig, verb
        assert type(load_config(cls, None, validate=False).sampling) is SamplingConfig, verb


@pytest.mark.parametrize(("verb", "old", "new"), [
    ("grpo", "samples_per_prompt=4", "sampling.n"), ("grpo", "rollout_batch_size=8", "sampling.batch_size"),
    ("grpo", "vllm_sleep=false", "sampling.vllm.sleep"), ("grpo", "max_new_tokens=9", "sampling.max_new_tokens"),
    ("evaluate", "samples=4", "sampling.n"), ("evaluate", "seed=3", "sampling.seed"),
    ("evaluate", "rollout_backend=vllm", "sampling.backend"), ("select", "k=4", "sampling.n"),
    ("select-prompts", "vllm_gpu_memory_utilization=0.5", "sampling.vllm.gpu_memory_utilization"),
    ("dpo-pairs", "k=4", "sampling.n"), ("dpo-pairs", "temperature=0.7", "sampling.temperature"),
])
def test_old_sampling_names_are_errors_that_give_the_new_name(verb: str, old: str, new: str) -> None:
    from thinktune.verbs import recipe

    with pytest.raises(ConfigError, match=f"'{old.split('=')[0]}' is now '{new}'"):
        load_config(recipe(verb)[1], None, [old])


@pytest.mark.parametrize("override", ["sampling.top_p=0.9", "sampling.top_k=20", "sampling.n=1"])
def test_grpo_refuses_sampling_that_is_not_the_policy_or_not_a_group(override: str) -> None:
    from thinktune.recipes.grpo import GRPOConfig

    with pytest.raises(ConfigError, match="sampling"):
        load_config(GRPOConfig, None, ["data.prompts=p.jsonl", override])


def test_sampling_block_gives_the_per_call_params_with_a_stage_change() -> None:
    cfg = load_config(SamplingConfig, None, ["n=3", "temperature=0.7", "stop=[</a>, END]", "min_new_tokens=2"])
    params = cfg.params(temperature=0.5)
    assert (params.n, params.temperature, params.stop, params.min_new_tokens) == (3, 0.5, ("</a>", "END"), 2)
    with pytest.raises(ConfigError, match="sampling: temperature must be > 0"):
        cfg.params(temperature=0.0)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [(["lr=0"], "optim.lr=0.0 must be positive"), (["betas=[0.9]"], "optim.betas"),
     (["betas=[0.9, 1.0]"], "optim.betas"), (["min_lr_ratio=1.5"], "min_lr_ratio"),
     (["warmup_steps=-1"], "warmup_steps")],
)
def test_optim_config_checks_its_values(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(OptimConfig, None, overrides)


# --------------------------------------------------------------------------------------------------------
# Saving


def test_save_then_load_round_trips_sft(tmp_path: Path) -> None:
    cfg = sft(["optim.lr=3e-4", "optim.betas=[0.9, 0.95]", "model.dtype=bf16", "data.packing=true",
               "max_steps=17", "epochs=0.5", "model.system_prompt=a: b # not a comment\nsecond line"])
    assert cfg.model.system_prompt == "a: b # not a comment\nsecond line"
    path = tmp_path / "run" / "config.yaml"
    save_config(cfg, path)
    assert load_config(SFTConfig, path) == cfg
    assert not [p for p in path.parent.iterdir() if p.name != "config.yaml"]  # no temp file left


def test_save_then_load_round_trips_the_phi4_system_prompt_and_its_unset_default(tmp_path: Path) -> None:
    for overrides in ([], [f"model.system_prompt={PHI4_REASONING_SYSTEM_PROMPT}"], ["model.system_prompt="]):
        cfg = sft(overrides)
        save_config(cfg, tmp_path / "c.yaml")
        assert load_config(SFTConfig, tmp_path / "c.yaml") == cfg
    assert sft().model.system_prompt is None and sft(["model.system_prompt="]).model.system_prompt == ""


def test_save_then_load_round_trips_eval(tmp_path: Path) -> None:
    from thinktune.recipes.evaluate import EvalConfig

    cfg = load_config(EvalConfig, None, ["data.prompts=p.jsonl", "sampling.n=8", "ks=[1, 2, 8]", "sampling.top_k=20",
                                          "sampling.stop=[</answer>]"])
    save_config(cfg, tmp_path / "e.yaml")
    assert load_config(EvalConfig, tmp_path / "e.yaml") == cfg


def test_saved_config_is_plain_yaml_of_every_field(tmp_path: Path) -> None:
    cfg = sft()
    save_config(cfg, tmp_path / "c.yaml")
    data = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert set(data) == {f.name for f in dataclasses.fields(SFTConfig)}
    assert data["optim"]["lr"] == 1e-5 and data["data"]["train"] == "train.jsonl"


# --------------------------------------------------------------------------------------------------------
# Every shipped YAML loads


def _stage_uses() -> dict[Path, list[tuple[str, object]]]:
    """config file -> [(where, stage)] over every pipeline file's stages."""
    from thinktune.recipes.pipeline import load_pipeline

    uses: dict[Path, list[tuple[str, object]]] = {}
    for p in PIPELINE_FILES:
        for stage in load_pipeline(p).stages:
            if stage.config is not None:
                uses.setdefault(stage.config.resolve(), []).append((f"{rel(p)} stage {stage.name}", stage))
    return uses


def _run_header(path: Path) -> tuple[str, str | None, list[str]] | None:
    """(verb, --config argument, overrides) from a ``# Run: thinktune VERB ...`` comment, if the file has one.

    The command may follow ``Run:`` on the same line or on the next comment line.
    """
    lines = [line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")]
    for i, line in enumerate(lines):
        if not line.startswith("Run:"):
            continue
        command = line[len("Run:"):].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
        words = shlex.split(command.split("  ")[0])  # two spaces start a trailing remark: "cmd   (or: ...)"
        if words[:1] != ["thinktune"]:
            return None
        words = words[2:] if words[1] == "data" else words[1:]
        verb, rest = words[0], words[1:]
        config = rest[rest.index("--config") + 1] if "--config" in rest else None
        return verb, config, [w for w in rest if "=" in w]
    return None


def test_configs_directory_has_pipelines_and_stage_configs() -> None:
    assert PIPELINE_FILES, "no pipeline.yaml under configs/"
    assert STAGE_FILES, "no stage configs under configs/"


def _string_values(d: dict) -> list[str]:
    out = []
    for v in d.values():
        out += _string_values(v) if isinstance(v, dict) else [v] if isinstance(v, str) else []
    return out


def _check_pipeline(path: Path, profile: str) -> None:
    from thinktune.recipes.pipeline import load_pipeline, recipe

    spec = yaml.safe_load(path.read_text())
    pipe = load_pipeline(path, profile)
    names = [s.name for s in pipe.stages]
    # the file's stages, after those of a pipeline it extends, then the copies its seeds: block makes
    inherited = list(yaml.safe_load((path.parent / spec["extends"]).read_text())["stages"]) if "extends" in spec else []
    copies = [c for names_of_seed in pipe.seed_copies.values() for c in names_of_seed.values()]
    assert names == inherited + list(spec["stages"]) + copies
    for stage in pipe.stages:
        cls = recipe(stage.verb)[1]
        cfg = load_config(cls, stage.config, stage.overrides)
        assert isinstance(cfg, cls)
        assert Path(cfg.output_dir) == pipe.run_dir / stage.name
        for value in _string_values(dataclasses.asdict(cfg)):
            assert not re.search(r"\{[A-Za-z0-9_-]+\}", value), f"unresolved stage reference in {value!r}"
    if profile:  # a profile changes what it says and runs elsewhere, so it never overwrites the full run
        full = load_pipeline(path)
        assert pipe.run_dir != full.run_dir
        assert [s.overrides for s in pipe.stages] != [s.overrides for s in full.stages]


@pytest.mark.parametrize("path", PIPELINE_FILES, ids=rel)
def test_pipeline_stages_load_into_their_verbs_config(path: Path) -> None:
    _check_pipeline(path, "")


@pytest.mark.parametrize(
    "path",
    [p for p in PIPELINE_FILES if "quick" in (yaml.safe_load(p.read_text()).get("profiles") or {})],
    ids=rel,
)
def test_pipeline_stages_load_with_profile_quick(path: Path) -> None:
    _check_pipeline(path, "quick")


def test_pipeline_set_values_keep_their_yaml_types(tmp_path: Path) -> None:
    from thinktune.recipes.pipeline import load_pipeline

    path = write(tmp_path, "stages:\n  s:\n    verb: sft\n"
                           "    set: {max_steps: 3, data.packing: true, optim.lr: 0.5, data.train: t.jsonl}\n",
                 "pipeline.yaml")
    stage = load_pipeline(path).stages[0]
    cfg = load_config(SFTConfig, stage.config, stage.overrides)
    assert (cfg.max_steps, cfg.data.packing, cfg.optim.lr) == (3, True, 0.5)


@pytest.mark.parametrize("path", STAGE_FILES, ids=rel)
def test_every_stage_yaml_loads_into_its_verbs_config(path: Path) -> None:
    """Each YAML maps to a verb through the pipeline stages using it, else through its ``# Run:`` line."""
    from thinktune.recipes.pipeline import recipe

    uses = _stage_uses().get(path.resolve(), [])
    header = _run_header(path)
    assert uses or header, (f"{rel(path)} is used by no pipeline stage and has no '# Run: thinktune VERB' "
                            "line, so nothing says which verb it configures")
    for where, stage in uses:
        cls = recipe(stage.verb)[1]
        assert isinstance(load_config(cls, path, stage.overrides), cls), where
    if header is not None:
        verb, config, overrides = header
        cls = recipe(verb)[1]
        if uses:
            assert {s.verb for _, s in uses} == {verb}, f"{rel(path)}: its Run line says {verb}"
        if config is not None:
            assert (REPO / config).resolve() == path.resolve(), f"{rel(path)}: its Run line names {config}"
        assert isinstance(load_config(cls, path, overrides), cls)


def test_setting_one_key_of_a_section_keeps_the_parents_defaults_for_the_rest():
    # DPOConfig's optim defaults to lr 5e-7, no warm-up, no weight decay (not OptimConfig's 1e-5/450/1e-4).
    from thinktune.recipes.dpo import DPOConfig

    cfg = load_config(DPOConfig, None, ["data.train=x.jsonl", "optim.lr=1e-6"])
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.weight_decay) == (1e-6, 0, 0.0)
    assert load_config(DPOConfig, None, ["data.train=x.jsonl"]).optim.lr == 5e-7


@pytest.mark.parametrize("verb", ["serve", "select", "select-prompts", "dpo-pairs", "evaluate"])
@pytest.mark.parametrize("option", ["model.lora.r=8", "model.compile=true", "model.gradient_checkpointing=true"])
def test_sampling_verbs_refuse_training_options(verb, option):
    from thinktune.recipes.pipeline import recipe

    _, cls = recipe(verb)
    base = {"serve": ["model.path=m"], "evaluate": ["model.path=m", "data.prompts=p.jsonl"]}.get(
        verb, ["model.path=m", "prompts=p.jsonl"])
    load_config(cls, None, base)  # fine without the option
    with pytest.raises(ConfigError, match=rf"{re.escape(option.split('=')[0])} apply to training"):
        load_config(cls, None, [*base, option])


def test_import_model_takes_smollm2_or_an_existing_gguf_file(tmp_path: Path) -> None:
    from thinktune.modeling.import_model import ImportModelConfig

    assert ImportModelConfig().source == "smollm2"
    with pytest.raises(ConfigError, match="give smollm2 or a .gguf file"):
        ImportModelConfig(source=str(tmp_path))
    with pytest.raises(ConfigError, match="no such GGUF file"):
        ImportModelConfig(source=str(tmp_path / "m.gguf"))
