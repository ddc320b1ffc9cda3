"""SFT training-step speed and peak memory: thinktune's step against a plain Hugging Face loop, same model and data.

Run:
    python benchmarks/sft_speed.py                 # SmolLM2-135M's shape, fp32, CPU
    python benchmarks/sft_speed.py --threads 1     # on a loaded machine
    python benchmarks/sft_speed.py --rounds 3 --steps 3

Both sides train a random-weight ``LlamaForCausalLM`` with SmolLM2-135M's config (``rollout.smollm2_135m``)
on the same 8 sequences of 300-512 tokens (right padded, loss on the last 60% of each), in micro-batches of
``--micro`` (gradient accumulation), then clip the gradient norm at 1 and take an AdamW step:

- thinktune: ``runtime.return_freed_memory`` (as ``runtime.init`` does), ``recipes.sft.forward_loss`` (the
  recipe's own: ``logprobs.next_token_logps``, the head swapped for the chunked scorer so no [B, T, V] logits
  exist, CPU products on oneDNN) and ``optim.build_optimizer`` (fused AdamW, no decay on 1-d parameters);
- plain: ``model(input_ids, attention_mask, labels=labels).loss.backward()`` and ``torch.optim.AdamW``.

Each side runs in its own subprocess (so its peak RSS, ``getrusage(RUSAGE_SELF).ru_maxrss`` at exit, is its
own), one warm-up step and then ``--steps`` timed ones; the sides alternate for ``--rounds`` rounds and the
best step counts (the machine is shared, so the best is the least disturbed). tokens/s counts every input
token of the batch (padding included, as the recipe's ``train/input_tokens_per_s`` does).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from rollout import smollm2_135m  # noqa: E402

from thinktune.data.chat import IGNORE_INDEX  # noqa: E402
from thinktune.modeling.models import train_char_tokenizer  # noqa: E402

SIDES = ("thinktune", "plain")


def batch(tokenizer, vocab: int, rows: int = 8) -> dict[str, torch.Tensor]:
    """``rows`` random sequences of 300-512 tokens, right padded; labels on the last 60% of each."""
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(300, 513, (rows,), generator=gen).tolist()
    width, pad = max(lengths), tokenizer.pad_token_id
    ids = torch.full((rows, width), pad)  # [B, T]
    mask = torch.zeros(rows, width, dtype=torch.long)  # [B, T]
    labels = torch.full((rows, width), IGNORE_INDEX)  # [B, T]
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(len(tokenizer), vocab, (n,), generator=gen)
        mask[b, :n] = 1
        labels[b, int(0.4 * n):n] = ids[b, int(0.4 * n):n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train_side(side: str, steps: int, micro: int) -> dict:
    """One side's best step time and this process's peak RSS."""
    from thinktune import runtime
    from thinktune.config import OptimConfig
    from thinktune.recipes.sft import forward_loss
    from thinktune.train.optim import build_optimizer

    tokenizer = train_char_tokenizer(["0123456789"])
    model = smollm2_135m(tokenizer).train()
    data = batch(tokenizer, model.config.vocab_size)
    parts = [{k: v[i:i + micro] for k, v in data.items()} for i in range(0, data["input_ids"].shape[0], micro)]
    labelled = int((data["labels"][:, 1:] != IGNORE_INDEX).sum())
    rt = runtime.Runtime(device=torch.device("cpu"), dtype=torch.float32)
    if side == "thinktune":
        runtime.return_freed_memory()  # what runtime.init does first in every recipe
        optimizer = build_optimizer(model, OptimConfig(lr=1e-4))
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        for part in parts:
            if side == "thinktune":
                nll, _ = forward_loss(model, dict(part), rt)
                (nll / labelled).backward()  # the recipe divides by the whole step's labelled tokens
            else:
                out = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"], labels=part["labels"])
                (out.loss * len(parts)).backward()  # HF's mean per micro-batch, accumulated
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up (and the optimizer state's allocation)
    best = float("inf")
    for _ in range(steps):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return {"seconds": best, "tokens": int(data["input_ids"].numel()),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # a subprocess runs one side
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--micro", type=int, default=4, help="sequences per forward (of 8 per step)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.side:
        print(json.dumps(train_side(args.side, args.steps, args.micro)))
        return
    results: dict[str, list[dict]] = {side: [] for side in SIDES}
    for _ in range(args.rounds):
        for side in SIDES:
            cmd = [sys.executable, __file__, "--side", side, "--steps", str(args.steps), "--micro", str(args.micro),
                   "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"SmolLM2-135M shape, fp32, CPU, {args.threads} thread(s); 8 sequences of 300-512 tokens per step, "
          f"micro-batch {args.micro}; best of {args.rounds} x {args.steps} steps")
    rate = {}
    for side in SIDES:
        best = min(results[side], key=lambda r: r["seconds"])
        rate[side] = best["tokens"] / best["seconds"]
        rss = ", ".join(f"{r['peak_rss_gib']:.2f}" for r in results[side])
        print(f"{side:>9}: {rate[side]:7.0f} tokens/s ({best['seconds']:.2f} s/step)   peak RSS {rss} GiB")
    print(f"sft_speedup_vs_plain_hf: {rate['thinktune'] / rate['plain']:.2f}")


if __name__ == "__main__":
    main()
