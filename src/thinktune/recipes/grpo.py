"""GRPO with the Phi-4-reasoning-plus reward and the Phi-4-mini-reasoning stabilisers.

Run:
    thinktune grpo --config configs/phi4-reasoning-plus/grpo.yaml model.path=runs/sft/final data.prompts=math.jsonl
    thinktune grpo --config configs/demo/grpo.yaml model.path=runs/demo/dpo/final data.prompts=...

Each step: P prompts x G samples from the sampler at the step's temperature -> rewards and their
components -> (optional) Phi-4-mini rebalancing: keep every positive sample and as many negatives, drop
prompts above an accuracy threshold -> (optional) DAPO's dynamic sampling: drop groups whose rewards are all
equal and refill the step from the data order, in up to ``max_sampling_rounds`` rounds (``draw``) -> group
advantages -> reference log-probs -> ``updates_per_batch`` passes of the clipped surrogate with KL (k3,
coefficient beta) and an entropy bonus (gamma) -> log, dump rollouts, checkpoint.

The old policy's log-probs are the ones the sampler returns under the distribution it sampled
(softmax of logits / temperature); the update computes the policy's log-probs at the same temperature, so
the importance ratio compares like with like. That is why top_p must stay 1.0 here: a nucleus-truncated
sampling distribution is not the policy's. vLLM returns none (only raw log-probs, in its own kernels), so
with it the update's first pass, made on the weights that sampled, supplies them.

Rollouts come from a ``Sampler`` (``thinktune.rollout.service``) built from the ``sampling`` block:
``sampling.backend=auto`` samples with vLLM where it is installed and a GPU exists (needed at the paper's
32k-token budget, where a static cache per row does not fit), else with thinktune's sampler. Every step
the loop reads: sync the policy's weights into the sampler, sample, score, select, release the sampler's
memory (vLLM sleeps with ``sampling.vllm.sleep``, the default), update.

Scale: under ``torchrun`` each rank samples its contiguous share of the step's prompts (whole groups, so
advantages stay local) from an unsharded copy of the policy, and the FSDP2-sharded policy and reference
update with the loss normalised by the token and sequence counts of all ranks (``thinktune.train.distributed``).
Metrics and dumps cover every rank's samples; rank 0 writes them. ``model.lora.r > 0`` trains LoRA
adapters, with the adapters-off base as the reference.

Departures from the paper: the Phi-4-reasoning report prints its KL against pi_old (docs/recipe.md section
2.1); we take it against the frozen starting model, as GRPO (DeepSeekMath) and verl do, since against
pi_old it is zero on the first of the ``updates_per_batch`` passes. The clip ratio, rollout temperature
and Adam betas are not reported; they are config fields with conventional defaults (0.2, 1.0, 0.9/0.999).
"""

from __future__ import annotations

import functools
import math
import random
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from thinktune import runtime
from thinktune.config import (
    SAMPLING_RENAMED,
    LogConfig,
    ModelConfig,
    OptimConfig,
    Resume,
    SamplingConfig,
    VLLMOptions,
    check_sizes,
    to_dict,
)
from thinktune.data.chat import prompt_messages, render_prompt
from thinktune.data.io import write_json, write_jsonl
from thinktune.errors import ConfigError
from thinktune.modeling import lora, models
from thinktune.rewards import RewardConfig, StreamingScorer, check_reward
from thinktune.rollout.sampler import Completion
from thinktune.rollout.service import check_sampling, make_sampler
from thinktune.tasks.benchmarks import load_prompts
from thinktune.tracking import MetricsLogger, plot_curves, progress
from thinktune.train import checkpoint, distributed, policy_loss
from thinktune.train.advantages import ADVANTAGE_MODES, annealed_temperature
from thinktune.train.group_draw import check_fill, draw
from thinktune.train.grpo_update import Rollouts, build_rollouts, update  # noqa: F401 - Rollouts: tests build them here
from thinktune.train.heldout import HeldoutConfig, load_heldout, log_before_training, log_if_due, summary_of
from thinktune.train.losses import LOSS_AGGREGATIONS
from thinktune.train.optim import build_optimizer, build_scheduler
from thinktune.train.policy_loss import ImportanceCorrection
from thinktune.train.run_dir import claim, release


@dataclass
class GRPODataConfig:
    prompts: str = ""  # prompt JSONL: {"id", "prompt", "answer", "difficulty"?, "mode"?}
    difficulties: list[int] = field(default_factory=list)  # keep these levels only (empty: all)
    limit: int = 0


