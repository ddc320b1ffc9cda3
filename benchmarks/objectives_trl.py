"""Parity of thinktune's GRPO-family objectives with TRL's GRPOTrainer loss, on the same hand-built tensors.

Run (TRL lives only in the benchmark's own environment, never in thinktune's dependencies or tests):
    make bench-objectives    # creates .venv-bench with thinktune + trl, then runs this file
    .venv-bench/bin/python benchmarks/objectives_trl.py [--dtype float64|float32]

For each objective, thinktune's loss is ``losses.aggregate(losses.grpo_token_loss(...))`` with the preset
``policy_loss.resolve`` gives it; TRL's is its own ``GRPOTrainer._compute_loss``, configured by a real
``trl.GRPOConfig`` with the matching ``loss_type``, ``importance_sampling_level`` and epsilons (derived from
thinktune's preset clips, so that the table also checks the presets against TRL's settings). Both see the
same current log-probs (a leaf tensor), old log-probs, advantages and completion mask; the table gives
|loss difference| and the largest |difference| of the gradient with respect to the current log-probs, and
exits 1 when either passes 1e-6 (or when a case's gradient is zero everywhere, which would prove nothing).

How TRL's code is called: ``_compute_loss(model, inputs)`` takes a batch dict and gets the current log-probs
from ``self._get_per_token_logps_and_entropies(model, ...)``, a forward of the model. An instance made with
``GRPOTrainer.__new__`` (no model, dataset or tokenizer) gets the attributes ``_compute_loss`` reads, set from
the ``GRPOConfig`` as ``GRPOTrainer.__init__`` sets them, a CPU ``accelerate.Accelerator`` for its metric
gathers, and, as an instance attribute, a ``_get_per_token_logps_and_entropies`` that returns our tensor. The
loss, clipping, aggregation and normalisation are TRL's own code, unmodified. An attribute TRL starts to read
that is not set here fails loudly (AttributeError), never silently. KL (beta=0), entropy bonus
(entropy_coef=0), entropy masking (top_entropy_quantile=1), off-policy masking and two-sided clip (delta) are
all off on both sides, and so is vLLM importance sampling except in the correction rows (below): thinktune adds its KL and entropy terms the same way
for every objective, and they are not what differs between the objectives.

Which TRL loss is which thinktune aggregation (TRL 1.16):
- thinktune ``token_mean`` = TRL ``dapo`` (sum over the accumulated batch's tokens / their count). TRL
  ``bnpo`` equals it on one micro-batch only: it divides by the micro-batch's own token count, and the
  row "dapo, 2 micro-batches" shows TRL ``dapo`` is the one that sums over micro-batches the way thinktune's
  ``token_mean`` does (thinktune passes the whole batch's ``num_tokens`` to every micro-batch).
- thinktune ``seq_mean`` = TRL ``grpo`` (each sequence's token mean, then the mean over sequences; TRL takes
  the mean within a micro-batch and divides by the accumulation steps, which is the same for equal splits).
- thinktune ``token_sum_norm`` (max_len = the generation budget) = TRL ``dr_grpo`` (max_completion_length).
- thinktune's default ``loss=grpo`` preset is token-mean, so it is TRL ``bnpo``/``dapo`` with epsilon 0.2,
  not TRL's ``loss_type="grpo"`` (that is thinktune ``grpo`` with ``loss_agg=seq_mean``, its own row).

Definitional differences (none of them a difference in the math):
- CISPO's clip is parameterised differently. thinktune clamps the weight to [1 - clip_low, 1 + clip_high]
  (preset 1.0 / 0.28: no floor, cap 1.28); TRL clamps to max=epsilon_high, the cap itself, with no floor.
  So TRL ``epsilon_high = 1 + clip_high``; TRL's documented recommendation, 5.0 (ScaleRL), would be thinktune
  ``clip_high=4.0``, well above thinktune's preset. Their clip statistics differ too (TRL counts only capped
  tokens with A > 0; thinktune counts every capped token); statistics are not compared here.
- GSPO-token: TRL 1.16 has no GSPO-token (``importance_sampling_level`` is only "token" or "sequence"). With
  one advantage per sequence its value and gradient equal GSPO's under ``seq_mean``, so thinktune's
  ``gspo_token`` is compared with TRL's sequence-level GSPO; that checks the equality its docstring claims.
- GSPO in TRL uses loss_type="grpo" (TRL's own advice for the paper's setup, and the warning it gives for the
  token-summing losses at sequence level); thinktune's gspo preset is ``seq_mean``, the same reduction.
- Dr. GRPO's other half, advantages without the std division (TRL ``scale_rewards=False``), happens before
  the loss; both sides take the advantages given, so it is not part of this check.

Sampler/trainer mismatch correction (thinktune ``correction.mode`` tis / mis_token / mis_sequence, cap C; TRL
``vllm_importance_sampling_correction`` with ``vllm_importance_sampling_mode``), in two parts:
- The application, TRL's own code: ``_compute_loss`` multiplies the per-token policy loss by
  ``inputs["importance_sampling_ratio"]`` when ``use_vllm`` and ``vllm_importance_sampling_correction`` are on
  (before the KL term, like thinktune's ``weights=``, which multiplies the policy term alone). The correction
  rows of the main table set both on the GRPOConfig, pass thinktune's own weights
  (``policy_loss.importance_weights`` of the same tensors) as TRL's ``importance_sampling_ratio``, and compare
  loss and gradient with ``grpo_token_loss(..., weights=)``. Both PPO ratios use the same old log-probs: the
  trainer's (thinktune's ``recompute_old_logps`` convention; TRL's ``old_per_token_logps``, which TRL itself
  recomputes with the training model whenever the correction is on), while the sampler's log-probs enter only
  through the weights.
- The weight formula, NOT TRL's code: TRL 1.16 computes the ratio inline in ``_generate_and_score_completions``
  (a rollout method that needs a model, a tokenizer and vLLM's outputs) and exposes no helper, so the second
  table compares thinktune's weights with ``trl_documented_weights`` below, the formula of TRL's GRPOConfig help
  for ``vllm_importance_sampling_mode`` (rho = exp(old_per_token_logps - sampling_per_token_logps) on the mask,
  summed over the sequence for ``sequence_*``; ``*_truncate`` clamps rho to [C_min, C_max], ``*_mask`` sets rho
  outside it to 0), transcribed by hand (it agrees with the inline code in TRL 1.16, read, not run).
  - thinktune tis = TRL ``token_truncate`` with C_max = cap and C_min = None (TRL's default; thinktune has no
    floor): the same weights, min(rho, cap).
  - thinktune mis_token / mis_sequence = TRL ``token_mask`` / ``sequence_mask`` with C_min = 1/cap, C_max = cap
    in WHICH tokens are dropped only. The kept tokens differ by design: TRL keeps the weight rho (masked
    importance sampling), thinktune 1 (rejection alone, verl's ``rollout_rs`` without IS). The table checks
    the zero sets and prints max |w - w_TRL| over the mask as information. Also, TRL's defaults are one-sided
    (C_min=None, C_max=3, mode ``sequence_mask``); thinktune's bounds are always two-sided, [1/cap, cap].
  - Off the mask thinktune's weight is 0 and TRL's rho is 1 (its difference is masked to 0 first); both losses
    multiply by the mask, so only the mask's tokens are compared.

Tensors: 4 completions of up to 6 tokens (lengths 6, 4, 5, 2; padding holds nonzero junk, so a leak through
the mask would show), advantages of both signs, and two sets of log-ratios: token-scale ones (|delta| up to
0.4, so that tokens sit below, inside and above both the 0.2/0.2 and the 0.2/0.28 bands, and in the band
between 1.2 and 1.28 where GRPO and DAPO differ) and GSPO-scale ones (sequence means of +-1e-4 to 7e-4, so
that sequences sit inside, below and above the 3e-4/4e-4 band). float64 by default: this checks definitions,
and float32 rounding of sums taken in another order is ~1e-7, near the bar; ``--dtype float32`` runs it anyway.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import warnings
from collections import defaultdict
from dataclasses import dataclass

import torch

from thinktune.train.losses import aggregate, grpo_token_loss
from thinktune.train.policy_loss import importance_weights, resolve

TOL = 1e-6
CAP = 2.0  # thinktune correction.cap (its default); log 2 = 0.693

OLD_LOGPS = [[-0.9, -1.3, -0.2, -2.1, -0.7, -1.0],  # [B, T], the sampler's log-probs
             [-1.6, -0.4, -0.8, -1.1, -3.0, -0.5],
             [-0.3, -0.6, -1.9, -0.9, -1.2, -2.4],
             [-1.4, -0.8, -0.6, -1.7, -0.9, -1.1]]
MASK = [[1, 1, 1, 1, 1, 1],  # [B, T], lengths 6, 4, 5, 2
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 0, 0, 0, 0]]
ADVANTAGES = [1.0, -0.5, 0.8, -1.2]  # [B]
# logps - old_logps per token. Ratios e^d: 0.35 -> 1.42 (above both bands), 0.22 -> 1.246 (above 1.2, inside
# 1.28), -0.3 -> 0.74 and -0.35 -> 0.70 (below 0.8); the last columns of rows 1 and 3 are padding (junk).
TOKEN_DELTAS = [[0.35, 0.22, -0.3, 0.0, 0.1, -0.05],
                [-0.35, 0.1, 0.3, -0.25, 0.4, -0.3],
                [0.22, -0.4, 0.05, 0.3, -0.1, 0.2],
                [-0.3, 0.15, 0.35, -0.4, 0.3, 0.25]]
# Per sequence a masked mean of +2e-4 (inside, A > 0), -5e-4 (below 1 - 3e-4, A < 0: clipped), +7e-4 (above
# 1 + 4e-4, A > 0: clipped), -1e-4 (inside, A < 0), with token-level spread around it and junk in the padding.
GSPO_DELTAS = [[5e-4, -1e-4, 3e-4, 0.0, 2e-4, 1e-4],
               [-9e-4, -2e-4, -6e-4, -3e-4, 0.3, -0.2],
               [1.2e-3, 4e-4, 9e-4, 5e-4, 5e-4, 0.1],
               [-3e-4, 1e-4, 0.2, -0.1, 0.05, 0.3]]
# log rho = trainer's old log-probs - sampler's, per token (sampler = OLD_LOGPS - this). Cap 2 keeps rho in [0.5, 2]
# (log within +-0.693): 0.9 (twice), 1.2 above; -0.8, -1.0 below; the rest inside; padding junk. Sequence sums
# (mask): +0.9 (above 2), -1.05 (below 1/2), +0.3 (inside), +0.1 (inside). With GSPO_DELTAS the dropped
# sequences are one inside GSPO's band (row 0, gradient) and one clipped (row 1), so dropping shows in the gradient.
SAMPLER_GAPS = [[0.9, -0.2, 0.1, -0.8, 0.9, 0.0],
                [0.3, -1.0, -0.25, -0.1, 2.0, -3.0],
                [-0.5, 0.2, 1.2, 0.0, -0.6, 5.0],
                [0.4, -0.3, -4.0, 3.0, 1.0, -2.0]]


@dataclass(frozen=True)
class Case:
    name: str  # the row's label
    objective: str  # thinktune's ``loss``
    loss_agg: str  # "" = the preset's
    trl: dict  # GRPOConfig fields besides the epsilons
    deltas: list[list[float]]
    micro_batches: int = 1
    cispo_cap: bool = False  # TRL's epsilon_high is CISPO's cap itself: 1 + clip_high
    note: str = ""
    correction: str = ""  # thinktune correction.mode (cap CAP); its weights become TRL's importance_sampling_ratio
    trl_is_mode: str = ""  # the matching TRL vllm_importance_sampling_mode (set on the config, for the record)


CASES = [
    Case("grpo (token_mean)", "grpo", "", {"loss_type": "bnpo"}, TOKEN_DELTAS,
         note="= TRL bnpo on one micro-batch"),
    Case("grpo (token_mean)", "grpo", "", {"loss_type": "dapo"}, TOKEN_DELTAS, note="TRL dapo, eps 0.2/0.2"),
    Case("grpo loss_agg=seq_mean", "grpo", "seq_mean", {"loss_type": "grpo"}, TOKEN_DELTAS,
         note="TRL's loss_type=grpo is seq_mean"),
    Case("drgrpo (token_sum_norm)", "drgrpo", "", {"loss_type": "dr_grpo"}, TOKEN_DELTAS,
         note="max_len = max_completion_length"),
    Case("dapo (token_mean)", "dapo", "", {"loss_type": "dapo"}, TOKEN_DELTAS),
    Case("dapo, 2 micro-batches", "dapo", "", {"loss_type": "dapo"}, TOKEN_DELTAS, micro_batches=2,
         note="global token count, summed"),
    Case("gspo (seq_mean)", "gspo", "", {"loss_type": "grpo", "importance_sampling_level": "sequence"},
         GSPO_DELTAS),
    Case("gspo_token (seq_mean)", "gspo_token", "", {"loss_type": "grpo", "importance_sampling_level": "sequence"},
         GSPO_DELTAS, note="TRL has no GSPO-token: vs its GSPO"),
    Case("cispo (token_mean)", "cispo", "", {"loss_type": "cispo"}, TOKEN_DELTAS, cispo_cap=True,
         note="TRL epsilon_high is the cap, 1 + clip_high"),
    Case("grpo + tis", "grpo", "", {"loss_type": "dapo"}, TOKEN_DELTAS, correction="tis",
         trl_is_mode="token_truncate", note="weights= vs importance_sampling_ratio (thinktune's tis weights)"),
    Case("dapo + tis, 2 micro-b.", "dapo", "", {"loss_type": "dapo"}, TOKEN_DELTAS, micro_batches=2,
         correction="tis", trl_is_mode="token_truncate", note="same, split in 2 micro-batches"),
    Case("grpo + mis_token", "grpo", "", {"loss_type": "dapo"}, TOKEN_DELTAS, correction="mis_token",
         trl_is_mode="token_mask", note="thinktune's 0/1 weights as TRL's ratio"),
    Case("cispo + tis", "cispo", "", {"loss_type": "cispo"}, TOKEN_DELTAS, cispo_cap=True, correction="tis",
         trl_is_mode="token_truncate", note="weights= vs importance_sampling_ratio"),
    Case("gspo + mis_sequence", "gspo", "", {"loss_type": "grpo", "importance_sampling_level": "sequence"},
         GSPO_DELTAS, correction="mis_sequence", trl_is_mode="sequence_mask",
         note="thinktune's 0/1 per-sequence weights as TRL's ratio"),
]

# (thinktune mode, TRL vllm_importance_sampling_mode, C_min, C_max): the weight-formula table.
WEIGHT_CASES = [("tis", "token_truncate", None, CAP), ("mis_token", "token_mask", 1 / CAP, CAP),
                ("mis_sequence", "sequence_mask", 1 / CAP, CAP)]


def trl_trainer(config_fields: dict, batch: int, max_len: int, micro_batches: int, out_dir: str):
    """A GRPOTrainer with no model: only the attributes ``_compute_loss`` reads, from a real GRPOConfig."""
    from accelerate import Accelerator
    from trl import GRPOConfig, GRPOTrainer

    with warnings.catch_warnings():  # transformers' deprecation notice for a field TRL's config sets
        warnings.simplefilter("ignore", FutureWarning)
        args = GRPOConfig(output_dir=out_dir, report_to="none", use_cpu=True, bf16=False, beta=0.0,
                          per_device_train_batch_size=batch // micro_batches,
                          gradient_accumulation_steps=micro_batches, num_generations=2, max_completion_length=max_len,
                          **config_fields)
    if args.use_vllm and not args.vllm_importance_sampling_correction:
        raise ValueError("use_vllm is on without the correction")
    if args.entropy_coef != 0.0 or args.use_adaptive_entropy or args.top_entropy_quantile < 1.0 or args.delta:
        raise ValueError("an entropy term, entropy mask or two-sided clip is on in TRL's defaults; turn it off here")
    trainer = GRPOTrainer.__new__(GRPOTrainer)
    # As GRPOTrainer.__init__ sets them from args (TRL 1.16), plus the Trainer state _compute_loss reads.
    vars(trainer).update(
        args=args, loss_type=args.loss_type, beta=args.beta, epsilon_low=args.epsilon,
        epsilon_high=args.epsilon_high if args.epsilon_high is not None else args.epsilon,
        importance_sampling_level=args.importance_sampling_level,
        off_policy_mask_threshold=args.off_policy_mask_threshold, top_entropy_quantile=args.top_entropy_quantile,
        use_vllm=args.use_vllm, vllm_importance_sampling_correction=args.vllm_importance_sampling_correction,
        max_completion_length=args.max_completion_length, entropy_coef=args.entropy_coef,
        use_adaptive_entropy=args.use_adaptive_entropy, _entropy_bonus_enabled=False, aux_loss_enabled=False,
        current_gradient_accumulation_steps=micro_batches, accelerator=Accelerator(cpu=True),
        model=torch.nn.Module(),  # only .training is read: True, the "train" branch
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)})
    return trainer


def trl_loss(trainer, logps: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
             micro_batches: int, is_ratio: torch.Tensor | None = None) -> torch.Tensor:
    """TRL's _compute_loss over ``micro_batches`` equal slices, summed (what its gradient accumulation sums)."""
    batch, max_len = logps.shape
    total = torch.zeros((), dtype=logps.dtype)
    for rows in torch.arange(batch).chunk(micro_batches):
        part = logps[rows]  # [b, T], a view into the leaf, so the gradient lands in logps.grad

        def get_logps(model, input_ids, attention_mask, logits_to_keep, _part=part, **kwargs):
            if logits_to_keep != max_len:
                raise AssertionError(f"TRL asked for {logits_to_keep} completion positions, not {max_len}")
            return _part, torch.zeros_like(_part), None  # log-probs, entropies, aux loss

        trainer._get_per_token_logps_and_entropies = get_logps
        b = len(rows)
        inputs = {"prompt_ids": torch.zeros(b, 1, dtype=torch.long), "prompt_mask": torch.ones(b, 1, dtype=torch.long),
                  "completion_ids": torch.zeros(b, max_len, dtype=torch.long), "completion_mask": mask[rows],
                  "advantages": adv[rows], "old_per_token_logps": old[rows],
                  "num_items_in_batch": mask.sum()}  # TRL's count spans the generation batch, all micro-batches
        if is_ratio is not None:  # what _generate_and_score_completions returns with the correction on
            inputs["importance_sampling_ratio"] = is_ratio[rows]
        total = total + trainer._compute_loss(trainer.model, inputs)
    return total


