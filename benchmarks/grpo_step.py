"""Time full GRPO steps (generate, score, update): thinktune against TRL's GRPOTrainer, same work.

Run (TRL lives only in the benchmark's own environment, never in thinktune's dependencies):
    make bench-grpo          # creates .venv-bench with thinktune + trl, then runs this file
    .venv-bench/bin/python benchmarks/grpo_step.py [--rounds 5] [--steps 8] [--no-compile]

Both sides train the same Qwen2 built from a config (hidden 128, 4 layers, 4 heads, random weights, the demo's
character tokenizer) on the embedded world's level-3 prompts, the same 16 prompts at the same step on both
sides, 8 samples each, at most 64 new tokens, temperature 1.0, no KL, every group kept, one policy update per
batch of rollouts, the same learning rate and a 0/1 correctness reward through thinktune's verifier. Both keep
fp32. Where CUDA exists both run on the GPU (``THINKTUNE_DEVICE=cpu`` keeps both on the CPU), each sampling with
its own decoder (TRL's ``generate``, thinktune's lean decoder with CUDA graphs; neither with vLLM). On a GPU
thinktune scores each completion as soon as it ends, behind the decode of the rest: its "score" is then only
the wait left after sampling, and the checks that ran earlier are inside its "generate".

A shared machine's speed drifts by tens of percent over a minute, so the sides alternate: ``--rounds`` rounds,
each a fresh thinktune run then a fresh TRL run from the same starting model, ``--steps`` steps each. The first
step of every run is a warm-up and is not counted (thinktune's first includes torch.compile's compile in round 1;
``--no-compile`` runs thinktune eager). Prints, per round, each side's ``seconds_per_step`` (the median over the
round's timed steps of the whole step's wall time, so that one step slowed by the machine does not move it)
and the round's ratio; then, over all rounds, each side's ``seconds_per_step`` and ``completion_tokens_per_s``
(mean completion tokens per step over that median), its time split (the median of each phase; TRL's "update" is its step minus its sampling call and
the reward function) and the middle half of its step times, and ``speedup_vs_trl``: the median of the rounds'
ratios, with their range. ``--json FILE`` also writes every timed step of both sides.

Where thinktune's time goes less: the lean decoder samples (each prompt prefilled once for its 8
samples); the update forwards each prompt once and every completion token once, unpadded
(``thinktune.train.logprobs``, ``thinktune.modeling.unpadded``), where TRL pads all 128 prompt+completion rows to the
longest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from thinktune.cli import _quiet_transformers
from thinktune.config import load_config
from thinktune.data.io import write_json
from thinktune.data.order import step_units
from thinktune.data.synth import SynthConfig
from thinktune.data.synth import run as run_synth
from thinktune.modeling import build_model
from thinktune.recipes import grpo
from thinktune.rewards import RewardResult, verify
from thinktune.rewards.pool import get_pool
from thinktune.rewards.verify import is_correct
from thinktune.runtime import pick_device
from thinktune.tasks.benchmarks import load_prompts

PROMPTS, GROUP, NEW_TOKENS, LR, SEED = 16, 8, 64, 1e-5, 0
# thinktune's update: completions per forward (all 128 enter every update). A GPU takes them in one forward, as
# TRL does; this CPU runs 32 faster than 128 (0.30 against 0.35-0.40 s per update).
MICRO_BATCH = {"cuda": 128, "cpu": 32}


def correctness(completion: str, answer: str, num_tokens: int, finished: bool, cfg, mode: str) -> RewardResult:
    """0/1 correctness: the reward both sides use."""
    ok = float(is_correct(completion, answer, mode))
    return RewardResult(ok, ok == 1.0, {"accuracy": ok})


def setup(root: Path) -> Path:
    run_synth(SynthConfig(n_train=2000, n_heldout_per_level=2, rollout_prompts=0, output_dir=str(root / "data")))
    build_model.run(build_model.BuildModelConfig(
        corpus=str(root / "data" / "sft_cot.jsonl"), arch="qwen2", hidden_size=128, num_layers=4, num_heads=4,
        num_kv_heads=4, intermediate_size=512, max_position_embeddings=256, output_dir=str(root / "model")))
    return root


def cold_scoring() -> None:
    """Forget every answer checked so far and restart math-verify's workers, so that no run scores with
    what an earlier run (its own side's or the other's, on the same prompts) left cached."""
    verify._math_verify_outcome.cache_clear()
    get_pool().close()


def thinktune_side(root: Path, steps: int, compile: bool, run: int, micro_batch: int,
                   score_behind_decode: bool | None) -> list[dict]:
    """One fresh thinktune GRPO run of ``steps`` steps; per timed step, its phases and completion tokens."""
    out = root / f"thinktune-{run}"
    cfg = load_config(grpo.GRPOConfig, None, [
        f"model.path={root / 'model'}", "model.system_prompt=", f"data.prompts={root / 'data' / 'train_prompts.jsonl'}",
        "data.difficulties=[3]", "reward.name=grpo_step:correctness", f"prompts_per_step={PROMPTS}",
        f"sampling.n={GROUP}", f"sampling.max_new_tokens={NEW_TOKENS}", "sampling.temperature=1.0", "beta=0", "gamma=0",
        "updates_per_batch=1", f"optim.lr={LR}", "optim.warmup_steps=0", "optim.weight_decay=0",
        f"micro_batch_size={micro_batch}", f"model.compile={str(compile).lower()}", f"max_steps={steps}",
        "log.log_every=1", "log.save_every=0", "log.progress=false", "dump_every=0", f"seed={SEED}", f"sampling.seed={SEED}",
        "sampling.backend=thinktune", f"score_behind_decode={str(score_behind_decode).lower()}",
        f"output_dir={out}"])
    cold_scoring()
    grpo.run(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    return [{"time/generate": r["time/generate"], "time/score": r["time/score"], "time/update": r["time/update"],
             "total": r["time/step"], "tokens": r["rollout/length_mean"] * PROMPTS * GROUP} for r in rows]


def trl_side(root: Path, steps: int, run: int, on_gpu: bool) -> list[dict]:
    """One fresh TRL GRPOTrainer run of ``steps`` steps; per timed step, its phases and completion tokens."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    # The prompts thinktune's loop draws, in its order, so that step s of each side answers the same 16
    # prompts (TRL, unshuffled, takes them in sequence).
    rows = load_prompts(str(root / "data" / "train_prompts.jsonl"), difficulties=[3])
    order = [i for step in range(steps) for i in step_units(step * PROMPTS, PROMPTS, len(rows), SEED)]
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": rows[i]["prompt"]}],
                               "answer": rows[i]["answer"]} for i in order])

    phase = {"generate": 0.0, "score": 0.0}  # of the running step
    rows_by_step: list[dict] = []  # per step: total, generate, score

    def reward(completions, answer, **kwargs):
        t = time.perf_counter()
        out = [float(is_correct(c[0]["content"], a)) for c, a in zip(completions, answer, strict=True)]
        phase["score"] += time.perf_counter() - t
        return out

    class TimedGRPOTrainer(GRPOTrainer):
        def _generate_single_turn(self, *args, **kwargs):  # TRL 1.16's sampling call, timed for the split
            t = time.perf_counter()
            out = super()._generate_single_turn(*args, **kwargs)
            phase["generate"] += time.perf_counter() - t
            return out

    lengths: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            phase.update(generate=0.0, score=0.0)
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            rows_by_step.append({"total": time.perf_counter() - self.t, **phase})

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    model = AutoModelForCausalLM.from_pretrained(root / "model")
    args = GRPOConfig(
        output_dir=str(root / f"trl-{run}"), per_device_train_batch_size=PROMPTS * GROUP, num_generations=GROUP,
        max_completion_length=NEW_TOKENS, temperature=1.0, top_p=1.0, beta=0.0, num_iterations=1,
        gradient_accumulation_steps=1, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_steps=steps, logging_steps=1, report_to="none", use_cpu=not on_gpu, save_strategy="no",
        shuffle_dataset=False, seed=SEED,
        # TRL's defaults turn on bf16 autocast and gradient checkpointing; thinktune runs neither here.
        bf16=False, fp16=False, gradient_checkpointing=False)
    trainer = TimedGRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data,
                               processing_class=tokenizer, callbacks=[Timer()])
    cold_scoring()
    trainer.train()
    return [{"time/generate": r["generate"], "time/score": r["score"],
             "time/update": r["total"] - r["generate"] - r["score"], "total": r["total"],
             "tokens": length * PROMPTS * GROUP} for r, length in zip(rows_by_step, lengths, strict=True)][1:]