@dataclass
class GRPOConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # the policy's start and the frozen reference
    data: GRPODataConfig = field(default_factory=GRPODataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-8, warmup_steps=10, weight_decay=0.0,
                                                                   schedule="constant"))
    log: LogConfig = field(default_factory=LogConfig)
    # n: G samples per prompt (with balance, the kept share may be smaller); temperature: at step 0. vLLM takes
    # 0.4 of the GPU and sleeps during the update; thinktune's sampler decodes 256 rows at once.
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(
        n=8, batch_size=256, vllm=VLLMOptions(gpu_memory_utilization=0.4, sleep=True)))
    prompts_per_step: int = 64
    scale_reward_to_context: bool = False  # rescale the reward's length constants to sampling.max_new_tokens
    temperature_end: float = 0.0  # > 0: anneal linearly to this (Phi-4-mini: 0.6) ...
    anneal_fraction: float = 0.5  # ... over this share of the steps, then hold it
    # The policy objective (train/policy_loss.py): grpo | drgrpo | dapo | gspo | gspo_token | cispo. The four
    # fields after it, left unset, take the objective's preset (grpo: grpo, token_mean, 0.2, 0.2, as before);
    # a setting the objective's paper contradicts (loss=drgrpo with advantage=grpo) is an error.
    loss: str = "grpo"
    advantage: str = ""  # grpo: (r - mean) / std; drgrpo: r - mean
    clip_low: float | None = None  # ratio floor 1 - clip_low (1.0: none)
    clip_high: float | None = None  # ratio ceiling 1 + clip_high
    loss_agg: str = ""  # token_mean | seq_mean | token_sum_norm (over prompts x sampling.max_new_tokens)
    mask_truncated: bool = False  # completions cut at sampling.max_new_tokens leave the loss (DAPO's filtering)
    correction: ImportanceCorrection = field(default_factory=ImportanceCorrection)  # sampler-trainer gap: tis, mis
    beta: float = 0.001  # KL to the frozen reference (k3)
    gamma: float = 0.001  # entropy bonus
    updates_per_batch: int = 1  # mu: passes over each batch of rollouts
    balance: bool = False  # Phi-4-mini rebalancing: all positives, as many negatives
    max_group_accuracy: float = 0.5  # with balance: prompts above this accuracy are dropped
    # DAPO's dynamic sampling (arXiv 2503.14476, section 3.2): drop groups whose kept rewards are all equal (zero
    # advantage) and draw further prompts_per_step prompts from the data order until prompts_per_step groups are
    # kept, in at most max_sampling_rounds rounds (the step's first included); see draw().
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 3
    micro_batch_size: int = 8  # completions per forward pass in the update (sorted by length)
    share_prompt: bool = True  # forward each prompt once per pass, not once per sample (same result)
    score_behind_decode: bool | None = None  # score each completion as it ends, beside the decode; None: on GPUs
    max_steps: int = 90
    dump_every: int = 10  # steps between rollout dumps to samples/ (0: never)
    heldout: HeldoutConfig = field(default_factory=HeldoutConfig)  # held-out accuracy, on the policy's sampler
    seed: int = 0  # prompt order, selection and initialisation; the draws take sampling.seed
    output_dir: str = "runs/grpo"
    resume: Resume = "auto"  # a run already in output_dir: auto continues it if its settings match (config.Resume)

    RENAMED: ClassVar[dict[str, str]] = SAMPLING_RENAMED

    def __post_init__(self) -> None:
        if not self.data.prompts:
            raise ConfigError("data.prompts is empty; set it to a prompt JSONL (data.prompts=FILE)")
        try:
            self.advantage, self.loss_agg, self.clip_low, self.clip_high = policy_loss.resolve(
                self.loss, self.advantage, self.loss_agg, self.clip_low, self.clip_high)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.advantage not in ADVANTAGE_MODES:
            raise ConfigError(f"advantage={self.advantage!r}; choose one of {', '.join(ADVANTAGE_MODES)}")
        if self.loss_agg not in LOSS_AGGREGATIONS:
            raise ConfigError(f"loss_agg={self.loss_agg!r}; choose one of {', '.join(LOSS_AGGREGATIONS)}")
        if self.sampling.n < 2:
            raise ConfigError("sampling.n must be >= 2: a group advantage needs a group")
        if self.sampling.greedy or self.sampling.top_p != 1 or self.sampling.top_k:
            raise ConfigError("grpo samples from the policy itself: sampling.greedy=false, top_p=1 and top_k=0 (a "
                              "truncated distribution is not the policy whose log-probs the update compares)")
        if self.temperature_end < 0:
            raise ConfigError("temperature_end must be >= 0 (0: no annealing)")
        if self.max_sampling_rounds < 1:
            raise ConfigError("max_sampling_rounds must be >= 1 (rounds of prompts_per_step prompts a step may draw)")
        if not (0 <= self.clip_low <= 1 and self.clip_high >= 0):
            raise ConfigError("clip_low must be in [0, 1] (1: no floor) and clip_high >= 0")
        check_sizes(max_steps=self.max_steps, updates_per_batch=self.updates_per_batch,
                    prompts_per_step=self.prompts_per_step, micro_batch_size=self.micro_batch_size)
        check_heldout_sampler(self)

    def temperature_at(self, step: int) -> float:
        if not self.temperature_end:
            return self.sampling.temperature
        return annealed_temperature(step, self.max_steps, self.sampling.temperature, self.temperature_end,
                                    self.anneal_fraction)


