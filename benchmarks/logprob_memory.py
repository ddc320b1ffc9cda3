"""Peak memory and time of scoring completion tokens (log-probs + entropy, forward and backward): the
output head and log-softmax over all tokens at once, against ``thinktune.losses.chunked_score``.

    .venv/bin/python benchmarks/logprob_memory.py [--tokens 4096] [--hidden 1024] [--vocab 32768] [--chunk-mb 32]

Both sides take the same final hidden states [N, hidden] and output head [vocab, hidden] (float32, random)
and compute what a GRPO update needs of them: per-token log-probs of the sampled tokens and the entropy
with its gradient (the entropy bonus), then the backward of their sum. The peer is what an HF forward
plus ``losses.score_tokens`` does: ``head(hidden)`` -> float32 logits -> log-softmax, every [N, vocab] tensor
alive until the backward. Each side runs in its own subprocess, on CUDA when there is one (peak from
``torch.cuda.max_memory_allocated``) else on the CPU (peak resident set growth, ``ru_maxrss``). Prints,
per side, ``peak_mb`` and ``seconds`` (best of 3), then ``memory_ratio`` (peer / chunked: > 1, chunked uses
less) and ``time_ratio`` (chunked / peer: the price of recomputing each chunk's logits in the backward).
At the Phi-4 budget (one 31,744-token completion, vocabulary 100,352) the peer's float32 [N, vocab]
tensors are 12.7 GB each.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def side(name: str, tokens: int, hidden: int, vocab: int, chunk_mb: int) -> dict:
    from thinktune.losses import chunked_score, score_tokens

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator(device=device).manual_seed(0)
    head = torch.nn.Linear(hidden, vocab, bias=False, device=device)
    x = torch.randn(tokens, hidden, device=device, generator=gen, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,), device=device, generator=gen)

    def step() -> None:
        if name == "chunked":
            logps, entropy = chunked_score(x, targets, 1.0, "grad", head, chunk_bytes=chunk_mb << 20)
        else:
            logps, entropy = score_tokens(head(x), targets, 1.0, "grad")
        (logps.sum() + 1e-3 * entropy.sum()).backward()
        x.grad = head.weight.grad = None

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
    parser.add_argument("--side", choices=["peer", "chunked"], help=argparse.SUPPRESS)  # one subprocess's side
    args = parser.parse_args()
    if args.side:
        print(json.dumps(side(args.side, args.tokens, args.hidden, args.vocab, args.chunk_mb)))
        return
    full_mb = args.tokens * args.vocab * 4 / 2**20
    print(f"{args.tokens} tokens, hidden {args.hidden}, vocab {args.vocab}: one float32 [N, vocab] tensor is "
          f"{full_mb:.0f} MB; chunks of {args.chunk_mb} MB")
    results = {}
    for name in ("peer", "chunked"):
        cmd = [sys.executable, __file__, "--side", name] + [f"--{k.replace('_', '-')}={v}" for k, v in
                                                          vars(args).items() if k != "side"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
        r = results[name]
        print(f"{name:<8} peak_mb: {r['peak_mb']:.0f}  seconds: {r['seconds']:.3f}  ({r['device']})")
    print(f"memory_ratio: {results['peer']['peak_mb'] / max(results['chunked']['peak_mb'], 1):.1f}")
    print(f"time_ratio: {results['chunked']['seconds'] / results['peer']['seconds']:.2f}")


if __name__ == "__main__":
    main()
