"""Pipelines: chain stages, each reading the previous stage's output; skip what is done, resume the rest.

Run:
    thinktune run configs/demo/pipeline.yaml [--profile quick] [STAGE.key=value ...]

A pipeline file names a run directory and an ordered mapping of stages. Each stage has a ``verb`` (a
recipe), an optional ``config`` file (relative to the pipeline file) and ``set`` overrides, in which
``{name}`` stands for the output directory of stage ``name``. A stage writes to ``<run_dir>/<stage>`` and,
when it finishes, a ``.done.json`` holding its resolved config. On a rerun a stage is skipped when that
marker matches its config and nothing it reads from was rerun; an interrupted stage resumes from its last
checkpoint; a stage whose config or inputs changed starts over in a clean directory.

``report`` lists evaluation stages in order; the pipeline writes ``report.md`` comparing each with the one
before it on the same problems and flags drops larger than the combined std. ``"eval-b vs eval-a"`` compares
a row with a named one instead (an alternative to the row above, e.g. DPO on other pairs, both against SFT).
A ``profiles`` section holds named variants (``quick``) with their own run directory and per-stage overrides.

``extends: other.yaml`` starts from that pipeline's stages and run_dir and adds this file's stages after them,
so a study (configs/demo/objectives.yaml) reuses a pipeline's finished stages without restating them.

``seeds`` repeats stages once per further training seed, to tell a stage's effect from run-to-run noise::

    seeds:
      values: [0, 1, 2]                          # the stages as written run with the first
      stages: [dpo, grpo, eval-dpo, eval-grpo]   # copied as dpo-seed1, grpo-seed1, ... for the others
      set: {heldout.every: 0}                    # optional: overrides for the training copies only

A copy reads the copies of the listed stages it depends on and the originals of the rest; a training copy gets
``seed`` (and ``sampling.seed``, where its recipe samples) set to its seed, an evaluation copy keeps its own
sampling seed so that only training differs. The report then gives each stage's effect over the seeds
(``thinktune.evaluation.effects``) beside the paired-bootstrap interval of the first seed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from thinktune.config import ConfigError, load_config, read_yaml, set_dotted, to_dict
from thinktune.data.io import write_json
from thinktune.evaluation.report import compare, effects_table, load_report, majority_table, plot_comparison
from thinktune.verbs import VERBS, recipe

DONE = ".done.json"
_REF = re.compile(r"\{([A-Za-z0-9_\-]+)\}")


@dataclass
class Stage:
    name: str
    verb: str
    config: Path | None
    overrides: list[str] = field(default_factory=list)
    depends: set[str] = field(default_factory=set)


@dataclass
class Pipeline:
    path: Path
    run_dir: Path
    stages: list[Stage]
    report: list[str]
    against: dict[str, str] = field(default_factory=dict)  # report row -> the row it is compared with, if not the one above
    # Where the comparison goes, in run_dir: a second pipeline over the same run_dir (another file that reuses
    # its finished stages, e.g. configs/demo/objectives.yaml) names its own, so the first one's report stays.
    report_file: str = "report.md"
    # seed -> {stage: its copy} for each further training seed (``seeds``); the first seed's stages are the originals
    seed_copies: dict[int, dict[str, str]] = field(default_factory=dict)


def load_pipeline(path: str | Path, profile: str = "", overrides: list[str] | None = None) -> Pipeline:
    """Read a pipeline file, apply a profile and ``STAGE.key=value`` overrides, resolve ``{stage}`` refs."""
    path = Path(path)
    spec = read_yaml(path)
    if unknown := set(spec) - {"extends", "run_dir", "stages", "report", "report_file", "seeds", "profiles"}:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; a pipeline has extends, run_dir, stages, report, "
                          "report_file, seeds, profiles")
    if "extends" in spec:
        spec = _extended(path, spec)
    if not isinstance(spec.get("stages"), dict) or not spec["stages"]:
        raise ConfigError(f"{path}: 'stages' must be a mapping of stage name to {{verb, config, set}}")
    run_dir = spec.get("run_dir", f"runs/{path.stem}")
    extra: dict[str, dict] = {}
    if profile:
        profiles = spec.get("profiles", {})
        if profile not in profiles:
            raise ConfigError(f"{path}: no profile {profile!r}; profiles here: {', '.join(profiles) or 'none'}")
        run_dir = profiles[profile].get("run_dir", run_dir)
        extra = profiles[profile].get("stages", {})
        spec = {**spec, "seeds": profiles[profile].get("seeds", spec.get("seeds"))}
    for item in overrides or []:
        key, _, value = item.partition("=")
        stage, _, sub = key.partition(".")
        if stage not in spec["stages"] or not sub or not _:
            raise ConfigError(f"override {item!r}: write STAGE.key=value with STAGE one of {', '.join(spec['stages'])}")
        set_dotted(extra.setdefault(stage, {}), sub, value)
    bodies, seed_copies = _with_seed_copies(path, spec["stages"], spec.get("seeds"))
    # a profile's or the command line's overrides of a stage apply to its seed copies too
    original = {copy: name for names in seed_copies.values() for name, copy in names.items()}
    stages = [_stage(path, Path(run_dir), name, body, extra.get(original.get(name, name), {}), bodies)
              for name, body in bodies.items()]
    for i, stage in enumerate(stages):
        if later := stage.depends - {s.name for s in stages[:i]}:
            raise ConfigError(f"{path}: stage {stage.name!r} reads {sorted(later)}, which run after it; "
                              "order the stages so that each comes after the ones it reads")
    report, against = _report_rows(path, spec.get("report", []))
    if missing := [r for r in report + list(against.values()) if r not in spec["stages"]]:
        raise ConfigError(f"{path}: report names unknown stages {missing}")
    report_file = str(spec.get("report_file", "report.md"))
    if Path(report_file).name != report_file or not report_file.endswith(".md"):
        raise ConfigError(f"{path}: report_file {report_file!r} must be a file name ending in .md (it is written "
                          "in run_dir)")
    return Pipeline(path=path, run_dir=Path(run_dir), stages=stages, report=report, against=against,
                    report_file=report_file, seed_copies=seed_copies)


def _report_rows(path: Path, items: list) -> tuple[list[str], dict[str, str]]:
    """The report's stages in order, and the rows compared with a named row (``"b vs a"``) instead of the one above."""
    rows, against = [], {}
    for item in items:
        name, sep, baseline = str(item).partition(" vs ")
        rows.append(name.strip())
        if sep:
            against[name.strip()] = baseline.strip()
    for name, baseline in against.items():
        if baseline in rows and rows.index(baseline) > rows.index(name):
            raise ConfigError(f"{path}: report row {name!r} is compared with {baseline!r}, which comes after it; "
                              "list the baseline first")
    return rows, against


