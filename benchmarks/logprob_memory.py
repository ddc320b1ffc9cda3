"""Peak memory and time of scoring tokens (log-probs + entropy, forward and backward), two ways each:

    .venv/bin/python benchmarks/logprob_memory.py [--tokens 4096] [--hidden 1024] [--vocab 32768] [--chunk-mb 32]

1. ``chunked_score`` against scoring all at once. Both take the same final hidden states [N, hidden] and output
   head [vocab, hidden] (float32, random) and compute what a GRPO update needs: per-token log-probs of the
   sampled tokens and the entropy with its gradient (the entropy bonus), then the backward of their sum. The
   peer is what an HF forward plus ``losses.score_tokens`` does: ``head(hidden)`` -> float32 logits ->
   log-softmax, every [N, vocab] tensor alive until the backward.
2. A whole model's SFT loss: a 2-layer Qwen2 (the given hidden size and vocabulary) on one N-token sequence,
   forward and backward, through ``logprobs.next_token_logps`` (its head swapped, for the call, for one that
   scores inside the forward a chunk at a time) against ``losses.sft_nll_sum`` of the model's [N, vocab] logits.

Each side runs in its own subprocess, on CUDA when there is one (peak from ``torch.cuda.max_memory_allocated``)
else on the CPU (peak resident set growth, ``ru_maxrss``). Prints, per side, ``peak_mb`` and ``seconds`` (best of
3), then per comparison ``memory_ratio`` (peer / thinktune: > 1, thinktune uses less) and ``time_ratio``
(thinktune / peer: the price of recomputing each chunk's logits in the backward). At the Phi-4 budget (one
31,744-token completion, vocabulary 100,352) the peer's float32 [N, vocab] tensors are 12.7 GB each.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

# scoring: all at once, chunked; a whole model's SFT loss: through its logits, through the stand-in head
SIDES = ("peer", "chunked", "model-logits", "model-head")


def side(name: str, tokens: int, hidden: int, vocab: int, chunk_mb: int) -> dict:
    from thinktune.train.logprobs import next_token_logps
    from thinktune.train.losses import chunked_score, score_tokens, sft_nll_sum

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator(device=device).manual_seed(0)
    chunk_bytes = chunk_mb << 20
    if name in ("peer", "chunked"):
        head = torch.nn.Linear(hidden, vocab, bias=False, device=device)
        x = torch.randn(tokens, hidden, device=device, generator=gen, requires_grad=True)
        targets = torch.randint(0, vocab, (tokens,), device=device, generator=gen)

        def step() -> None:
            if name == "chunked":
                logps, entropy = chunked_score(x, targets, 1.0, "grad", head, chunk_bytes=chunk_bytes)
            else:
                logps, entropy = score_tokens(head(x), targets, 1.0, "grad")
            (logps.sum() + 1e-3 * entropy.sum()).backward()
            x.grad = head.weight.grad = None
    else:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=8,
                             num_key_value_heads=8, intermediate_size=2 * hidden, max_position_embeddings=tokens)
        model = Qwen2ForCausalLM(config).to(device)
        ids = torch.randint(0, vocab, (1, tokens), device=device, generator=gen)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

        def step() -> None:
            if name == "model-head":
                loss = -next_token_logps(model, batch, ids, chunk_bytes=chunk_bytes).sum()
            else:
                loss = sft_nll_sum(model(**batch).logits, ids)[0]
            loss.backward()
            model.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(3):
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"device": device.type, "peak_mb": peak / 2**20, "seconds": min(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--chunk-mb", type=int, default=32, help="float32 logits per chunk (thinktune: 256)")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one subprocess's side
    args = parser.parse_args()
    if args.side:
        print(json.dumps(side(args.side, args.tokens, args.hidden, args.vocab, args.chunk_mb)))
        return
    full_mb = args.tokens * args.vocab * 4 / 2**20
    print(f"{args.tokens} tokens, hidden {args.hidden}, vocab {args.vocab}: one float32 [N, vocab] tensor is "
          f"{full_mb:.0f} MB; chunks of {args.chunk_mb} MB")
    results = {}
    for name in SIDES:
        cmd = [sys.executable, __file__, "--side", name] + [f"--{k.replace('_', '-')}={v}" for k, v in
                                                          vars(args).items() if k != "side"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[name] = r = json.loads(out.strip().splitlines()[-1])
        print(f"{name:<12} peak_mb: {r['peak_mb']:.0f}  seconds: {r['seconds']:.3f}  ({r['device']})")
    for ours, peer, what in (("chunked", "peer", "scoring"), ("model-head", "model-logits", "SFT loss")):
        a, b = results[ours], results[peer]
        print(f"{what}: memory_ratio: {b['peak_mb'] / max(a['peak_mb'], 1):.1f}  "
              f"time_ratio: {a['seconds'] / b['seconds']:.2f}")


if __name__ == "__main__":
    main()
