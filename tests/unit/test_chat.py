"""Tests for thinktune.data.chat and the SFT loss: the Phi-4 format, loss masks, padding and packing.

Expected strings are written out by hand from the format in docs/recipe.md section 1.2, not produced by the
template under test. The packing test compares a tiny random Phi3 model's logits inside a packed row with
its logits for each example alone: equal logits mean no attention crosses an example boundary.
"""

from __future__ import annotations

import math

import pytest
import torch

from thinktune.data.chat import (
    IGNORE_INDEX,
    Example,
    pack_examples,
    packed_batch,
    pad_batch,
    render_prompt,
    render_sft,
    with_system,
)
from thinktune.modeling.chat_format import with_system_prompt
from thinktune.train.losses import sft_nll_sum

SYS, USER, ASSIST = "<|im_start|>system<|im_sep|>", "<|im_start|>user<|im_sep|>", "<|im_start|>assistant<|im_sep|>"
END = "<|im_end|>"

QA = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
COT = [{"role": "user", "content": "What is 2+3?"},
       {"role": "assistant", "content": "<think>2+3=5</think>\\boxed{5}"}]
MULTI = [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"},
         {"role": "user", "content": "7*8"}, {"role": "assistant", "content": "<think>7*8=56</think>\\boxed{56}"}]
WITH_SYS = [{"role": "system", "content": "Be brief."}, *QA]


@pytest.fixture
def briefed(char_tokenizer, monkeypatch):
    """The char tokenizer with "Be brief." written into its template as the system prompt."""
    monkeypatch.setattr(char_tokenizer, "chat_template", with_system_prompt(char_tokenizer.chat_template, "Be brief."))
    return char_tokenizer


