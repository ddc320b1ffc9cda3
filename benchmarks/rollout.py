"""thinktune's sampler against ``model.generate``: same model, prompts and lengths, in one run.

Run:
    python benchmarks/rollout.py                  # CPU: the demo's tiny Phi3, batch 16 and 64
    python benchmarks/rollout.py --device cuda    # GPU: a Qwen2-0.5B-shaped random bf16 model, batch 256
    python benchmarks/rollout.py --lora 16        # the model in peft LoRA adapters, as LoRA GRPO samples it
    python benchmarks/rollout.py --smollm         # CPU: SmolLM2-135M's shape (random fp32), chat-length prompts

``--smollm``: a random-weight ``LlamaForCausalLM`` with SmolLM2-135M's exact config (30 layers, hidden 576,
49152-token vocabulary), prompts of 100-250 tokens (a chat prompt with a system prompt), three cases:

- 32 rows = 4 prompts x 8 samples, 64 new tokens: GRPO's shape. ``generate`` gets the 4 prompts with
  ``num_return_sequences=8`` (it repeats each prompt 8 times and prefills all 32 rows); thinktune's engine
  gets them with ``n=8`` (it prefills each prompt once and copies its cache rows to its 8 samples). A
  feature comparison: each side's own way of sampling a group.
- 32 distinct prompts, 64 new tokens: both sides prefill and decode 32 rows.
- 8 distinct prompts, 48 new tokens.

Prompts of different lengths are left padded for ``generate`` (with an attention mask), which computes
every row as long as the longest; thinktune prefills them in groups of like length
(``lean.prefill_groups``). Random weights are fine: with ``min_new_tokens = max_new_tokens`` both sides make the same number of
tokens whatever they sample, and the time does not depend on which tokens.

Both sides sample at temperature 1 with no top-k/top-p and must produce exactly ``new`` tokens per row
(``min_new_tokens=new`` on both sides, so no row stops early). Each side runs once to warm up, then
``--repeats`` times, alternating with the other side; the best time counts (the machine is shared, so
the best is the least disturbed).
tokens/s counts generated tokens only; the time includes the prompt prefill on both sides.

Next to each figure the script prints the arithmetic floor of one decode step: its FLOPs (matmuls and
attention) at the matmul rate measured on this machine, on CPU; on CUDA, the bytes a step must read
(weights once plus the KV cache) at the measured copy bandwidth, and the share of that limit reached.

The last line is ``speedup_vs_generate: X.XX``, the smallest speedup over the cases run.

``--lora R`` wraps the model in rank-R LoRA adapters on every linear layer (B random, so they change the
output); ``generate`` then runs the peft model, and thinktune samples its inner model with the adapters in
place, which is what LoRA GRPO does (on CPU the lean decoder folds the adapters into its weight copies).

CPU threads: by default torch's own count (all cores), for both sides, as every thinktune stage runs.
On a loaded machine pass ``--threads 1``: on a shared 2-core machine a second thread is often descheduled
(measured here under load: 50 ms per step with 2 threads, 5 ms with 1, for the same model).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from thinktune.modeling.lora import decodable
from thinktune.modeling.models import IM_END, build_tiny_model, sync_special_tokens, train_char_tokenizer
from thinktune.rollout.sampler import RolloutEngine, SamplingParams

CHARS = "0123456789+-*/=() ?{}.abc"  # with the specials and role words: a 32-token vocabulary, like the demo's


@dataclass
class Case:
    batch: int  # rows decoded: prompts x samples
    prompt: int  # prompt tokens (the longest, with prompt_min)
    new: int
    samples: int = 1  # completions per prompt (generate: num_return_sequences; thinktune: SamplingParams.n)
    prompt_min: int = 0  # > 0: prompt lengths drawn uniformly from [prompt_min, prompt], left padded for generate

    @property
    def mean_prompt(self) -> float:
        return (self.prompt_min + self.prompt) / 2 if self.prompt_min else self.prompt

    def label(self) -> str:
        lengths = f"{self.prompt_min}-{self.prompt}" if self.prompt_min else f"{self.prompt}"
        shared = f" ({self.batch // self.samples} prompts x {self.samples})" if self.samples > 1 else ""
        return f"batch {self.batch:>3}{shared}  prompt {lengths}  new {self.new}"


def tiny_phi3(tokenizer):
    """The demo's model (configs/demo: Phi3, hidden 128, 4 layers, 4 heads, intermediate 512)."""
    return build_tiny_model("phi3", tokenizer, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=4,
                            intermediate_size=512, max_position_embeddings=256).eval()