def _extended(path: Path, spec: dict) -> dict:
    """``spec`` on top of the pipeline file it ``extends``: that file's stages (their configs found beside it) and
    run_dir, then this file's stages after them; the report, seeds and profiles are this file's alone."""
    base_path = path.parent / str(spec["extends"])
    base = read_yaml(base_path)
    if "extends" in base:
        raise ConfigError(f"{base_path}: a pipeline that {path} extends cannot extend another")
    stages = {}
    for name, body in (base.get("stages") or {}).items():
        if isinstance(body, dict) and body.get("config"):
            body = {**body, "config": str((base_path.parent / body["config"]).resolve())}
        stages[name] = body
    if clash := set(stages) & set(spec.get("stages") or {}):
        raise ConfigError(f"{path}: stages {sorted(clash)} are already in {base_path}; give yours other names")
    return {"run_dir": base.get("run_dir", f"runs/{base_path.stem}"), **spec,
            "stages": stages | (spec.get("stages") or {})}


def _with_seed_copies(path: Path, stages: dict, seeds: Any) -> tuple[dict, dict[int, dict[str, str]]]:
    """The stage bodies with a copy of each ``seeds.stages`` stage per further seed, and seed -> {stage: copy}."""
    if not seeds:
        return stages, {}
    if not isinstance(seeds, dict) or not {"values", "stages"} <= set(seeds) <= {"values", "stages", "set"}:
        raise ConfigError(f"{path}: 'seeds' must be {{values: [0, 1, 2], stages: [names of the stages to repeat], "
                          "set: {overrides of the training copies} (optional)}")
    values, repeated, extra = seeds["values"], seeds["stages"], _flatten(seeds.get("set") or {})
    if not (isinstance(values, list) and values and all(isinstance(v, int) for v in values)
            and len(set(values)) == len(values)):
        raise ConfigError(f"{path}: seeds.values must be a list of distinct integers, got {values!r}")
    if missing := [n for n in repeated if n not in stages]:
        raise ConfigError(f"{path}: seeds.stages names unknown stages {missing}")
    bodies, copies = dict(stages), {}
    for seed in values[1:]:
        names = {n: f"{n}-seed{seed}" for n in repeated}
        copies[seed] = names
        for name in stages:  # in pipeline order, so that each copy comes after the copies it reads
            if name in names:
                bodies[names[name]] = _seed_copy(stages[name], seed, names, extra)
    return bodies, copies