def ex(n: int, start: int = 10) -> Example:
    """An example of n distinct ids whose first half is unlabelled."""
    ids = list(range(start, start + n))
    return Example(input_ids=ids, labels=[IGNORE_INDEX] * (n // 2) + ids[n // 2:])


def labelled_span(tok, e: Example) -> tuple[int, str]:
    """(number of leading masked tokens, decoded text of the labelled tail); asserts the mask is one prefix."""
    n = next(i for i, x in enumerate(e.labels) if x != IGNORE_INDEX)
    assert all(x == IGNORE_INDEX for x in e.labels[:n])
    assert e.labels[n:] == e.input_ids[n:]
    return n, tok.decode(e.labels[n:])


# --------------------------------------------------------------------------------------------------------
# The Phi-4 format


def test_template_renders_the_exact_phi4_string(char_tokenizer) -> None:
    text = char_tokenizer.apply_chat_template(QA, tokenize=False)
    assert text == "<|im_start|>user<|im_sep|>Q<|im_end|><|im_start|>assistant<|im_sep|>A<|im_end|>"


def test_template_renders_a_system_message_first(char_tokenizer) -> None:
    text = char_tokenizer.apply_chat_template(WITH_SYS, tokenize=False)
    assert text == ("<|im_start|>system<|im_sep|>Be brief.<|im_end|>"
                    "<|im_start|>user<|im_sep|>Q<|im_end|><|im_start|>assistant<|im_sep|>A<|im_end|>")


def test_generation_prompt_ends_with_the_assistant_header(char_tokenizer) -> None:
    text = char_tokenizer.apply_chat_template(QA[:1], tokenize=False, add_generation_prompt=True)
    assert text == USER + "Q" + END + ASSIST
    assert char_tokenizer.decode(render_prompt(char_tokenizer, QA[:1])) == text


def test_the_templates_system_prompt_comes_first_in_a_rendered_prompt(briefed) -> None:
    ids = render_prompt(briefed, QA[:1])
    assert briefed.decode(ids) == SYS + "Be brief." + END + USER + "Q" + END + ASSIST


@pytest.mark.parametrize("token", ["<think>", "</think>", "<|im_end|>", "<|im_start|>", "<|im_sep|>"])
def test_format_markers_are_single_tokens(char_tokenizer, token: str) -> None:
    ids = char_tokenizer("x" + token + "x", add_special_tokens=False).input_ids
    assert len(ids) == 3
    assert char_tokenizer.convert_ids_to_tokens(ids[1]) == token
    assert char_tokenizer.eos_token == "<|im_end|>"


# --------------------------------------------------------------------------------------------------------
# Loss masks


def test_render_sft_masks_prompt_and_header_and_labels_answer_and_end(char_tokenizer) -> None:
    e = render_sft(char_tokenizer, COT)
    assert len(e.labels) == len(e.input_ids)
    assert char_tokenizer.decode(e.input_ids) == USER + "What is 2+3?" + END + ASSIST + COT[1]["content"] + END
    n, labelled = labelled_span(char_tokenizer, e)
    assert char_tokenizer.decode(e.input_ids[:n]) == USER + "What is 2+3?" + END + ASSIST
    assert labelled == "<think>2+3=5</think>\\boxed{5}<|im_end|>"
    # The end-of-turn token is the last labelled token, so the model learns to stop.
    assert e.labels[-1] == char_tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_multi_turn_labels_only_the_last_assistant_turn(char_tokenizer) -> None:
    e = render_sft(char_tokenizer, MULTI)
    n, labelled = labelled_span(char_tokenizer, e)
    assert labelled == MULTI[-1]["content"] + END
    # The earlier assistant turn "2" sits inside the masked prefix.
    assert char_tokenizer.decode(e.input_ids[:n]) == USER + "1+1" + END + ASSIST + "2" + END + USER + "7*8" + END + ASSIST


def test_render_sft_prepends_the_system_prompt_unmasked_from_loss(briefed) -> None:
    e = render_sft(briefed, QA)
    n, labelled = labelled_span(briefed, e)
    assert briefed.decode(e.input_ids[:n]) == SYS + "Be brief." + END + USER + "Q" + END + ASSIST
    assert labelled == "A" + END


def test_with_system_prepends_only_when_needed() -> None:
    assert with_system(QA, "Be brief.") == [{"role": "system", "content": "Be brief."}, *QA]
    assert with_system(QA, "") == QA
    assert with_system(WITH_SYS, "Other") == WITH_SYS  # the conversation's own system message wins
    before = [dict(m) for m in QA]
    with_system(QA, "Be brief.")
    assert QA == before  # the caller's list is not modified


# --------------------------------------------------------------------------------------------------------
# Padding and packing


def test_pad_batch_right_pads_with_masks() -> None:
    a, b = ex(3), ex(5, start=20)
    batch = pad_batch([a, b], pad_id=0)
    assert {k: tuple(v.shape) for k, v in batch.items()} == {"input_ids": (2, 5), "labels": (2, 5),
                                                              "attention_mask": (2, 5)}
    assert batch["input_ids"].tolist() == [[10, 11, 12, 0, 0], [20, 21, 22, 23, 24]]
    assert batch["labels"].tolist() == [[-100, 11, 12, -100, -100], [-100, -100, 22, 23, 24]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


def test_pack_examples_fills_bins_greedily_in_order() -> None:
    lengths = [3, 4, 2, 5, 1, 7]
    examples = [ex(n, start=10 * i) for i, n in enumerate(lengths)]
    bins = pack_examples(examples, max_seq_len=7)
    # 3+4=7 fits; 2 would make 9 -> new bin; 2+5=7; 1 would make 8 -> new bin; 1+7=8 -> new bin.
    assert [[len(e.input_ids) for e in b] for b in bins] == [[3, 4], [2, 5], [1], [7]]
    assert [e for b in bins for e in b] == examples  # order kept, nothing lost or repeated
    assert all(sum(len(e.input_ids) for e in b) <= 7 for b in bins)


def test_packed_batch_restarts_positions_and_concatenates() -> None:
    bins = [[ex(3), ex(4, start=20)], [ex(2, start=30)]]
    batch = packed_batch(bins, pad_id=0)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21, 22, 23], [30, 31, 0, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 11, 12, -100, -100, 22, 23], [-100, 31, -100, -100, -100, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3], [0, 1, 0, 0, 0, 0, 0]]


def test_packed_mask_is_block_diagonal_causal() -> None:
    bins = [[ex(3), ex(4, start=20)], [ex(2, start=30)]]
    mask = packed_batch(bins, pad_id=0)["attention_mask"]
    assert mask.shape == (2, 1, 7, 7) and mask.dtype == torch.bool
    segments = [[0, 0, 0, 1, 1, 1, 1], [0, 0, None, None, None, None, None]]  # None: padding
    for row, seg in enumerate(segments):
        for i in range(7):
            for j in range(7):
                if seg[i] is None:  # a padding query: its output is unused; it must not see real tokens and
                    if seg[j] is not None or i == j:  # must see itself, so that its softmax is not empty
                        assert bool(mask[row, 0, i, j]) == (i == j), (row, i, j)
                else:
                    assert bool(mask[row, 0, i, j]) == (j <= i and seg[j] == seg[i]), (row, i, j)


@pytest.fixture(scope="module")
def rendered(char_tokenizer) -> list[Example]:
    convs = [COT, MULTI, WITH_SYS, QA]
    return [render_sft(char_tokenizer, c) for c in convs]


def _logits(model, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(**kwargs).logits


@pytest.mark.parametrize("max_seq_len", [128, 60])
def test_packed_logits_equal_each_example_alone(tiny_phi3, rendered, max_seq_len: int) -> None:
    """max_seq_len 128 puts everything in one row; 60 gives several rows, some padded."""
    bins = pack_examples(rendered, max_seq_len)
    assert any(len(b) > 1 for b in bins)
    batch = packed_batch(bins, pad_id=0)
    packed = _logits(tiny_phi3, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     position_ids=batch["position_ids"])
    assert torch.isfinite(packed).all()  # padding rows included
    for row, b in enumerate(bins):
        start = 0
        for e in b:
            n = len(e.input_ids)
            alone = _logits(tiny_phi3, input_ids=torch.tensor([e.input_ids]))
            torch.testing.assert_close(packed[row, start:start + n], alone[0], atol=1e-5, rtol=0)
            start += n


def test_packing_without_the_block_mask_would_leak(tiny_phi3, rendered) -> None:
    """Control: a plain causal mask over the same row changes the second example's logits, so the test
    above can tell a leaking mask from a correct one."""
    batch = packed_batch([rendered[:2]], pad_id=0)
    leaky = _logits(tiny_phi3, input_ids=batch["input_ids"], position_ids=batch["position_ids"])
    n0, n1 = len(rendered[0].input_ids), len(rendered[1].input_ids)
    alone = _logits(tiny_phi3, input_ids=torch.tensor([rendered[1].input_ids]))
    assert (leaky[0, n0:n0 + n1] - alone[0]).abs().max() > 1e-3


def test_packed_loss_equals_sum_of_per_example_losses(tiny_phi3, rendered) -> None:
    """The last labelled token of one example must not be asked to predict the next example's first token."""
    batch = packed_batch([rendered], pad_id=0)
    logits = _logits(tiny_phi3, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     position_ids=batch["position_ids"])
    nll, count = sft_nll_sum(logits, batch["labels"])
    ref_nll, ref_count = 0.0, 0
    for e in rendered:
        one = pad_batch([e], pad_id=0)
        n, c = sft_nll_sum(_logits(tiny_phi3, input_ids=one["input_ids"]), one["labels"])
        ref_nll, ref_count = ref_nll + float(n), ref_count + c
    assert count == ref_count == sum(sum(x != IGNORE_INDEX for x in e.labels[1:]) for e in rendered)
    assert float(nll) == pytest.approx(ref_nll, abs=1e-4)


# --------------------------------------------------------------------------------------------------------
# SFT loss


def test_sft_nll_sum_matches_hand_computed_cross_entropy() -> None:
    """Position t predicts labels[t+1]. V=3, T=4:
    t=0 logits [0,0,0] -> target 1: p=1/3, nll=ln 3
    t=1 logits ln[1,2,1] -> target 2: p=1/4, nll=ln 4
    t=2 target -100 (masked), t=3 has no next token.
    Sum = ln 3 + ln 4 = ln 12, over 2 tokens."""
    logits = torch.tensor([[[0.0, 0.0, 0.0], [0.0, math.log(2), 0.0], [5.0, -1.0, 2.0], [1.0, 2.0, 3.0]]])
    labels = torch.tensor([[0, 1, 2, IGNORE_INDEX]])
    nll, count = sft_nll_sum(logits, labels)
    assert count == 2
    assert float(nll) == pytest.approx(math.log(12), abs=1e-6)


def test_sft_nll_sum_does_not_modify_labels() -> None:
    labels = torch.tensor([[IGNORE_INDEX, 1, 2]])
    before = labels.clone()
    sft_nll_sum(torch.zeros(1, 3, 4), labels)
    assert torch.equal(labels, before)


def test_summed_micro_batch_losses_equal_one_big_batch() -> None:
    """Gradient accumulation: sum the NLLs, divide by the step's token count. Micro-batches with different
    numbers of labelled tokens (5 and 2) make a mean of per-micro-batch means differ."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 7, generator=g)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, 3, 4, 5],
                           [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 6, IGNORE_INDEX],
                           [IGNORE_INDEX, IGNORE_INDEX, 0, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]])
    nll_a, n_a = sft_nll_sum(logits[:1], labels[:1])
    nll_b, n_b = sft_nll_sum(logits[1:], labels[1:])
    nll_all, n_all = sft_nll_sum(logits, labels)
    assert (n_a, n_b, n_all) == (5, 2, 7)
    accumulated = (nll_a + nll_b) / (n_a + n_b)
    torch.testing.assert_close(accumulated, nll_all / n_all)
    mean_of_means = (nll_a / n_a + nll_b / n_b) / 2
    assert abs(float(mean_of_means - accumulated)) > 1e-3