def check_heldout_sampler(cfg: GRPOConfig) -> None:
    """Held-out problems are sampled by the policy's sampler, which ``sampling`` builds: a different engine
    asked for under ``heldout.sampling`` would be silently ignored, so it is refused."""
    mine, lent = cfg.heldout.sampling, cfg.sampling
    if cfg.heldout.every and (mine.backend, mine.decoder) != (lent.backend, lent.decoder):
        raise ConfigError(f"heldout.sampling.backend={mine.backend} and decoder={mine.decoder}: grpo samples held-out "
                          f"problems with its policy's sampler (sampling.backend={lent.backend}, decoder="
                          f"{lent.decoder}); give heldout.sampling the same two values or leave both unset")


def load_rows(cfg: GRPOConfig) -> list[dict]:
    return load_prompts(cfg.data.prompts, limit=cfg.data.limit or None, difficulties=cfg.data.difficulties)


def reference_model(cfg: GRPOConfig, model, tokenizer, rt: runtime.Runtime):
    """The frozen reference for the KL term: None without one (beta = 0); with LoRA, the policy with its
    adapters disabled (no second copy of the weights); else the starting model, sharded like the policy."""
    if not cfg.beta:
        return None
    if lora.enabled(model):
        return lora.ReferenceView(model)
    reference = models.load_model(cfg.model, tokenizer, rt.device, rt.dtype).eval().requires_grad_(False)
    return distributed.prepare(reference, cfg.model, rt, trainable=False)


@dataclass
class Sample:
    """What metrics and rollout dumps need of one completion. Every rank's are gathered every step, so the
    text rides along only on the steps that dump (a long completion's text and tokens are megabytes)."""

    num_tokens: int
    finished: bool
    text: str = ""


def gather_step(rows: list[dict], groups: list[list[Completion]], results: list[list], correct: list[list[bool]],
                with_text: bool) -> tuple[list, list, list, list]:
    """Every rank's prompts (with_text only, else []), samples and scores, in rank order, for metrics and
    dumps; the same lists on one rank."""
    light = [[Sample(len(c.token_ids), c.finished, c.text if with_text else "") for c in g] for g in groups]
    return tuple(distributed.gather_lists(x) for x in (rows if with_text else [], light, results, correct))


def rollout_metrics(groups: list[list[Sample]], results: list[list],
                    correct: list[list[bool]]) -> dict[str, float]:
    """The step's sample statistics, over every group it sampled (every round, before balance or dynamic
    sampling drop any) on every rank (``gather_step``); docs/design.md section 4.1 defines each."""
    flat = [c for g in groups for c in g]
    rewards = [r.reward for g in results for r in g]
    mean = sum(rewards) / len(rewards)
    # The population std (divided by N) of all the step's rewards, the spread around their mean; TRL's current
    # reward_std is the same over its batch, divided by N - 1.
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
    out = {"rollout/reward_mean": mean, "rollout/reward_std": std,
           "rollout/accuracy": sum(map(sum, correct)) / len(flat),
           **length_metrics([c.num_tokens for c in flat]),
           "rollout/truncated": sum(not c.finished for c in flat) / len(flat),
           **group_shares(results, correct)}
    keys = {k for g in results for r in g for k in r.components}
    for k in sorted(keys):
        vals = [r.components[k] for g in results for r in g if k in r.components]
        out[f"reward/{k}"] = sum(vals) / len(vals)
    return out


