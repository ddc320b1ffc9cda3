"""Rollout DPO (Phi-4-mini-reasoning stage 3): prefer correct rollouts over incorrect ones.

Run:
    thinktune dpo --config configs/demo/dpo.yaml model.path=runs/demo/sft/final data.train=pairs.jsonl

The loop: read preference rows -> render prompt + completion with the chat template (the completion is
the assistant turn, its end-of-turn token included) -> summed log-probs of the completion under the
frozen reference (the starting model), computed once and cached in ``ref_logps.pt`` -> AdamW on
``thinktune.train.losses.dpo_loss`` -> implicit-reward metrics on train and held-out pairs -> checkpoints that
resume exactly, as in SFT.

Rows missing ``chosen`` or ``rejected`` are errors naming the file and line. A row whose chosen and
rejected texts are identical carries no preference: it is skipped and counted (``identical`` in the
summary), never trained on.

Scale: under ``torchrun`` the policy and reference are sharded with FSDP2 and each rank takes its share
of every step's pairs; the loss is divided by the global ``batch_size``, so N ranks give the one-process
loss. With ``model.lora.r > 0`` the reference is the policy with its adapters disabled.

Metrics: the implicit rewards r = beta * (log pi - log ref) of each completion, under TRL DPOTrainer's names
in thinktune's namespaces: ``train/rewards/chosen`` is TRL's ``rewards/chosen`` and ``eval/rewards/chosen`` its
``eval_rewards/chosen``; likewise ``rewards/rejected``, ``rewards/margins`` (chosen minus rejected) and
``rewards/accuracies`` (the share of pairs whose chosen reward is the higher). ``train/loss`` and ``eval/loss``
are the DPO loss.

Departures from the paper: the report gives lr 5e-7 and one epoch but not beta (docs/recipe.md section 3.3,
unconfirmed); we default to beta 0.1, the value of the DPO paper. Reward accuracy counts a tie (chosen and
rejected rewards equal, as before the first update) as half right, so it starts at 50%, the chance level
(TRL counts a tie as wrong, so its accuracy starts at 0).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from thinktune import runtime
from thinktune.config import LogConfig, ModelConfig, OptimConfig, Resume, check_sizes, to_dict
from thinktune.data.chat import Example, pad_batch, prompt_messages, render_sft
from thinktune.data.io import read_jsonl_lines, write_json
from thinktune.data.order import step_units
from thinktune.errors import ConfigError, DataError
from thinktune.modeling import lora, models
from thinktune.modeling.chat_format import prompt_overhead, too_long_note
from thinktune.tracking import MetricsLogger, plot_curves, progress
from thinktune.train import checkpoint, distributed
from thinktune.train.heldout import (
    HeldoutConfig,
    HeldoutEval,
    load_heldout,
    log_before_training,
    log_if_due,
    summary_of,
)
from thinktune.train.logprobs import next_token_logps
from thinktune.train.losses import chosen_nll, dpo_loss
from thinktune.train.optim import build_optimizer, build_scheduler
from thinktune.train.run_dir import Run, claim, release


@dataclass
class DPODataConfig:
    train: str = ""  # preference JSONL: {"id", "prompt", "chosen", "rejected"}
    eval: str = ""  # held-out preference JSONL for implicit-reward accuracy
    max_seq_len: int = 16384  # pairs with a longer side are dropped and counted
    limit: int = 0


@dataclass
class DPOConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # the policy's start, and the frozen reference
    data: DPODataConfig = field(default_factory=DPODataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-7, warmup_steps=0, weight_decay=0.0))
    log: LogConfig = field(default_factory=LogConfig)
    beta: float = 0.1
    label_smoothing: float = 0.0  # conservative DPO: the chance that a preference label is wrong
    nll_weight: float = 0.0  # RPO: weight of the chosen completions' per-token NLL (0: plain DPO, the paper)
    batch_size: int = 32  # pairs per optimizer step
    micro_batch_size: int = 4  # pairs per forward pass (each pass runs 2x this many sequences)
    epochs: float = 1.0
    max_steps: int = 0
    eval_every: int = 0  # steps between held-out metrics (0: only before and after training)
    heldout: HeldoutConfig = field(default_factory=HeldoutConfig)  # held-out accuracy (train/heldout.py)
    seed: int = 0
    output_dir: str = "runs/dpo"
    resume: Resume = "auto"  # a run already in output_dir: auto continues it if its settings match (config.Resume)

    def __post_init__(self) -> None:
        check_sizes(batch_size=self.batch_size, micro_batch_size=self.micro_batch_size)
        if self.max_steps < 0 or self.epochs < 0:
            raise ConfigError(f"max_steps={self.max_steps} and epochs={self.epochs} must be >= 0")
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(f"batch_size={self.batch_size} is not a multiple of micro_batch_size="
                              f"{self.micro_batch_size}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing={self.label_smoothing} must be in [0, 0.5)")
        if self.nll_weight < 0:
            raise ConfigError(f"nll_weight={self.nll_weight} must be >= 0")
        if self.beta <= 0:
            raise ConfigError(f"beta={self.beta} must be positive")
        if not self.data.train:
            raise ConfigError("data.train is empty; set it to a preference JSONL (data.train=FILE)")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ConfigError("set max_steps > 0 or epochs > 0")


Pair = tuple[Example, Example]


def load_pairs(path: str, tokenizer, cfg: DPOConfig) -> tuple[list[Pair], dict[str, int]]:
    """Render preference rows into (chosen, rejected) examples; count what is skipped and why."""
    rows = read_jsonl_lines(path, kind="preference")[: cfg.data.limit or None]
    stats = {"rows": len(rows), "identical": 0, "too_long": 0}
    pairs, too_long = [], []
    for lineno, row in rows:
        if row["chosen"] == row["rejected"]:
            stats["identical"] += 1
            continue
        sides = tuple(render_sft(tokenizer, [*prompt_messages(row["prompt"]), {"role": "assistant", "content": text}],
                                 where=f"{path}:{lineno}")
                      for text in (row["chosen"], row["rejected"]))
        if max(len(e.input_ids) for e in sides) > cfg.data.max_seq_len:
            too_long.append(max(len(e.input_ids) for e in sides))
            continue
        pairs.append(sides)
    stats["too_long"] = len(too_long)
    if too_long:
        runtime.print0(f"[dpo] {path}: pairs " + too_long_note(too_long, cfg.data.max_seq_len,
                                                               prompt_overhead(tokenizer), "data.max_seq_len"))
    if not pairs:
        raise DataError(f"{path}: no usable pairs ({stats}); check that chosen and rejected differ")
    return pairs, stats


def pair_logps(model, pairs: list[Pair], pad_id: int, rt: runtime.Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs of chosen and rejected, one forward pass over both. Returns ([B], [B])."""
    batch = {k: v.to(rt.device) for k, v in pad_batch([p[0] for p in pairs] + [p[1] for p in pairs], pad_id).items()}
    labels = batch.pop("labels")  # [2B, T]: the completion's tokens, IGNORE_INDEX elsewhere
    with torch.autocast(rt.device.type, dtype=rt.dtype, enabled=rt.dtype != torch.float32):
        # losses.sequence_logps of the logits, computed without them where the head allows
        logps = next_token_logps(model, batch, labels).sum(-1)  # [2B]
    return logps[: len(pairs)], logps[len(pairs):]