def thinktune_loss(case: Case, logps: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                   weights: torch.Tensor | None = None) -> tuple[torch.Tensor, float, float]:
    """(loss summed over micro-batches, clip_low, clip_high), as ``grpo_update.update`` aggregates it."""
    _, loss_agg, clip_low, clip_high = resolve(case.objective, "", case.loss_agg, None, None)
    batch, max_len = logps.shape
    num_tokens, total = int(mask.sum()), torch.zeros((), dtype=logps.dtype)
    for rows in torch.arange(batch).chunk(case.micro_batches):
        loss_t, _ = grpo_token_loss(logps[rows], old[rows], adv[rows], clip_low, clip_high,
                                    objective=case.objective, mask=mask[rows],
                                    weights=None if weights is None else weights[rows])  # [b, T]
        total = total + aggregate(loss_t, mask[rows], loss_agg, num_tokens, batch, max_len)
    return total, clip_low, clip_high


def compare(case: Case, dtype: torch.dtype, out_dir: str) -> dict:
    old = torch.tensor(OLD_LOGPS, dtype=dtype)  # [B, T]
    mask = torch.tensor(MASK, dtype=dtype)  # [B, T]
    adv = torch.tensor(ADVANTAGES, dtype=dtype)  # [B]
    start = old + torch.tensor(case.deltas, dtype=dtype)  # [B, T]

    weights, trl_is = None, {}
    if case.correction:
        # thinktune's weights, as grpo_update.old_and_weights makes them: trainer's old log-probs vs sampler's.
        sampler = old - torch.tensor(SAMPLER_GAPS, dtype=dtype)  # [B, T]
        weights, _ = importance_weights(old, sampler, mask, case.correction, CAP)  # [B, T] float32, as in training
        trl_is = {"use_vllm": True, "vllm_importance_sampling_correction": True,
                  "vllm_importance_sampling_mode": case.trl_is_mode, "vllm_importance_sampling_clip_max": CAP,
                  "vllm_importance_sampling_clip_min": None if case.correction == "tis" else 1 / CAP}

    ours_logps = start.clone().requires_grad_()
    ours, clip_low, clip_high = thinktune_loss(case, ours_logps, old, adv, mask, weights)
    ours.backward()

    eps_high = 1 + clip_high if case.cispo_cap else clip_high
    trainer = trl_trainer(case.trl | {"epsilon": clip_low, "epsilon_high": eps_high} | trl_is, len(adv),
                          old.shape[1], case.micro_batches, out_dir)
    theirs_logps = start.clone().requires_grad_()
    theirs = trl_loss(trainer, theirs_logps, old, adv, mask, case.micro_batches, weights)
    theirs.backward()

    d_loss = abs(ours.item() - theirs.item())
    d_grad = (ours_logps.grad - theirs_logps.grad).abs().max().item()
    vacuous = not ours_logps.grad.abs().gt(0).any().item()
    ok = d_loss <= TOL and d_grad <= TOL and not vacuous
    level = case.trl.get("importance_sampling_level")
    trl_col = case.trl["loss_type"] + (f", {level}" if level else "") + (f", {case.trl_is_mode}" if case.correction
                                                                          else "")
    return {"objective": case.name, "trl": trl_col,
            "clips": (f"{clip_low:g}/{clip_high:g} -> cap {eps_high:g}" if case.cispo_cap
                      else f"{clip_low:g}/{clip_high:g} -> {clip_low:g}/{eps_high:g}"), "d_loss": d_loss,
            "d_grad": d_grad, "verdict": "ok" if ok else ("VACUOUS" if vacuous else "MISMATCH"), "note": case.note}


