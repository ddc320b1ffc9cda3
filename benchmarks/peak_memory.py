"""Peak RSS of ``thinktune sft`` and ``thinktune grpo`` on a SmolLM2-135M-shaped model, on CPU in fp32.

Run:
    python benchmarks/peak_memory.py                       # both recipes, this checkout
    python benchmarks/peak_memory.py --src /tmp/before/src # another checkout's library (e.g. a git worktree)
    python benchmarks/peak_memory.py --recipes sft --steps 3

The model is a random-weight ``LlamaForCausalLM`` with SmolLM2-135M's config (``smollm2_135m`` in
``benchmarks/rollout.py``: 30 layers, hidden 576, 49152-token vocabulary, tied embeddings), saved with a
character tokenizer (its ids are all below 49152, so the model keeps its full-size embedding; the weights,
gradients, optimizer state and logits are as large as the real model's).

SFT: 16 rows of 400-500 tokens (prompt plus reply), ``batch_size`` 8 in micro-batches of ``--micro``
(default 4, the config's default). GRPO: 4 prompts of 100-250 tokens x 8 samples, 64 new tokens, update
micro-batches of 8. Each recipe runs in its own subprocess, which prints its own
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at exit: the peak of that process alone (reward workers,
separate processes, are not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from rollout import smollm2_135m  # noqa: E402

CHARS = "0123456789+-*/=() abcdefghijklmnopqrstuvwxyz.,?"
# Runs the CLI in this process and reports this process's peak RSS (KiB on Linux) however it exits.
RUNNER = ("import resource, sys\nfrom thinktune.cli import main\ntry:\n    code = main(sys.argv[1:])\nfinally:\n"
          "    print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\n"
          "sys.exit(code)\n")


def text(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(CHARS) for _ in range(length))


def build_world(root: Path) -> None:
    """The model, its tokenizer and the SFT and GRPO data under ``root``."""
    from thinktune.modeling.models import sync_special_tokens, train_char_tokenizer

    tokenizer = train_char_tokenizer([CHARS])
    model = smollm2_135m(tokenizer)
    sync_special_tokens(model, tokenizer)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    rng = random.Random(0)
    with open(root / "sft.jsonl", "w") as f:
        for i in range(16):
            messages = [{"role": "user", "content": text(rng, rng.randint(100, 200))},
                        {"role": "assistant", "content": text(rng, rng.randint(280, 300))}]
            f.write(json.dumps({"id": i, "messages": messages}) + "\n")
    with open(root / "prompts.jsonl", "w") as f:
        for i in range(8):
            f.write(json.dumps({"id": i, "prompt": text(rng, rng.randint(100, 230)), "answer": "7"}) + "\n")


def overrides(recipe: str, root: Path, steps: int, micro: int) -> list[str]:
    common = {"model.path": root / "model", "model.system_prompt": "", "max_steps": steps, "log.log_every": 1,
              "log.save_every": 0, "log.progress": "false", "output_dir": root / f"out-{recipe}"}
    if recipe == "sft":
        extra = {"data.train": root / "sft.jsonl", "data.max_seq_len": 512, "batch_size": 8,
                 "micro_batch_size": micro}
    else:
        extra = {"data.prompts": root / "prompts.jsonl", "prompts_per_step": 4, "sampling.n": 8,
                 "sampling.max_new_tokens": 64, "micro_batch_size": 8, "sampling.batch_size": 32, "dump_every": 0}
    return [recipe, *(f"{k}={v}" for k, v in {**common, **extra}.items())]


def peak_rss(args: list[str], src: str | None) -> float:
    """Run the thinktune CLI with ``args`` in a subprocess; its peak RSS in GiB."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", RUNNER, *args], env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PEAK_RSS_KIB")]
    if done.returncode or not lines:
        raise SystemExit(f"thinktune {args[0]} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return int(lines[-1].split()[1]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", default=None, help="put this directory first on the subprocesses' PYTHONPATH")
    parser.add_argument("--recipes", nargs="+", default=["sft", "grpo"], choices=["sft", "grpo"])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--micro", type=int, default=4, help="SFT micro-batch size")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_world(root)
        for recipe in args.recipes:
            gib = peak_rss(overrides(recipe, root, args.steps, args.micro), args.src)
            print(f"{recipe}: peak RSS {gib:.2f} GiB ({args.steps} steps{', micro-batch ' + str(args.micro) if recipe == 'sft' else ''})")


if __name__ == "__main__":
    main()