@torch.no_grad()
def all_pair_logps(model, pairs: list[Pair], size: int, pad_id: int, rt: runtime.Runtime) -> torch.Tensor:
    """[N, 2] summed log-probs (chosen, rejected) of every pair, in micro-batches, without gradients; under
    torchrun each rank scores its share of the micro-batches and every rank gets all N rows."""
    was_training = model.training
    model.eval()
    starts = range(0, len(pairs), size)
    mine = []  # (micro-batch index, its rows)
    for k in distributed.rank_passes(len(starts), rt):
        first = starts[0 if k is None else k]  # None: a filler pass, result dropped
        chunk = pairs[first:first + size]
        logps = torch.stack(pair_logps(model, chunk, pad_id, rt), dim=1).float().cpu()  # [b, 2]
        if k is not None:
            mine.append((k, logps.tolist()))
    distributed.reshard(model)
    model.train(was_training)
    rows = [row for _, part in sorted(distributed.gather_lists(mine)) for row in part]
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 2)


def reward_metrics(prefix: str, losses: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor) -> dict:
    margin = chosen - rejected
    accuracy = (margin > 0).float() + 0.5 * (margin == 0).float()
    return {f"{prefix}/loss": losses.mean().item(), f"{prefix}/rewards/chosen": chosen.mean().item(),
            f"{prefix}/rewards/rejected": rejected.mean().item(),
            f"{prefix}/rewards/accuracies": accuracy.mean().item(), f"{prefix}/rewards/margins": margin.mean().item()}