def qwen2_half_b(tokenizer, device: torch.device):
    """Qwen2-0.5B's shape (896 hidden, 24 layers, 14/2 heads, 4864 intermediate, 151936 vocab), random bf16."""
    config = AutoConfig.for_model(
        "qwen2", vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, intermediate_size=4864, max_position_embeddings=32768, rope_theta=1e6,
        tie_word_embeddings=True, eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    sync_special_tokens(model, tokenizer)
    return model.eval()


def smollm2_135m(tokenizer):
    """SmolLM2-135M's exact config (Llama: hidden 576, 30 layers, 9 heads / 3 kv heads of 64, intermediate 1536,
    vocab 49152, tied embeddings, rope_theta 1e5), random fp32 weights; the tokenizer gives EOS and PAD."""
    config = AutoConfig.for_model(
        "llama", vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, intermediate_size=1536, max_position_embeddings=8192, rope_theta=1e5,
        rms_norm_eps=1e-5, tie_word_embeddings=True, eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa").eval()


def with_lora(model, rank: int):
    """``model`` in peft LoRA adapters of ``rank`` on every linear layer, B random (a fresh B is zero)."""
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return wrapped.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved_best(a, b, repeats: int, device: torch.device) -> tuple[float, float]:
    """Best seconds of ``a`` and of ``b``, timed alternately so that a burst of load elsewhere on the
    machine hits both sides alike."""
    a(), b()  # warm-up (and CUDA-graph capture on our side)
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for i, fn in enumerate((a, b)):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]


def case_prompts(case: Case, vocab: int, low: int) -> list[list[int]]:
    """``batch / samples`` random prompts of ``case``'s lengths, ids in ``[low, vocab)``."""
    gen = torch.Generator().manual_seed(case.batch)
    count = case.batch // case.samples
    if not case.prompt_min:
        return torch.randint(low, vocab, (count, case.prompt), generator=gen).tolist()
    lengths = torch.randint(case.prompt_min, case.prompt + 1, (count,), generator=gen).tolist()
    return [torch.randint(low, vocab, (n,), generator=gen).tolist() for n in lengths]


def run_case(model, tokenizer, case: Case, repeats: int, device: torch.device) -> tuple[float, float]:
    """Seconds for ``generate`` and for thinktune's sampler, each producing ``batch x new`` tokens."""
    prompts = case_prompts(case, model.config.vocab_size, len(tokenizer.all_special_ids) + 4)
    eos, pad = tokenizer.convert_tokens_to_ids(IM_END), tokenizer.pad_token_id
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)  # [B/samples, P] left padded
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)  # [B/samples, P]

    def hf() -> None:
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                 top_p=1.0, max_new_tokens=case.new, min_new_tokens=case.new,
                                 num_return_sequences=case.samples, eos_token_id=eos, pad_token_id=pad)
        assert out.shape == (case.batch, width + case.new), out.shape

    engine = RolloutEngine(decodable(model), tokenizer)  # a peft model's inner model, adapters in place
    params = SamplingParams(n=case.samples, max_new_tokens=case.new, min_new_tokens=case.new)

    def ours() -> None:
        out = engine.sample(prompts, params, batch_size=case.batch, show_progress=False)
        assert all(len(c.token_ids) == case.new for row in out for c in row)

    return interleaved_best(hf, ours, repeats, device)