def length_metrics(lengths: list[int]) -> dict[str, float]:
    """Mean, min, max and 90th percentile of the completions' lengths in tokens (each with its EOS)."""
    lengths = sorted(lengths)
    return {"rollout/length_mean": sum(lengths) / len(lengths), "rollout/length_min": float(lengths[0]),
            "rollout/length_max": float(lengths[-1]),
            "rollout/length_p90": float(lengths[min(len(lengths) - 1, int(0.9 * len(lengths)))])}


def group_shares(results: list[list], correct: list[list[bool]]) -> dict[str, float]:
    """The shares of the groups whose rewards are all equal, all correct and all wrong. An all-equal group has
    zero advantage on every sample, so no policy gradient (TRL's frac_reward_zero_std; what dynamic sampling
    drops); all correct (too easy) and all wrong (too hard) tell which side of the model's reach they lie."""
    rewards = [[r.reward for r in rs] for rs in results]
    return {"rollout/groups_all_equal": sum(max(rs) == min(rs) for rs in rewards) / len(rewards),
            "rollout/groups_all_correct": sum(all(cs) for cs in correct) / len(correct),
            "rollout/groups_all_wrong": sum(not any(cs) for cs in correct) / len(correct)}


def throughput(num_tokens: int, timer: dict[str, float]) -> dict[str, float]:
    """Sampled completion tokens per second of the step's wall time and of its sampling time (weight sync and
    release included). ``num_tokens`` counts every rank's samples and ``timer`` is this rank's clock: the ranks
    sample side by side, so these are the whole job's rates."""
    return {"time/tokens_per_s": num_tokens / timer["time/step"],
            "time/generate_tokens_per_s": num_tokens / timer["time/generate"]}


def dump(out: Path, step: int, rows: list[dict], groups: list[list[Sample]], results: list[list],
         correct: list[list[bool]]) -> None:
    write_jsonl(out / "samples" / f"step-{step}.jsonl", (
        {"prompt_id": row["id"], "completion": c.text, "num_tokens": c.num_tokens, "finished": c.finished,
         "reward": r.reward, "components": r.components, "correct": ok}
        for row, g, rs, cs in zip(rows, groups, results, correct, strict=True)
        for c, r, ok in zip(g, rs, cs, strict=True)))


def format_warning(reward: RewardConfig, why: str) -> str | None:
    """The warning for GRPO from a model not yet in the think format, when the reward penalises that format."""
    if reward.name != "phi4":
        return None
    return (f"[grpo] warning: {why}. The Phi-4 reward gives a finished reply without a valid think block "
            f"{reward.bad_format_reward} and a reply cut at the budget {reward.truncated_reward}, so it pays an "
            "unformatted model for not stopping. Train it on formatted <think> traces first (thinktune sft), "
            "then run GRPO from that checkpoint.")


def unformatted_warning(results: list[list], reward: RewardConfig) -> str | None:
    """``format_warning`` when under a tenth of the first step's samples have a valid think block."""
    flat = [r for rs in results for r in rs]
    formatted = sum(r.components.get("format", 0.0) > 0 for r in flat)
    if not flat or formatted * 10 >= len(flat):
        return None
    return format_warning(reward, f"only {formatted} of the first step's {len(flat)} samples have a valid think block")


def scores_behind_decode(device: torch.device, choice: bool | None = None) -> bool:
    """Whether to score each completion as soon as it ends, behind the decode of the others (``choice``, where
    the config sets it). By default on a GPU, whose decode leaves the CPU's cores idle. On a CPU the decode keeps
    every core busy, and scoring beside it doubled the benchmark's generate time (0.15 to 0.30 s on 2 cores), so
    there scoring waits for it."""
    return device.type == "cuda" if choice is None else choice


def sample_and_score(sampler, scorer: StreamingScorer, rows: list[dict], prompts: list[list[int]], seed: int, *,
                     params, behind: bool, timer: dict[str, float]) -> tuple[list[list[Completion]], list[list]]:
    """``sampling.n`` completions of each prompt and their reward results, ``[P][n]`` each; adds the time taken to
    ``timer``. ``behind``: score each completion as it ends, beside the decode (``scores_behind_decode``)."""
    t = time.perf_counter()

    def start_scoring(p: int, j: int, c: Completion) -> None:
        scorer.submit((p, j), c.text, str(rows[p]["answer"]), len(c.token_ids), c.finished, rows[p].get("mode"))

    groups = sampler.sample(prompts, params, seed=seed, show_progress=False,
                            on_complete=start_scoring if behind else None)
    timer["time/generate"] += time.perf_counter() - t
    t = time.perf_counter()  # the scoring left when sampling ends
    if not behind:
        for p, group in enumerate(groups):
            for j, c in enumerate(group):
                start_scoring(p, j, c)
    results = [scorer.results((p, j) for j in range(params.n)) for p in range(len(groups))]
    timer["time/score"] += time.perf_counter() - t
    return groups, results