def evaluate_pairs(model, pairs: list[Pair], ref: torch.Tensor, cfg: DPOConfig, pad_id: int,
                   rt: runtime.Runtime) -> dict:
    logps = all_pair_logps(model, pairs, cfg.micro_batch_size, pad_id, rt)
    return reward_metrics("eval", *dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], cfg.beta,
                                            cfg.label_smoothing))


def reference_logps(cfg: DPOConfig, run: Run, tokenizer, sets: dict[str, list[Pair]], pad_id: int,
                    rt: runtime.Runtime, policy: torch.nn.Module | None) -> dict[str, torch.Tensor]:
    """Reference log-probs of every pair, computed once from the starting model and cached for resumes.

    The cache is keyed by the run's fingerprint (config, data files, starting model): log-probs computed for
    other data or another model are recomputed, never reused. With LoRA the reference is ``policy`` with its
    adapters disabled; otherwise the starting model is loaded (and sharded like the policy) for this pass only.
    Each rank scores its share of the pairs (``all_pair_logps``) and every rank keeps all of them.
    """
    cache = run.out / "ref_logps.pt"
    if cache.is_file():
        try:
            cached = torch.load(cache)
        except Exception as e:  # noqa: BLE001 - a torn cache file is recomputed, whatever the failure
            cached = {}
            runtime.print0(f"[dpo] {cache} is unreadable ({type(e).__name__}); recomputing it")
        if cached.get("key") == run.digest:
            return cached["logps"]
        if cached:
            runtime.print0(f"[dpo] {cache} was computed for other settings, data or model; recomputing it")
    if lora.enabled(policy):
        reference = lora.ReferenceView(policy)
    else:
        start = models.load_model(cfg.model, tokenizer, rt.device, torch.float32).requires_grad_(False)
        reference = distributed.prepare(start, cfg.model, rt, trainable=False)
    ref = {name: all_pair_logps(reference, pairs, cfg.micro_batch_size, pad_id, rt) for name, pairs in sets.items()}
    del reference
    if rt.is_main:
        tmp = cache.with_suffix(".tmp")
        torch.save({"key": run.digest, "logps": ref}, tmp)
        tmp.replace(cache)
    distributed.barrier()
    return ref


def policy_and_reference(cfg: DPOConfig, run: Run, tokenizer, sets: dict[str, list[Pair]], pad_id: int,
                         rt: runtime.Runtime, heldout_eval: HeldoutEval | None = None) -> tuple[torch.nn.Module, dict]:
    """The policy to train and the reference log-probs. With LoRA the reference is the policy with its
    adapters off, so the policy loads first; without, the starting model is loaded, used and freed before
    the policy loads: one full model in memory at a time. ``heldout_eval`` gets its sampler of the policy."""
    def load_policy() -> torch.nn.Module:
        resume_from = run.resume_from and run.resume_from.path
        policy = lora.load_policy(cfg.model, resume_from, tokenizer, rt.device)
        if heldout_eval:  # before sharding: thinktune's sampler reads whole weights
            heldout_eval.build_sampler(policy)
        return distributed.prepare(policy, cfg.model, rt)

    if cfg.model.lora.r:
        model = load_policy()
        return model, reference_logps(cfg, run, tokenizer, sets, pad_id, rt, model)
    ref = reference_logps(cfg, run, tokenizer, sets, pad_id, rt, None)
    return load_policy(), ref