def _seed_copy(body: dict, seed: int, names: dict[str, str], extra: dict[str, Any]) -> dict:
    """A stage body for ``seed``: references to repeated stages point at their copies; training takes the seed
    and the ``extra`` overrides."""
    rename = functools.partial(_REF.sub, lambda m: "{" + names.get(m.group(1), m.group(1)) + "}")
    values = {k: rename(v) if isinstance(v, str) else v for k, v in _flatten(body.get("set") or {}).items()}
    _, cls = recipe(body["verb"])
    if body["verb"] == "evaluate" and "label" in values:
        values["label"] = f"{values['label']} seed {seed}"  # the report's rows of the copies say which they are
    if body["verb"] != "evaluate":
        values |= extra
        values["seed"] = seed
        if "sampling" in {f.name for f in dataclasses.fields(cls)}:
            values["sampling.seed"] = seed
    return {**body, "set": values}


def _stage(path: Path, run_dir: Path, name: str, body: Any, extra: dict, all_stages: dict) -> Stage:
    if not isinstance(body, dict) or "verb" not in body:
        raise ConfigError(f"{path}: stage {name!r} needs a 'verb' (one of {', '.join(VERBS)})")
    if unknown := set(body) - {"verb", "config", "set"}:
        raise ConfigError(f"{path}: stage {name!r} has unknown keys {sorted(unknown)}; use verb, config, set")
    recipe(body["verb"])  # fail early on an unknown verb
    if body["verb"] == "serve":
        raise ConfigError(f"{path}: stage {name!r}: serve runs until stopped, so it cannot be a pipeline stage; "
                          "start it on its own and point a distill stage's base_url at it")
    values = {**_flatten(body.get("set") or {}), **_flatten(extra)}
    depends: set[str] = set()
    overrides = []
    for key, value in values.items():
        text = _override_text(value)
        for ref in _REF.findall(text):
            if ref not in all_stages:
                raise ConfigError(f"{path}: stage {name!r} refers to {{{ref}}}, which is not a stage")
            depends.add(ref)
        overrides.append(f"{key}={_REF.sub(lambda m: str(run_dir / m.group(1)), text)}")
    overrides.append(f"output_dir={run_dir / name}")
    config = path.parent / body["config"] if body.get("config") else None
    return Stage(name=name, verb=body["verb"], config=config, overrides=overrides, depends=depends)


