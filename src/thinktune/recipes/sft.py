"""SFT distillation on verified teacher traces (Phi-4-reasoning section 1; Phi-4-mini-reasoning stage 2).

Run:
    thinktune sft --config configs/demo/sft.yaml [key.sub=value ...]

The loop: load rows -> reject traces whose final answer fails the verifier (rejection sampling) -> render
with the chat template, loss on the final assistant turn only -> optionally pack -> AdamW with warm-up and
decay, gradient accumulation and clipping -> checkpoint every ``log.save_every`` steps -> ``final/``.

A run that finds a checkpoint in its output directory resumes from it (weights, optimizer, scheduler, RNG
and data position) and produces the same losses as an uninterrupted run.

Scale: ``torchrun --nproc_per_node=N -m thinktune.cli sft ...`` shards the model with FSDP2 and gives each
rank a contiguous share of every step's batch (``thinktune.train.distributed``); the loss is normalised by the
whole step's token count, so N ranks give the one-process loss. ``model.lora.r > 0`` trains LoRA adapters.

Departures from the paper: the Phi-4-reasoning report does not say whether it packed SFT data or how it
masked the loss (docs/recipe.md section 1.3, unconfirmed); we take the loss on the final assistant turn only and
leave packing off by default, as Phi-4-mini-reasoning did for SFT so that the model learns when to stop.
Rows longer than ``data.max_seq_len`` are dropped and counted rather than truncated, since a truncated
trace would teach the model to stop mid-thought.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from thinktune import runtime
from thinktune.config import LogConfig, ModelConfig, OptimConfig, Resume, check_sizes, to_dict
from thinktune.data.chat import IGNORE_INDEX, Example, pack_examples, packed_batch, pad_batch, render_sft
from thinktune.data.io import read_jsonl_lines, write_json
from thinktune.data.order import step_units
from thinktune.errors import ConfigError, DataError
from thinktune.modeling import lora, models
from thinktune.modeling.chat_format import prompt_overhead, too_long_note
from thinktune.rewards.verify import is_correct_batch
from thinktune.tracking import MetricsLogger, plot_curves, progress, read_metrics
from thinktune.train import checkpoint, distributed
from thinktune.train.heldout import HeldoutConfig, load_heldout, log_before_training, log_if_due, summary_of
from thinktune.train.logprobs import next_token_logps
from thinktune.train.optim import build_optimizer, build_scheduler
from thinktune.train.run_dir import claim, release


@dataclass
class SFTDataConfig:
    train: str = ""  # SFT JSONL: {"id", "messages", "answer"?}
    eval: str = ""  # optional held-out SFT JSONL for a validation loss
    max_seq_len: int = 32768
    packing: bool = False  # pack examples into max_seq_len rows, no attention across them
    verify: bool = True  # rejection sampling: drop rows whose final answer fails the verifier
    limit: int = 0  # use only the first N rows (0: all)


@dataclass
class SFTConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    output_dir: str = "runs/sft"
    seed: int = 0
    batch_size: int = 32  # examples (packed rows when packing) per optimizer step
    micro_batch_size: int = 4  # examples per forward pass; grad_accum = batch_size / micro_batch_size
    epochs: float = 2.0  # passes over the data; ignored when max_steps > 0
    max_steps: int = 0
    eval_every: int = 0  # steps between validation losses (0: only at the end, if data.eval is set)
    heldout: HeldoutConfig = field(default_factory=HeldoutConfig)  # held-out accuracy (train/heldout.py)
    resume: Resume = "auto"  # a run already in output_dir: auto continues it if its settings match (config.Resume)

    def __post_init__(self) -> None:
        check_sizes(batch_size=self.batch_size, micro_batch_size=self.micro_batch_size)
        if self.max_steps < 0 or self.epochs < 0:
            raise ConfigError(f"max_steps={self.max_steps} and epochs={self.epochs} must be >= 0")
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(f"batch_size={self.batch_size} is not a multiple of micro_batch_size="
                              f"{self.micro_batch_size}; gradient accumulation needs whole micro-batches")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ConfigError("set max_steps > 0 or epochs > 0")
        if not self.data.train:
            raise ConfigError("data.train is empty; set it to an SFT JSONL file (data.train=FILE)")

    @property
    def grad_accum(self) -> int:
        return self.batch_size // self.micro_batch_size


def load_examples(path: str, tokenizer, cfg: SFTConfig) -> tuple[list[Example], dict[str, int]]:
    """Read, verify and render SFT rows. Returns the examples and counts of what was kept and dropped."""
    rows = read_jsonl_lines(path, kind="sft")
    if cfg.data.limit:
        rows = rows[: cfg.data.limit]
    stats = {"rows": len(rows), "verified": 0, "rejected": 0, "unverified": 0, "too_long": 0}
    # Every answer checked up front, several at once (math-verify runs in worker processes).
    checked = [row for _, row in rows if cfg.data.verify and "answer" in row]
    correct = iter(is_correct_batch([r["messages"][-1]["content"] for r in checked], [str(r["answer"]) for r in checked],
                                    [r.get("mode", "math") for r in checked]))
    examples, too_long = [], []
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        if cfg.data.verify and "answer" in row:
            if not next(correct):
                stats["rejected"] += 1
                continue
            stats["verified"] += 1
        else:
            stats["unverified"] += 1
        example = render_sft(tokenizer, row["messages"], where=where)
        if len(example.input_ids) > cfg.data.max_seq_len:
            too_long.append(len(example.input_ids))
            continue
        examples.append(example)
    stats["too_long"] = len(too_long)
    if too_long:
        runtime.print0(f"[sft] {path}: " + too_long_note(too_long, cfg.data.max_seq_len, prompt_overhead(tokenizer),
                                                         "data.max_seq_len"))
    if not examples:
        raise DataError(f"{path}: no usable rows after verification ({stats}); check answers and max_seq_len")
    return examples, stats


def make_units(examples: list[Example], cfg: SFTConfig) -> list[list[Example]]:
    """Training units: one example each, or packed bins of examples."""
    if cfg.data.packing:
        return pack_examples(examples, cfg.data.max_seq_len)
    return [[e] for e in examples]


def collate(units: list[list[Example]], pad_id: int, packing: bool) -> dict[str, torch.Tensor]:
    return packed_batch(units, pad_id) if packing else pad_batch([u[0] for u in units], pad_id)


def forward_loss(model, batch: dict[str, torch.Tensor], rt: runtime.Runtime) -> tuple[torch.Tensor, int]:
    """(summed NLL of the labelled tokens, their count): ``losses.sft_nll_sum`` of the model's logits, computed
    without them where the head allows (``logprobs.next_token_logps``)."""
    labels = batch.pop("labels")
    with torch.autocast(rt.device.type, dtype=rt.dtype, enabled=rt.dtype != torch.float32):
        logps = next_token_logps(model, batch, labels)  # [B, T]
    return -logps.sum(), int((labels[:, 1:] != IGNORE_INDEX).sum())


@torch.no_grad()
def validation_loss(model, units: list[list[Example]], cfg: SFTConfig, pad_id: int, rt: runtime.Runtime) -> float:
    """Mean token NLL over ``units``; under torchrun each rank forwards its share of the micro-batches."""
    model.eval()
    batches = [units[i:i + cfg.micro_batch_size] for i in range(0, len(units), cfg.micro_batch_size)]
    total, count = 0.0, 0
    for k in distributed.rank_passes(len(batches), rt):
        batch = collate(batches[0 if k is None else k], pad_id, cfg.data.packing)  # None: a filler pass
        nll, n = forward_loss(model, {key: v.to(rt.device) for key, v in batch.items()}, rt)
        if k is not None:
            total, count = total + float(nll), count + n
    total, count = distributed.all_sum(total, count)
    distributed.reshard(model)
    model.train()
    return total / max(count, 1)


def run(cfg: SFTConfig) -> dict:
    rt = runtime.init(cfg.model.dtype, cfg.seed)
    distributed.check_divisible("batch_size", cfg.batch_size, cfg.micro_batch_size, rt)
    tokenizer = models.load_tokenizer(cfg.model)
    examples, data_stats = load_examples(cfg.data.train, tokenizer, cfg)
    units = make_units(examples, cfg)
    eval_units = make_units(load_examples(cfg.data.eval, tokenizer, cfg)[0], cfg) if cfg.data.eval else []
    heldout_eval = load_heldout(cfg.heldout, cfg.model, tokenizer, rt, "sft")  # None when heldout.every=0
    # Only with the inputs checked is the run directory claimed: locked, matched against its checkpoint, written.
    run_dir = claim(cfg, "sft", rt)
    out, resume_from = run_dir.out, run_dir.resume_from

    # Weights come from the last checkpoint when resuming; master weights stay fp32, bf16 is autocast.
    model = lora.load_policy(cfg.model, resume_from and resume_from.path, tokenizer, rt.device)
    if heldout_eval:  # before sharding: thinktune's sampler reads whole weights
        heldout_eval.build_sampler(model)
    model = distributed.prepare(model, cfg.model, rt)
    steps_per_epoch = max(1, len(units) // cfg.batch_size)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    runtime.print0(f"[sft] {data_stats['rows']} rows: {data_stats['rejected']} rejected by the verifier, "
                   f"{data_stats['too_long']} too long, {len(examples)} kept -> {len(units)} units; "
                   f"{total_steps} steps of {cfg.batch_size} ({rt.world_size} ranks x "
                   f"{cfg.grad_accum // rt.world_size} x {cfg.micro_batch_size}) on {rt.device}")

    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    start = checkpoint.resume(resume_from, model, optimizer, scheduler, "sft")
    logger = MetricsLogger(out / "metrics.jsonl", resume_step=start, enabled=rt.is_main,
                           report_to=cfg.log.report_to, config=to_dict(cfg), name=cfg.log.run_name)
    pad_id = tokenizer.pad_token_id

    # Labelled next-token targets per unit, counted once rather than every step (rows can be 32K tokens).
    unit_tokens = [sum(sum(1 for x in e.labels[1:] if x != -100) for e in u) for u in units]
    bar = progress(total_steps, start, "sft", cfg.log.progress and rt.is_main)
    log_before_training(heldout_eval, model, start, logger)
    t0, tokens = time.perf_counter(), 0
    for step in range(start, total_steps):
        idx = step_units(step * cfg.batch_size, cfg.batch_size, len(units), cfg.seed)
        mine = distributed.shard(idx, rt)
        micro = [mine[i:i + cfg.micro_batch_size] for i in range(0, len(mine), cfg.micro_batch_size)]
        # Normalise by the whole step's token count (all ranks) so accumulation and data parallelism both
        # match one large batch exactly.
        step_tokens = sum(unit_tokens[i] for i in idx)
        losses = []  # per micro-batch, left on the device: reading each would wait for the GPU every time
        for mb in micro:
            batch = collate([units[i] for i in mb], pad_id, cfg.data.packing)
            nll, _ = forward_loss(model, {k: v.to(rt.device) for k, v in batch.items()}, rt)
            (nll * distributed.loss_scale(rt) / step_tokens).backward()
            losses.append(nll.detach())
            tokens += int(batch["input_ids"].numel())  # every position forwarded: prompt, padding, labels
        grad_norm = distributed.clip_grad_norm(model, cfg.optim.grad_clip)
        lr = scheduler.get_last_lr()[0]  # the rate this step used; scheduler.step() moves to the next one
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum = float(torch.stack(losses).cpu().double().sum())  # one transfer per step
        loss_sum, all_tokens = distributed.all_sum(loss_sum, tokens)
        loss = loss_sum / step_tokens
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if done % cfg.log.log_every == 0 or done == total_steps:
            elapsed = time.perf_counter() - t0
            logger.log(done, {"train/loss": loss, "train/grad_norm": float(grad_norm),
                              # all ranks' input tokens, padding included (HF Trainer's input tokens), per second of
                              # wall time since the run (or its resume) began, evaluations and checkpoints included
                              "train/lr": lr, "train/input_tokens_per_s": all_tokens / elapsed,
                              "train/epoch": done * cfg.batch_size / len(units), **runtime.memory_metrics(rt.device)})
        if eval_units and cfg.eval_every and done % cfg.eval_every == 0:
            logger.log(done, {"eval/loss": validation_loss(model, eval_units, cfg, pad_id, rt)})
        log_if_due(heldout_eval, model, done, total_steps, logger)  # before the checkpoint: a resume keeps it
        if cfg.log.save_every and done % cfg.log.save_every == 0 and done < total_steps:
            checkpoint.save(out, done, model, tokenizer, optimizer, scheduler,
                            {"position": done * cfg.batch_size}, cfg.log.keep_checkpoints,
                            cfg.log.lora_merged_checkpoints, run_dir.fingerprint)
    bar.close()

    summary = {"steps": total_steps, "data": data_stats, "units": len(units)}
    if eval_units:
        summary["eval_loss"] = validation_loss(model, eval_units, cfg, pad_id, rt)
        logger.log(total_steps, {"eval/loss": summary["eval_loss"]})
    checkpoint.export(model, tokenizer, out / "final")  # its barrier also means metrics.jsonl is complete
    summary["final_loss"] = _last(out / "metrics.jsonl", "train/loss")
    summary |= summary_of(heldout_eval, out / "metrics.jsonl")
    if rt.is_main:
        plot_curves(out / "metrics.jsonl", ["train/loss", "train/lr", "eval/loss", "heldout/pass@1"], out / "plots" / "loss.png",
                    title=f"SFT: {out}")
        write_json(out / "summary.json", summary)
    runtime.print0(f"[sft] done: final loss {summary['final_loss']:.4f}; model in {out / 'final'}")
    logger.close()
    release(out)
    return summary


def _last(metrics_path: Path, key: str) -> float:
    rows = [r for r in read_metrics(metrics_path) if key in r]
    return float(rows[-1][key]) if rows else float("nan")
