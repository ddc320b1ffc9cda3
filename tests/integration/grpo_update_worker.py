"""One GRPO update on fixed rollouts, on as many ranks as torchrun gives; rank 0 saves metrics and weights.

    torchrun --nproc_per_node=2 tests/integration/grpo_update_worker.py MODEL_DIR OUT.pt

``test_distributed.py`` runs it on two ranks and calls ``main`` in-process for one, then compares. The
rollouts are fixed (not sampled), so both runs see the same global batch; the split over two ranks is
uneven (5 and 3 sequences, so 3 and 2 micro-batches of 2), which exercises the filler passes.
"""

from __future__ import annotations

import functools
import os
import sys

import torch

from thinktune import runtime
from thinktune.config import load_config
from thinktune.modeling import models
from thinktune.recipes import grpo
from thinktune.rollout import weights
from thinktune.train import distributed, logprobs
from thinktune.train.advantages import group_advantages
from thinktune.train.logprobs import PromptCache

NUM_SEQS, GROUP, RANK_SHARES = 8, 4, {1: [list(range(8))], 2: [[0, 1, 2, 3, 4], [5, 6, 7]]}


def fixed_rollouts(vocab: int) -> grpo.Rollouts:
    """8 sequences in 2 groups: prompts of 3-5 tokens, completions of 2-9, made-up sampling log-probs."""
    g = torch.Generator().manual_seed(0)
    prompts, completions, old = [], [], []
    for i in range(NUM_SEQS):
        prompt, completion = 3 + i % 3, 2 + i
        ids = torch.randint(3, vocab, (prompt + completion,), generator=g).tolist()
        prompts.append(ids[:prompt])
        completions.append(ids[prompt:])
        old.append((-3.5 + 0.3 * torch.rand(completion, generator=g)).tolist())
    group_ids = [i // GROUP for i in range(NUM_SEQS)]
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0, 0.0, 1.0, 1.0, 0.0])  # [8]
    adv = group_advantages(rewards, torch.tensor(group_ids), "grpo")
    return grpo.Rollouts(prompts=prompts, prompt_index=list(range(NUM_SEQS)), completions=completions,
                         old_logps=old, advantages=adv)


def subset(ro: grpo.Rollouts, idx: list[int]) -> grpo.Rollouts:
    return grpo.Rollouts(prompts=ro.prompts, prompt_index=[ro.prompt_index[i] for i in idx],
                         completions=[ro.completions[i] for i in idx], old_logps=[ro.old_logps[i] for i in idx],
                         advantages=ro.advantages[idx])


def main(model_dir: str, out_file: str) -> None:
    cfg = load_config(grpo.GRPOConfig, None, [
        f"model.path={model_dir}", "model.system_prompt=", "data.prompts=unused.jsonl", "beta=0.1", "gamma=0.01",
        "micro_batch_size=2", "updates_per_batch=2"])
    rt = runtime.init("fp32", 0)
    tokenizer = models.load_tokenizer(cfg.model)
    model = models.load_model(cfg.model, tokenizer, rt.device, torch.float32).train()
    model = distributed.prepare(model, cfg.model, rt)
    reference = grpo.reference_model(cfg, model, tokenizer, rt)
    # Plain SGD, not the recipe's AdamW: Adam's per-element normalisation hides a wrong loss scale and turns
    # fp32 noise on near-zero gradients into whole steps; with SGD the weights change by lr x the gradient.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ro = subset(fixed_rollouts(len(tokenizer)), RANK_SHARES[rt.world_size][rt.rank])
    # Log-probs in chunks of 3 tokens. Under FSDP each sequence is forwarded whole and a stand-in head scores
    # inside the forward: the backward then recomputes every chunk's head with the weight FSDP gathers again,
    # and the gradient must still equal the one-process run's.
    scored = []
    head_forward = logprobs._ScoringHead.forward
    grpo.PromptCache = functools.partial(PromptCache, chunk_bytes=3 * 4 * len(tokenizer))
    logprobs._ScoringHead.forward = lambda self, hidden: scored.append(hidden.shape[0]) or head_forward(self, hidden)
    try:
        metrics = grpo.update(model, reference, optimizer, ro, cfg, 1.0, tokenizer.pad_token_id, rt)
    finally:  # main also runs inside the test process, for one rank
        grpo.PromptCache, logprobs._ScoringHead.forward = PromptCache, head_forward
    assert bool(scored) == (rt.world_size > 1), scored  # FSDP: the whole-sequence path with the stand-in head
    state = distributed.full_state_dict(model)
    # What vLLM rollouts push every step: each parameter gathered whole, on every rank, in step.
    pushed = {name: t.cpu().clone() for name, t in weights.full_parameters(model)}
    if rt.is_main:
        assert pushed.keys() == {n for n, _ in model.named_parameters()}
        for name, t in pushed.items():
            assert torch.equal(t, state[name]), name
        torch.save({"metrics": metrics, "state": state}, out_file)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    runtime.cleanup()
    # Leave without running C++ static destructors. Rank 1, which finishes first here, aborted in them in
    # 4 of about 100 runs on this 2-core CPU ("terminate called without an active exception", SIGABRT;
    # faulthandler showed no Python frame left, so every result was already written), and torchrun then
    # killed rank 0 before it saved. A barrier before leaving the process group did not prevent it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