def run(cfg: GRPOConfig) -> dict:  # noqa: C901 - the loop reads top to bottom; its stages are calls
    rt = runtime.init(cfg.model.dtype, cfg.seed)
    distributed.check_divisible("prompts_per_step", cfg.prompts_per_step, 1, rt)
    check_sampling(cfg.sampling, cfg.model)  # before any loading: vLLM where it cannot run is an error
    reward_cfg = cfg.reward
    if cfg.scale_reward_to_context:
        from thinktune.rewards import scale_to_context

        reward_cfg = scale_to_context(cfg.reward, cfg.sampling.max_new_tokens)
    check_reward(reward_cfg)  # a reward that cannot serve fails here, not at the first step's scoring
    tokenizer, fmt = models.load_chat(cfg.model)
    if fmt.added_tokens and (warning := format_warning(reward_cfg, f"the model has never seen {fmt.added_tokens[0]} "
                                                                   "(thinktune just added it)")):
        runtime.print0(warning)
    pad_id = tokenizer.pad_token_id
    rows = load_rows(cfg)
    prompt_ids = [render_prompt(tokenizer, prompt_messages(r["prompt"])) for r in rows]
    heldout_eval = load_heldout(cfg.heldout, cfg.model, tokenizer, rt, "grpo")  # None when heldout.every=0
    # vLLM's context must hold the longer of a rollout and a held-out completion (make_sampler adds the former's
    # max_new_tokens to longest_prompt).
    longest_prompt = max(max(map(len, prompt_ids)),
                         heldout_eval.context - cfg.sampling.max_new_tokens if heldout_eval else 0)
    # Only with the inputs checked is the run directory claimed: locked, matched against its checkpoint, written.
    run_dir = claim(cfg, "grpo", rt)
    out, resume_from = run_dir.out, run_dir.resume_from

    model = lora.load_policy(cfg.model, resume_from and resume_from.path, tokenizer, rt.device)
    # Before sharding: thinktune's sampler reads whole weights (on N ranks, a copy made here). vLLM holds its own.
    sampler = make_sampler(cfg.sampling, cfg.model, tokenizer, rt, model=model, longest_prompt=longest_prompt)
    if heldout_eval:
        heldout_eval.sampler = sampler  # lent: the policy's weights are already in it, and no second copy is made
    model = distributed.prepare(model, cfg.model, rt)
    reference = reference_model(cfg, model, tokenizer, rt)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.max_steps)
    start = checkpoint.resume(resume_from, model, optimizer, scheduler, "grpo")
    logger = MetricsLogger(out / "metrics.jsonl", resume_step=start, enabled=rt.is_main,
                           report_to=cfg.log.report_to, config=to_dict(cfg), name=cfg.log.run_name)
    runtime.print0(f"[grpo] {len(rows)} prompts; {cfg.max_steps} steps of {cfg.prompts_per_step} x "
                   f"{cfg.sampling.n} on {rt.world_size} rank(s), rollouts on {sampler.backend}; reward "
                   f"{reward_cfg.name}; lr {cfg.optim.lr}, beta {cfg.beta}, gamma {cfg.gamma}; balance {cfg.balance}"
                   + (f"; dynamic sampling, up to {cfg.max_sampling_rounds} rounds" if cfg.dynamic_sampling else ""))

    # Where the next step's prompts start in the data order: past every prompt the steps before it drew (more than
    # prompts_per_step a step with dynamic_sampling), so a resume reads it from the checkpoint.
    position = resume_from.state["data"]["position"] if resume_from else 0
    log_before_training(heldout_eval, model, start, logger)
    warned_short = False
    bar = progress(cfg.max_steps, start, "grpo", cfg.log.progress and rt.is_main)
    score_behind_decode = scores_behind_decode(rt.device, cfg.score_behind_decode)
    with StreamingScorer(reward_cfg) as scorer:  # also closed (queued checks cancelled) when a step fails
        for step in range(start, cfg.max_steps):
            step_start = time.perf_counter()
            timer = {"time/generate": 0.0, "time/score": 0.0, "time/update": 0.0}
            temperature = cfg.temperature_at(step)
            params = cfg.sampling.params(temperature=temperature)

            sample_round = functools.partial(sample_and_score, sampler, scorer, params=params,
                                             behind=score_behind_decode, timer=timer)

            t = time.perf_counter()
            sampler.sync_weights(model)
            timer["time/generate"] += time.perf_counter() - t
            # data-parallel rollouts: each rank samples its share of every round's prompts
            d = draw(step, position, rows, prompt_ids, cfg, rt, sample_round,
                     random.Random((cfg.seed * 7919 + step) * rt.world_size + rt.rank))
            t = time.perf_counter()
            sampler.release()  # the update gets the memory; the next sync_weights takes it back
            timer["time/generate"] += time.perf_counter() - t
            position = d.position
            if step == start and (warning := unformatted_warning(d.results, reward_cfg)):
                runtime.print0(warning)

            t = time.perf_counter()
            counts = dict(zip(d.counts, distributed.all_sum(*d.counts.values()), strict=True))
            if cfg.dynamic_sampling:
                counts |= {"rounds": d.rounds, "groups_short": cfg.prompts_per_step - d.groups_kept}
                warned_short = check_fill(counts, cfg, step, warned_short)
            dumping = bool(cfg.dump_every) and ((step + 1) % cfg.dump_every == 0 or step == 0)
            all_rows, all_groups, all_results, all_correct = gather_step(d.rows, d.groups, d.results, d.correct(),
                                                                         dumping)
            metrics = {**rollout_metrics(all_groups, all_results, all_correct),
                       **{f"select/{k}": float(v) for k, v in counts.items()},
                       "rollout/temperature": temperature}
            if distributed.any_rank(bool(d.keep)):  # a rank with nothing kept still joins FSDP's collectives
                batch = d.update_batch() if cfg.dynamic_sampling else (d.prompts, d.groups, d.rewards(), d.keep)
                ro = build_rollouts(*batch, cfg)
                metrics.update(update(model, reference, optimizer, ro, cfg, temperature, pad_id, rt))
            metrics["train/lr"] = scheduler.get_last_lr()[0]  # the rate this step used, not the next one
            with warnings.catch_warnings():
                # A step whose every group was dropped makes no update; the schedule still counts RL steps.
                warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
                scheduler.step()
            timer["time/update"] = time.perf_counter() - t

            done = step + 1
            # The whole step up to here: the three phases and the little outside them (choosing the prompts).
            timer["time/step"] = time.perf_counter() - step_start
            sampled_tokens = sum(c.num_tokens for g in all_groups for c in g)
            metrics.update(timer | throughput(sampled_tokens, timer) | runtime.memory_metrics(rt.device))
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['rollout/reward_mean']:.3f}",
                            acc=f"{metrics['rollout/accuracy']:.2f}", T=f"{temperature:.2f}")
            if done % cfg.log.log_every == 0 or done == cfg.max_steps:
                logger.log(done, metrics)
            if dumping and rt.is_main:
                dump(out, done, all_rows, all_groups, all_results, all_correct)
            log_if_due(heldout_eval, model, done, cfg.max_steps, logger)  # before the checkpoint: a resume keeps it
            if cfg.log.save_every and done % cfg.log.save_every == 0 and done < cfg.max_steps:
                checkpoint.save(out, done, model, tokenizer, optimizer, scheduler,
                                {"position": position}, cfg.log.keep_checkpoints,
                                cfg.log.lora_merged_checkpoints, run_dir.fingerprint)
    bar.close()

    checkpoint.export(model, tokenizer, out / "final")
    summary = {"steps": cfg.max_steps, "prompts": len(rows)}
    summary |= summary_of(heldout_eval, out / "metrics.jsonl")  # export's barrier: metrics.jsonl is complete
    if rt.is_main:
        plot_curves(out / "metrics.jsonl", ["rollout/reward_mean", "rollout/accuracy", "heldout/pass@1",
                                            "rollout/length_mean"],
                    out / "plots" / "reward_length.png", title=f"GRPO: {out}")
        plot_curves(out / "metrics.jsonl", ["update/kl", "update/entropy", "update/clip_fraction",
                                            "update/grad_norm", "rollout/groups_all_equal", "rollout/temperature"], out / "plots" / "update.png", title=f"GRPO: {out}")
        write_json(out / "summary.json", summary)
    runtime.print0(f"[grpo] done; model in {out / 'final'}")
    logger.close()
    release(out)
    return summary