def _override_text(value: Any) -> str:
    """A YAML value as the text of a key=value override (lists stay in flow form: [1, 2])."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run(pipeline: Pipeline) -> dict:
    """Run every stage in order; returns {stage: "skipped" | "ran"} and the comparison."""
    rerun: set[str] = set()
    status: dict[str, str] = {}
    for stage in pipeline.stages:
        module, cls = recipe(stage.verb)
        cfg = load_config(cls, stage.config, stage.overrides)
        out = Path(cfg.output_dir)
        resolved = to_dict(cfg)
        if _is_done(out, resolved) and not (stage.depends & rerun):
            tqdm.write(f"[pipeline] {stage.name}: done before, skipped")
            status[stage.name] = "skipped"
            continue
        if out.exists() and (_stale(out, resolved) or stage.depends & rerun):
            tqdm.write(f"[pipeline] {stage.name}: config or inputs changed; starting it over")
            shutil.rmtree(out, ignore_errors=True)
        tqdm.write(f"[pipeline] {stage.name}: {stage.verb} -> {out}")
        t0 = time.perf_counter()
        summary = module.run(cfg)
        seconds = time.perf_counter() - t0
        write_json(out / DONE, {"config": resolved, "seconds": seconds, "summary": _jsonable(summary)})
        tqdm.write(f"[pipeline] {stage.name}: finished in {seconds:.0f} s")
        rerun.add(stage.name)
        status[stage.name] = "ran"
    return {"stages": status, **write_report(pipeline)}


def _is_done(out: Path, resolved: dict) -> bool:
    marker = out / DONE
    return marker.is_file() and json.loads(marker.read_text()).get("config") == resolved


def _stale(out: Path, resolved: dict) -> bool:
    """An output dir left by a different config: resuming from it would mix two runs."""
    if (out / DONE).is_file():
        return True
    old = out / "config.yaml"
    return old.is_file() and yaml.safe_load(old.read_text()) != resolved


def _jsonable(summary: Any) -> Any:
    return yaml.safe_load(yaml.safe_dump(summary)) if isinstance(summary, dict) else None


# What each recipe's plot shows, for the report's list of plots (the recipes write them to <stage>/plots/).
PLOT_CAPTIONS = {
    "loss.png": "SFT: training loss (EMA over the faint raw points), learning rate, validation loss if any, and "
                "held-out pass@1 ± std at each evaluation.",
    "dpo.png": "DPO: loss, implicit-reward accuracy and margin on the training pairs, accuracy on the held-out pairs, "
               "and held-out pass@1 ± std.",
    "reward_length.png": "GRPO: mean reward and accuracy of each step's samples, held-out pass@1 ± std, and mean "
                         "completion length.",
    "update.png": "GRPO: KL to the reference, entropy, clip fraction, grad norm, share of groups whose rewards are "
                  "all equal (no gradient), and sampling temperature.",
}


def plots_section(pipeline: Pipeline) -> str:
    """The training plots of the pipeline's stages (seed copies left out), each with a line on what it shows."""
    copies = {c for names in pipeline.seed_copies.values() for c in names.values()}
    lines = []
    for stage in pipeline.stages:
        for name, caption in PLOT_CAPTIONS.items():
            if stage.name not in copies and (pipeline.run_dir / stage.name / "plots" / name).is_file():
                lines += [f"- **{stage.name}**: {caption}", f"  ![{stage.name} {name}]({stage.name}/plots/{name})"]
    return "\n## Training curves\n\n" + "\n".join(lines) + "\n" if lines else ""


def write_report(pipeline: Pipeline) -> dict:
    """Compare the ``report`` stages in order; write ``report.md`` and a bar chart; print the table."""
    if not pipeline.report:
        return {}
    reports = [load_report(pipeline.run_dir / name) for name in pipeline.report]
    baselines = [pipeline.report.index(pipeline.against[name]) if name in pipeline.against else i - 1 if i else None
                 for i, name in enumerate(pipeline.report)]
    table, drops = compare(reports, baselines)
    text = f"# Pipeline report: {pipeline.path}\n\nHeld-out pass@1 (%), mean ± std across runs; " \
           "change against the row above in brackets.\n\n" + table
    if drops:
        text += "\n**Drops beyond the combined std:**\n\n" + "\n".join(f"- {d}" for d in drops) + "\n"
    text += "\nMajority vote over each problem's N samples (maj@N, % of problems).\n\n" + majority_table(reports)
    pairs = [(pipeline.report[b], name) for name, b in zip(pipeline.report, baselines, strict=True) if b is not None]
    text += "\n" + effects_table(pipeline.run_dir, pairs, pipeline.seed_copies)
    suffix = "" if pipeline.report_file == "report.md" else "-" + Path(pipeline.report_file).stem
    chart = plot_comparison(reports, pipeline.run_dir / "plots" / f"comparison{suffix}.png")
    text += f"\n![pass@1 ± std per model and level]({chart.relative_to(pipeline.run_dir)})\n"
    text += plots_section(pipeline)
    (pipeline.run_dir / pipeline.report_file).write_text(text)
    tqdm.write("\n" + table)
    for d in drops:
        tqdm.write(f"WARNING: {d}")
    return {"table": table, "drops": drops}
