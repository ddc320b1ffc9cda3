"""Batched sampling for any HF causal LM: the one place every stage draws completions from.

``sample`` takes tokenized prompts and returns, per prompt, ``n`` completions with their token ids, text
and whether they ended with the end-of-sequence token (a completion cut at ``max_new_tokens`` is not
finished). Sampling is seeded: the same call with the same seed gives the same completions.

This first version runs on ``model.generate``; the rollout-engine issue replaces the decode loop behind
the same interface with a faster one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from thinktune.errors import ConfigError
from thinktune.tracking import progress


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # completions per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    max_new_tokens: int = 256
    greedy: bool = False

    def __post_init__(self) -> None:
        if self.greedy and self.n > 1:
            raise ConfigError(f"greedy decoding with n={self.n} samples gives the same completion every time; "
                              "set samples=1 or greedy=false")
        if not self.greedy and self.temperature <= 0:
            raise ConfigError("temperature must be > 0 for sampling; use greedy=true for argmax decoding")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p} must be in (0, 1]")


@dataclass
class Completion:
    token_ids: list[int]  # generated tokens, up to and including the EOS when finished
    text: str  # decoded generation without the EOS or padding
    finished: bool  # ended with EOS (False: cut at max_new_tokens)


@torch.no_grad()
def sample(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]],
           params: SamplingParams, seed: int = 0, batch_size: int = 64,
           show_progress: bool = True) -> list[list[Completion]]:
    """Sample ``params.n`` completions for each tokenized prompt.

    Returns:
        ``out[p][j]`` is completion ``j`` of prompt ``p``.
    """
    eos_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    requests = [(p, j) for j in range(params.n) for p in range(len(prompts))]
    out: list[list[Completion | None]] = [[None] * params.n for _ in prompts]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    bar = progress(len(requests), desc="sample", enabled=show_progress)
    for chunk_index, start in enumerate(range(0, len(requests), batch_size)):
        chunk = requests[start:start + batch_size]
        input_ids, attention_mask = _left_pad([prompts[p] for p, _ in chunk], pad_id)
        torch.manual_seed(seed * 1_000_003 + chunk_index)
        generated = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
            do_sample=not params.greedy, temperature=None if params.greedy else params.temperature,
            top_p=None if params.greedy else params.top_p, top_k=params.top_k or None,
            max_new_tokens=params.max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id,
        )[:, input_ids.shape[1]:].cpu()  # [B, new]
        for (p, j), row in zip(chunk, generated.tolist(), strict=True):
            out[p][j] = _completion(row, eos_id, tokenizer)
        bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    return out  # type: ignore[return-value]


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [B, T]
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # [B, T]
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


def _completion(row: list[int], eos_id: int, tokenizer: PreTrainedTokenizerBase) -> Completion:
    finished = eos_id in row
    tokens = row[: row.index(eos_id) + 1] if finished else row
    body = tokens[:-1] if finished else tokens
    return Completion(token_ids=tokens, text=tokenizer.decode(body, skip_special_tokens=False), finished=finished)
