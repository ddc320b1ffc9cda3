"""Chat rendering with loss masks, padding and packing.

An SFT row renders through the tokenizer's chat template, which also adds the configured system prompt
(``thinktune.modeling.chat_format``). The loss covers the final assistant turn only (its text and the end-of-turn
token, so the model learns to stop; whatever the template writes after that token, such as ChatML's
newline, is cut off, since nothing is ever sampled past it); the system and user turns, and the assistant
header, are masked with -100. The boundary is found by rendering the
conversation without its last turn and with the generation prompt, which must be a token prefix of the full
rendering; a template for which it is not is an error, never a silently wrong mask.

Packing concatenates examples into rows of ``max_seq_len`` tokens. Attention never crosses an example
boundary: each packed row carries a block-diagonal causal mask and positions that restart at 0 per example.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from thinktune.errors import DataError

IGNORE_INDEX = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken


def with_system(messages: list[dict], system_prompt: str) -> list[dict]:
    """Prepend ``system_prompt`` unless the conversation has a system message or the prompt is empty (for
    requests to a teacher; thinktune's own prompts get theirs from the chat template)."""
    if not system_prompt or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> list[int]:
    """Token ids of a conversation up to and including the assistant header, ready for generation."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


def prompt_messages(prompt: str | list[dict]) -> list[dict]:
    """A prompt row's ``prompt`` field (text or a messages list) as a messages list."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def render_sft(tokenizer: PreTrainedTokenizerBase, messages: list[dict], where: str = "") -> Example:
    """Tokenize a conversation; labels keep only the last assistant turn, up to its end-of-turn token."""
    prompt_ids = render_prompt(tokenizer, messages[:-1])
    full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    full_ids = tokenizer(full_text, add_special_tokens=False).input_ids
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise DataError(f"{where}: the chat template does not render the prompt as a prefix of the full "
                        "conversation, so the assistant part cannot be masked; use model.chat_template=phi4")
    n = len(prompt_ids)
    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    reply = full_ids[n:]
    if eos in reply:  # drop what the template writes after the turn's end (ChatML's "\n")
        reply = reply[: len(reply) - reply[::-1].index(eos)]
    return Example(input_ids=full_ids[:n] + reply, labels=[IGNORE_INDEX] * n + reply)


def pad_batch(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example. Returns input_ids, labels and attention_mask, each [B, T]."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # [B, T]
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)  # [B, T]
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def pack_examples(examples: list[Example], max_seq_len: int) -> list[list[Example]]:
    """Greedily group consecutive examples into bins of at most ``max_seq_len`` tokens (order kept)."""
    bins: list[list[Example]] = []
    current: list[Example] = []
    used = 0
    for e in examples:
        if current and used + len(e.input_ids) > max_seq_len:
            bins.append(current)
            current, used = [], 0
        current.append(e)
        used += len(e.input_ids)
    if current:
        bins.append(current)
    return bins


def packed_batch(bins: list[list[Example]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pack each bin into one row with restarting positions and a block-diagonal causal mask.

    Returns input_ids, labels, position_ids [B, T] and attention_mask [B, 1, T, T] (bool, True = attend),
    which HF models accept as a ready-made 4D mask.
    """
    width = max(sum(len(e.input_ids) for e in b) for b in bins)
    input_ids = torch.full((len(bins), width), pad_id, dtype=torch.long)  # [B, T]
    labels = torch.full((len(bins), width), IGNORE_INDEX, dtype=torch.long)  # [B, T]
    position_ids = torch.zeros((len(bins), width), dtype=torch.long)  # [B, T]
    segment = torch.full((len(bins), width), -1, dtype=torch.long)  # [B, T]; -1 marks padding
    for i, b in enumerate(bins):
        start = 0
        for s, e in enumerate(b):
            n = len(e.input_ids)
            input_ids[i, start:start + n] = torch.tensor(e.input_ids)
            labels[i, start:start + n] = torch.tensor(e.labels)
            position_ids[i, start:start + n] = torch.arange(n)
            segment[i, start:start + n] = s
            start += n
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))  # [T, T]
    same = segment[:, :, None] == segment[:, None, :]  # [B, T, T]
    # Padding positions see earlier padding and themselves (never real tokens, which never see them), so no
    # softmax row is empty, which would give NaN.
    eye = torch.eye(width, dtype=torch.bool)
    attention_mask = ((same & causal) | eye)[:, None]  # [B, 1, T, T]
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
            "attention_mask": attention_mask}