def summary(steps: list[dict]) -> dict:
    """Median step time and phases, the steps' interquartile range (how much the machine moved them), and
    completion tokens per second (mean tokens per step over the median step)."""
    q1, median, q3 = statistics.quantiles([r["total"] for r in steps], n=4)
    tokens = statistics.fmean(r["tokens"] for r in steps)
    phases = {k: statistics.median(r[k] for r in steps) for k in ("time/generate", "time/score", "time/update")}
    return {"seconds_per_step": median, "spread": (q1, q3), "completion_tokens_per_s": tokens / median,
            "tokens_per_step": tokens} | phases


def report(name: str, side: dict) -> None:
    print(f"{name:<10} seconds_per_step: {side['seconds_per_step']:.3f}  completion_tokens_per_s: "
          f"{side['completion_tokens_per_s']:.0f}  (generate {side['time/generate']:.3f} s, score "
          f"{side['time/score']:.3f} s, update {side['time/update']:.3f} s; middle half of the steps "
          f"{side['spread'][0]:.3f}-{side['spread'][1]:.3f} s; {side['tokens_per_step']:.0f} completion tokens/step)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternations of a thinktune run and a TRL run")
    parser.add_argument("--steps", type=int, default=8, help="steps per run, the first a warm-up")
    parser.add_argument("--micro-batch", type=int, default=None,
                        help="thinktune's completions per update forward (default: 128 on a GPU, 32 on a CPU)")
    parser.add_argument("--no-compile", action="store_true", help="thinktune without torch.compile")
    parser.add_argument("--score-after-decode", action="store_true",
                        help="thinktune scores after sampling ends, also on a GPU (where the default scores "
                             "each completion as it ends, beside the decode)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write every timed step of both sides (phases, tokens) to this file")
    args = parser.parse_args()
    if args.steps < 4:
        parser.error("--steps: at least 4 (one warm-up, then enough steps for a median and quartiles)")
    if args.micro_batch is not None and args.micro_batch < 1:
        parser.error("--micro-batch: at least 1")
    _quiet_transformers()
    import sys

    sys.path.insert(0, str(Path(__file__).parent))  # so "grpo_step:correctness" imports this file
    on_gpu = pick_device().type == "cuda"
    micro_batch = args.micro_batch if args.micro_batch is not None else MICRO_BATCH["cuda" if on_gpu else "cpu"]
    root = setup(Path(tempfile.mkdtemp(prefix="grpo-step-")))
    device = torch.cuda.get_device_name() if on_gpu else f"cpu, {torch.get_num_threads()} threads"
    print(f"device {device} (both sides); Qwen2 h128 L4; {PROMPTS} prompts x {GROUP} samples, "
          f"<= {NEW_TOKENS} new tokens, T=1.0, no KL, one update per batch (thinktune: {micro_batch} completions "
          f"per forward); {args.rounds} rounds of {args.steps - 1} timed steps per side")
    try:
        import trl  # noqa: F401
    except ImportError:
        trl = None
    ours, theirs, ratios = [], [], []

    def save_steps() -> None:  # after every run, so that a run cut short keeps what it measured
        if args.json:
            write_json(args.json, {"device": device, "micro_batch": micro_batch, "thinktune": ours, "trl": theirs})

    for run in range(args.rounds):
        ours_run = thinktune_side(root, args.steps, not args.no_compile, run, micro_batch,
                                  False if args.score_after_decode else None)
        ours += ours_run
        save_steps()
        if trl is None:
            continue
        theirs_run = trl_side(root, args.steps, run, on_gpu)
        theirs += theirs_run
        save_steps()
        a, b = summary(ours_run), summary(theirs_run)
        ratios.append(a["completion_tokens_per_s"] / b["completion_tokens_per_s"])
        print(f"round {run + 1}: thinktune {a['seconds_per_step']:.3f} s/step, trl {b['seconds_per_step']:.3f} "
              f"s/step, ratio {ratios[-1]:.2f}", flush=True)
    report("thinktune", summary(ours))
    if trl is None:
        print("trl is not installed in this environment: run `make bench-grpo` (it creates .venv-bench)")
        return
    report("trl", summary(theirs))
    print(f"speedup_vs_trl: {statistics.median(ratios):.2f} (median of {len(ratios)} rounds; "
          f"range {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