def run(cfg: DPOConfig) -> dict:
    rt = runtime.init(cfg.model.dtype, cfg.seed)
    distributed.check_divisible("batch_size", cfg.batch_size, cfg.micro_batch_size, rt)
    tokenizer = models.load_tokenizer(cfg.model)
    pad_id = tokenizer.pad_token_id
    train, stats = load_pairs(cfg.data.train, tokenizer, cfg)
    heldout = load_pairs(cfg.data.eval, tokenizer, cfg)[0] if cfg.data.eval else []
    heldout_eval = load_heldout(cfg.heldout, cfg.model, tokenizer, rt, "dpo")  # None when heldout.every=0
    # Only with the inputs checked is the run directory claimed: locked, matched against its checkpoint, written.
    run_dir = claim(cfg, "dpo", rt)
    out = run_dir.out
    model, ref = policy_and_reference(cfg, run_dir, tokenizer, {"train": train, "eval": heldout}, pad_id, rt,
                                      heldout_eval)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(train) / cfg.batch_size))
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    start = checkpoint.resume(run_dir.resume_from, model, optimizer, scheduler, "dpo")
    logger = MetricsLogger(out / "metrics.jsonl", resume_step=start, enabled=rt.is_main,
                           report_to=cfg.log.report_to, config=to_dict(cfg), name=cfg.log.run_name)
    runtime.print0(f"[dpo] {stats['rows']} rows: {stats['identical']} identical skipped, {stats['too_long']} "
                   f"too long; {len(train)} train pairs, {len(heldout)} held-out; {total_steps} steps of "
                   f"{cfg.batch_size} on {rt.world_size} rank(s), beta {cfg.beta}")
    summary: dict = {"data": stats, "train_pairs": len(train), "heldout_pairs": len(heldout), "steps": total_steps}
    if heldout and start == 0:
        summary["eval_before"] = evaluate_pairs(model, heldout, ref["eval"], cfg, pad_id, rt)
        logger.log(0, summary["eval_before"])
    log_before_training(heldout_eval, model, start, logger)

    chosen_tokens = torch.tensor([sum(x != -100 for x in c.labels[1:]) for c, _ in train])  # [N]
    bar = progress(total_steps, start, "dpo", cfg.log.progress and rt.is_main)
    t0 = time.perf_counter()
    for step in range(start, total_steps):
        idx = distributed.shard(step_units(step * cfg.batch_size, cfg.batch_size, len(train), cfg.seed), rt)
        parts = []
        for i in range(0, len(idx), cfg.micro_batch_size):
            mb = idx[i:i + cfg.micro_batch_size]
            chosen, rejected = pair_logps(model, [train[j] for j in mb], pad_id, rt)
            r = ref["train"][mb].to(rt.device)
            losses, rc, rr = dpo_loss(chosen, rejected, r[:, 0], r[:, 1], cfg.beta, cfg.label_smoothing)
            if cfg.nll_weight:
                losses = losses + cfg.nll_weight * chosen_nll(chosen, chosen_tokens[mb].to(rt.device))
            (losses.sum() * distributed.loss_scale(rt) / cfg.batch_size).backward()  # global batch_size
            parts.append((losses.detach(), rc, rr))  # on the device: a copy now would wait for the GPU
        parts = [tuple(x.cpu() for x in part) for part in parts]
        parts = distributed.gather_lists(parts)  # every rank's pairs, for the metrics
        grad_norm = distributed.clip_grad_norm(model, cfg.optim.grad_clip)
        lr = scheduler.get_last_lr()[0]  # the rate this step used; scheduler.step() moves to the next one
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        metrics = reward_metrics("train", *(torch.cat(x) for x in zip(*parts, strict=True)))
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", acc=f"{metrics['train/rewards/accuracies']:.2f}")
        if done % cfg.log.log_every == 0 or done == total_steps:
            logger.log(done, {**metrics, "train/grad_norm": float(grad_norm), "train/lr": lr,
                              "train/pairs_per_s": (done - start) * cfg.batch_size / (time.perf_counter() - t0),
                              **runtime.memory_metrics(rt.device)})
        if heldout and cfg.eval_every and done % cfg.eval_every == 0 and done < total_steps:
            logger.log(done, evaluate_pairs(model, heldout, ref["eval"], cfg, pad_id, rt))
        log_if_due(heldout_eval, model, done, total_steps, logger)  # before the checkpoint: a resume keeps it
        if cfg.log.save_every and done % cfg.log.save_every == 0 and done < total_steps:
            checkpoint.save(out, done, model, tokenizer, optimizer, scheduler,
                            {"position": done * cfg.batch_size}, cfg.log.keep_checkpoints,
                            cfg.log.lora_merged_checkpoints, run_dir.fingerprint)
    bar.close()

    if heldout:
        summary["eval_after"] = evaluate_pairs(model, heldout, ref["eval"], cfg, pad_id, rt)
        logger.log(total_steps, summary["eval_after"])
    checkpoint.export(model, tokenizer, out / "final")  # its barrier also means metrics.jsonl is complete
    summary |= summary_of(heldout_eval, out / "metrics.jsonl")
    if rt.is_main:
        plot_curves(out / "metrics.jsonl", ["train/loss", "train/rewards/accuracies", "train/rewards/margins",
                                            "eval/rewards/accuracies", "heldout/pass@1"], out / "plots" / "dpo.png",
                    title=f"DPO: {out}")
        write_json(out / "summary.json", summary)
    if heldout:
        before, after = summary.get("eval_before", {}), summary["eval_after"]
        runtime.print0(f"[dpo] held-out reward accuracy {before.get('eval/rewards/accuracies', float('nan')):.3f} "
                       f"-> {after['eval/rewards/accuracies']:.3f}, margin {after['eval/rewards/margins']:+.3f}")
    runtime.print0(f"[dpo] done; model in {out / 'final'}")
    logger.close()
    release(out)
    return summary