# --------------------------------------------------------------------------------------------------------
# Floors


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """Measured FLOP/s of a ``size``-cubed matmul (the machine's best case)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = best_time(lambda: a @ b, 5, device)
    return 2 * size**3 / seconds


def copy_bandwidth(device: torch.device) -> float:
    """Measured bytes/s of a 1 GiB device-to-device copy (read + write)."""
    src = torch.empty(2**30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = best_time(lambda: dst.copy_(src), 5, device)
    return 2 * src.numel() / seconds


def step_flops(model, case: Case) -> float:
    """FLOPs of one decode step: 2 per weight per row for every matmul, plus attention over the cache."""
    cfg = model.config
    matmul_params = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n)
    matmul_params += model.get_output_embeddings().weight.numel() if cfg.tie_word_embeddings else 0
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    avg_len = case.mean_prompt + case.new / 2
    attention = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * avg_len
    return case.batch * (2 * matmul_params + attention)


def step_bytes(model, case: Case) -> float:
    """Bytes one decode step must read: every weight once (the embedding only through the LM head) and the
    KV cache at its average length."""
    cfg = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    avg_len = case.mean_prompt + case.new / 2
    elem = next(model.parameters()).element_size()
    kv = 2 * cfg.num_hidden_layers * case.batch * cfg.num_key_value_heads * head_dim * avg_len * elem
    return weights + kv


def report(case: Case, hf_s: float, ours_s: float) -> float:
    tokens = case.batch * case.new
    speedup = hf_s / ours_s
    print(f"{case.label()}:  generate {tokens / hf_s:>9.0f} tok/s "
          f"({hf_s / case.new * 1e3:.2f} ms/step)   thinktune {tokens / ours_s:>9.0f} tok/s "
          f"({ours_s / case.new * 1e3:.2f} ms/step)   speedup {speedup:.2f}x")
    return speedup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lora", type=int, default=0, help="wrap the model in LoRA adapters of this rank")
    parser.add_argument("--smollm", action="store_true", help="CPU: SmolLM2-135M's shape on chat-length prompts")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="CPU intra-op threads, both sides (default: torch's, all cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tokenizer = train_char_tokenizer([CHARS])
    if device.type == "cpu":
        model, cases = tiny_phi3(tokenizer), [Case(16, 32, 128), Case(64, 32, 128)]
        if args.smollm:
            model, cases = smollm2_135m(tokenizer), [Case(32, 250, 64, samples=8, prompt_min=100),
                                                     Case(32, 250, 64, prompt_min=100), Case(8, 250, 48, prompt_min=100)]
        rate = matmul_rate(device, torch.float32, 512)
        print(f"device cpu, {torch.get_num_threads()} thread(s); {type(model).__name__}, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, vocab {len(tokenizer)}; "
              f"measured fp32 matmul rate {rate / 1e9:.1f} GFLOP/s (512^3)")
    else:
        model, cases = qwen2_half_b(tokenizer, device), [Case(256, 128, 256)]
        bandwidth = copy_bandwidth(device)
        print(f"device {torch.cuda.get_device_name(device)}; Qwen2-0.5B-shaped bf16, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters; "
              f"measured copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    if args.lora:
        model = with_lora(model, args.lora)
        print(f"LoRA r={args.lora} on every linear layer; thinktune decoder: "
              f"{type(RolloutEngine(decodable(model), tokenizer)._get_decoder(1, 8)).__name__}")
    speedups = []
    for case in cases:
        hf_s, ours_s = run_case(model, tokenizer, case, args.repeats, device)
        speedups.append(report(case, hf_s, ours_s))
        step_s = ours_s / case.new
        if device.type == "cpu":
            flops = step_flops(model, case)
            print(f"    floor: {flops / 1e6:.1f} MFLOP/step at {rate / 1e9:.1f} GFLOP/s = "
                  f"{flops / rate * 1e3:.3f} ms/step; thinktune's step is {step_s * rate / flops:.1f}x the floor")
        else:
            needed = step_bytes(model, case)
            print(f"    floor: {needed / 1e9:.2f} GB/step at {bandwidth / 1e9:.0f} GB/s = "
                  f"{needed / bandwidth * 1e3:.3f} ms/step; thinktune reaches "
                  f"{needed / step_s / bandwidth:.1%} of the memory-bandwidth limit")
    print(f"speedup_vs_generate: {min(speedups):.2f}")


if __name__ == "__main__":
    main()
