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
before it on the same problems and flags drops larger than the combined std. A ``profiles`` section holds
named variants (``quick``) with their own run directory and per-stage overrides.
"""

from __future__ import annotations

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
from thinktune.evaluation.report import compare, load_report, majority_table, plot_comparison
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
    # Where the comparison goes, in run_dir: a second pipeline over the same run_dir (another file that reuses
    # its finished stages, e.g. configs/demo/objectives.yaml) names its own, so the first one's report stays.
    report_file: str = "report.md"


def load_pipeline(path: str | Path, profile: str = "", overrides: list[str] | None = None) -> Pipeline:
    """Read a pipeline file, apply a profile and ``STAGE.key=value`` overrides, resolve ``{stage}`` refs."""
    path = Path(path)
    spec = read_yaml(path)
    if unknown := set(spec) - {"run_dir", "stages", "report", "report_file", "profiles"}:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; a pipeline has run_dir, stages, report, "
                          "report_file, profiles")
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
    for item in overrides or []:
        key, _, value = item.partition("=")
        stage, _, sub = key.partition(".")
        if stage not in spec["stages"] or not sub or not _:
            raise ConfigError(f"override {item!r}: write STAGE.key=value with STAGE one of {', '.join(spec['stages'])}")
        set_dotted(extra.setdefault(stage, {}), sub, value)
    stages = [_stage(path, Path(run_dir), name, body, extra.get(name, {}), spec["stages"])
              for name, body in spec["stages"].items()]
    for i, stage in enumerate(stages):
        if later := stage.depends - {s.name for s in stages[:i]}:
            raise ConfigError(f"{path}: stage {stage.name!r} reads {sorted(later)}, which run after it; "
                              "order the stages so that each comes after the ones it reads")
    report = spec.get("report", [])
    if missing := [r for r in report if r not in spec["stages"]]:
        raise ConfigError(f"{path}: report names unknown stages {missing}")
    report_file = str(spec.get("report_file", "report.md"))
    if Path(report_file).name != report_file or not report_file.endswith(".md"):
        raise ConfigError(f"{path}: report_file {report_file!r} must be a file name ending in .md (it is written "
                          "in run_dir)")
    return Pipeline(path=path, run_dir=Path(run_dir), stages=stages, report=report, report_file=report_file)


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


def write_report(pipeline: Pipeline) -> dict:
    """Compare the ``report`` stages in order; write ``report.md`` and a bar chart; print the table."""
    if not pipeline.report:
        return {}
    reports = [load_report(pipeline.run_dir / name) for name in pipeline.report]
    table, drops = compare(reports)
    text = f"# Pipeline report: {pipeline.path}\n\nHeld-out pass@1 (%), mean ± std across runs; " \
           "change against the row above in brackets.\n\n" + table
    if drops:
        text += "\n**Drops beyond the combined std:**\n\n" + "\n".join(f"- {d}" for d in drops) + "\n"
    text += "\nMajority vote over each problem's N samples (maj@N, % of problems).\n\n" + majority_table(reports)
    (pipeline.run_dir / pipeline.report_file).write_text(text)
    suffix = "" if pipeline.report_file == "report.md" else "-" + Path(pipeline.report_file).stem
    plot_comparison(reports, pipeline.run_dir / "plots" / f"comparison{suffix}.png")
    tqdm.write("\n" + table)
    for d in drops:
        tqdm.write(f"WARNING: {d}")
    return {"table": table, "drops": drops}