def trl_documented_weights(old: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor, mode: str,
                           clip_min: float | None, clip_max: float | None) -> torch.Tensor:
    """TRL's importance_sampling_ratio [B, T] as its GRPOConfig help for ``vllm_importance_sampling_mode``
    defines it (transcribed; TRL computes it inline in ``_generate_and_score_completions``, no helper to call)."""
    diff = (old - sampler) * mask  # [B, T]; off the mask 0, so rho = 1 there
    log_rho = diff.sum(-1, keepdim=True) if mode.startswith("sequence_") else diff  # [B, 1] or [B, T]
    rho = torch.exp(log_rho)
    if mode.endswith("_truncate"):
        rho = torch.clamp(rho, min=clip_min, max=clip_max)
    else:  # *_mask: rho outside [C_min, C_max] set to 0, rho kept inside
        lo = clip_min if clip_min is not None else -math.inf
        hi = clip_max if clip_max is not None else math.inf
        rho = rho.masked_fill((rho < lo) | (rho > hi), 0.0)
    return rho.expand_as(old)  # [B, T]


def compare_weights(ours_mode: str, trl_mode: str, clip_min: float | None, clip_max: float, dtype: torch.dtype
                    ) -> dict:
    old = torch.tensor(OLD_LOGPS, dtype=dtype)  # [B, T]
    mask = torch.tensor(MASK, dtype=dtype)  # [B, T]
    sampler = old - torch.tensor(SAMPLER_GAPS, dtype=dtype)  # [B, T]
    keep = mask.bool()
    ours = importance_weights(old, sampler, mask, ours_mode, CAP)[0].to(dtype)[keep]  # [N] on the mask
    theirs = trl_documented_weights(old, sampler, mask, trl_mode, clip_min, clip_max)[keep]  # [N]
    d_value = (ours - theirs).abs().max().item()
    d_support = (ours.ne(0).to(dtype) - theirs.ne(0).to(dtype)).abs().max().item()
    if ours_mode == "tis":  # same weights expected; vacuous unless some token is capped and some is not
        d, vacuous = d_value, not (theirs.eq(clip_max).any() and theirs.lt(clip_max).any())
        note = f"min(rho, {CAP:g}): same weights"
    else:  # same zero set expected; vacuous unless some token is dropped and some kept
        d, vacuous = d_support, not (theirs.eq(0).any() and theirs.ne(0).any())
        note = (f"same dropped tokens ({int(theirs.eq(0).sum())} of {theirs.numel()}); kept weight: thinktune 1, "
                f"TRL rho (max|w - w_TRL| {d_value:.3f}, by design)")
    ok = d <= TOL and not vacuous
    bounds = f"[{'None' if clip_min is None else f'{clip_min:g}'}, {clip_max:g}]"
    return {"objective": f"{ours_mode} cap {CAP:g}", "trl": trl_mode, "clips": bounds, "d": d,
            "verdict": "ok" if ok else ("VACUOUS" if vacuous else "MISMATCH"), "note": note}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    args = parser.parse_args()
    try:
        import trl
    except ImportError:
        print("trl is not installed in this environment: run `make bench-objectives` (it creates .venv-bench)")
        return 2
    import transformers

    transformers.logging.set_verbosity_error()  # GRPOConfig's notices about its changed defaults
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory(prefix="objectives-trl-") as out_dir:
        rows = [compare(case, dtype, out_dir) for case in CASES]
    weight_rows = [compare_weights(*w, dtype) for w in WEIGHT_CASES]
    print(f"thinktune objectives vs TRL {trl.__version__} GRPOTrainer._compute_loss; {args.dtype}, 4 completions "
          f"x <= 6 tokens, tolerance {TOL:g}; gradient with respect to the current log-probs; KL/entropy off")
    head = (f"{'objective':<24} {'TRL loss_type, IS level':<30} {'clips -> TRL epsilons':<30} {'|d loss|':>9} "
            f"{'max|d grad|':>11} {'verdict':<8} {'TRL':<7} note")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['objective']:<24} {r['trl']:<30} {r['clips']:<30} {r['d_loss']:>9.2e} {r['d_grad']:>11.2e} "
              f"{r['verdict']:<8} {trl.__version__:<7} {r['note']}")
    print()
    print(f"correction weights vs TRL {trl.__version__}'s DOCUMENTED formula (GRPOConfig help for "
          f"vllm_importance_sampling_mode, transcribed here: TRL computes it inline in its rollout, no helper to "
          f"call); on the mask's tokens; |d| = max |d weight| (tis) or max |d (weight != 0)| (mis)")
    head = f"{'thinktune mode':<24} {'TRL IS mode':<30} {'TRL [C_min, C_max]':<30} {'|d|':>9} {'verdict':<8} note"
    print(head)
    print("-" * len(head))
    for r in weight_rows:
        print(f"{r['objective']:<24} {r['trl']:<30} {r['clips']:<30} {r['d']:>9.2e} {r['verdict']:<8} {r['note']}")
    bad = [r["objective"] for r in rows + weight_rows if r["verdict"] != "ok"]
    if bad:
        print(f"FAILED: {', '.join(bad)}")
        return 1
    print(f"all {len(rows) + len(weight_rows)} comparisons within {TOL:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
