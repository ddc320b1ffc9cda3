"""Tests for thinktune.modeling.chat_format: which format a tokenizer gets, the system prompt written into its template,
the end-of-turn token read off the template, and what a ChatML model's SFT labels cover.

The ChatML template below has the layout of SmolLM2's (a newline after the role and after ``<|im_end|>``, a
built-in default system message); expected strings are written out by hand from that layout.
"""

from __future__ import annotations

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from thinktune.data.chat import IGNORE_INDEX, render_prompt, render_sft
from thinktune.errors import ConfigError
from thinktune.modeling.chat_format import (
    PHI4_CHAT_TEMPLATE,
    PHI4_REASONING_SYSTEM_PROMPT,
    apply,
    end_of_turn,
    template_system_prompt,
    too_long_note,
    with_system_prompt,
)

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nDefault.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
Q = [{"role": "user", "content": "Q"}]
QA = [*Q, {"role": "assistant", "content": "A"}]


def chatml_tokenizer() -> PreTrainedTokenizerFast:
    """A character tokenizer whose only markers are ChatML's: no <|im_sep|>, no <think>."""
    chars = sorted(set("systemuserassistantDefault.Thinkfirst.QAok \n\"'{}\\%éünïrawqthensaybackslashquote"))
    vocab = {"<unk>": 0, "<|im_start|>": 1, "<|im_end|>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>")
    fast.chat_template = CHATML
    return fast


def test_auto_keeps_a_models_own_template_and_its_default_system_prompt() -> None:
    tok = chatml_tokenizer()
    fmt = apply(tok, "auto", None, "m")
    assert fmt.name == "model" and fmt.system_prompt == "Default." and not fmt.written
    text = tok.apply_chat_template(Q, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nDefault.<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    assert fmt.end_of_turn == "<|im_end|>" == tok.eos_token


def test_a_set_system_prompt_replaces_the_templates_default_and_a_given_one_wins() -> None:
    tok = chatml_tokenizer()
    apply(tok, "model", "Think first.", "m")
    text = tok.apply_chat_template(Q, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nThink first.<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    own = [{"role": "system", "content": "ok"}, *Q]
    assert tok.apply_chat_template(own, tokenize=False).startswith("<|im_start|>system\nok<|im_end|>\n<|im_start|>user")


def test_setting_the_system_prompt_again_replaces_it_rather_than_stacking() -> None:
    once = with_system_prompt(CHATML, "A")
    twice = with_system_prompt(once, "B")
    assert twice == with_system_prompt(CHATML, "B")
    # "" leaves an empty preamble, which renders as the template alone (and records that none was chosen).
    none = with_system_prompt(twice, "")
    assert none == with_system_prompt(CHATML, "") and none.endswith(CHATML)
    tok = chatml_tokenizer()
    tok.chat_template = none
    assert tok.apply_chat_template(Q, tokenize=False).startswith("<|im_start|>system\nDefault.<|im_end|>")


@pytest.mark.parametrize("prompt", ['say "ok"\nthen {{ q }}', "back\\slash 'quote' {% raw %}", "é ünï"])
def test_system_prompt_text_reaches_the_render_verbatim(prompt: str) -> None:
    tok = chatml_tokenizer()
    tok.chat_template = with_system_prompt(CHATML, prompt)
    text = tok.apply_chat_template(Q, tokenize=False)
    assert text == f"<|im_start|>system\n{prompt}<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"


def test_phi4_is_applied_where_asked_with_its_reasoning_system_prompt() -> None:
    tok = chatml_tokenizer()
    fmt = apply(tok, "phi4", None, "m")
    assert fmt.name == "phi4" and fmt.system_prompt == PHI4_REASONING_SYSTEM_PROMPT and fmt.written
    assert tok.chat_template.endswith(PHI4_CHAT_TEMPLATE)
    assert tok.apply_chat_template(Q, tokenize=False) == (
        f"<|im_start|>system<|im_sep|>{PHI4_REASONING_SYSTEM_PROMPT}<|im_end|><|im_start|>user<|im_sep|>Q<|im_end|>")
    assert "<|im_sep|>" in fmt.added_tokens and tok.eos_token == "<|im_end|>"


def test_auto_gives_phi4_to_a_tokenizer_without_a_template_and_model_refuses_it() -> None:
    tok = chatml_tokenizer()
    tok.chat_template = None
    assert apply(tok, "auto", "", "m").name == "phi4"
    tok.chat_template = None
    with pytest.raises(ConfigError, match="m has no chat template"):
        apply(tok, "model", None, "m")


def test_think_tokens_are_added_as_single_tokens_to_a_models_own_template() -> None:
    tok = chatml_tokenizer()
    n = len(tok)
    fmt = apply(tok, "model", None, "m")
    assert fmt.added_tokens == ("<think>", "</think>") and len(tok) == n + 2
    ids = tok("Q<think>A</think>", add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(ids) == ["Q", "<think>", "A", "</think>"]
    assert apply(tok, "model", None, "m").added_tokens == ()  # a second call finds them there


def test_end_of_turn_is_the_first_special_token_after_the_assistants_text() -> None:
    tok = chatml_tokenizer()
    tok.eos_token = "<unk>"  # a tokenizer whose EOS is not the end of a turn (as Llama 3's <|end_of_text|>)
    assert end_of_turn(tok, "m") == "<|im_end|>"
    tok.chat_template = "{% for m in messages %}{{ m['content'] + '\\n' }}{% endfor %}"
    with pytest.raises(ConfigError, match="no special token after an assistant turn"):
        end_of_turn(tok, "m")


def test_chatml_sft_labels_end_at_the_end_of_turn_not_the_newline_after_it() -> None:
    tok = chatml_tokenizer()
    apply(tok, "model", "", "m")
    e = render_sft(tok, QA)
    n = next(i for i, x in enumerate(e.labels) if x != IGNORE_INDEX)
    assert tok.decode(e.labels[n:]) == "A<|im_end|>"
    assert e.input_ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert e.input_ids[:n] == render_prompt(tok, Q)


def test_prompt_overhead_counts_system_prompt_and_markup() -> None:
    tok = chatml_tokenizer()
    without = apply(tok, "model", "", "m").prompt_overhead
    # The default system message "Default." and its markup: <|im_start|> "system" \n D e f a u l t . <|im_end|> \n
    with_longer = apply(tok, "model", "ok ok", "m").prompt_overhead
    assert with_longer - without == len("ok ok") - len("Default.")


def test_too_long_note_counts_the_rows_the_prompt_overhead_cost() -> None:
    note = too_long_note([520, 600, 700], max_len=512, overhead=100, knob="data.max_seq_len")
    assert note.startswith("3 longer than data.max_seq_len=512 dropped; 2 of them would fit but for the 100 tokens")
    assert "would fit" not in too_long_note([700], 512, 100, "data.max_seq_len")


def test_the_templates_own_default_system_prompt_is_found_and_reported() -> None:
    tok = chatml_tokenizer()
    fmt = apply(tok, "auto", None, "m")
    assert fmt.system_prompt == "Default." and not fmt.written
    assert "the template's own system prompt 'Default.'" in fmt.describe()
    assert template_system_prompt(tok) == "Default."
    fmt = apply(tok, "model", "ok", "m")
    assert fmt.system_prompt == "ok" and fmt.written and "system prompt 'ok'" in fmt.describe()
    tok.chat_template = PHI4_CHAT_TEMPLATE  # adds none
    assert template_system_prompt(tok) == ""


def test_an_unset_system_prompt_keeps_the_one_a_checkpoint_carries_and_empty_removes_it() -> None:
    tok = chatml_tokenizer()
    apply(tok, "model", "Trained with this.", "m")
    saved = tok.chat_template  # what a checkpoint's tokenizer holds after training
    tok.chat_template = saved
    fmt = apply(tok, "auto", None, "m")
    assert fmt.system_prompt == "Trained with this." and tok.chat_template == saved
    assert apply(tok, "model", "", "m").system_prompt == "Default."  # "" drops thinktune's: the template's own


# --------------------------------------------------------------------------------------------------------
# What a harness sees: think tokens that survive skip_special_tokens, the checkpoint's own system prompt


def test_think_tokens_are_plain_tokens_that_skip_special_tokens_decoding_keeps() -> None:
    """lm-eval and most servers decode with skip_special_tokens=True: the think tags must survive it (as Qwen3's
    and DeepSeek-R1's do) while the turn's markup still goes."""
    tok = chatml_tokenizer()
    apply(tok, "model", "", "m")
    ids = tok("<think>ok</think>A<|im_end|>", add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(ids) == ["<think>", "o", "k", "</think>", "A", "<|im_end|>"]
    assert tok.decode(ids, skip_special_tokens=True) == "<think>ok</think>A"
    assert tok.decode(ids) == "<think>ok</think>A<|im_end|>"  # thinktune's own decoding: everything
    assert {"<think>", "</think>"}.isdisjoint(tok.all_special_tokens)


def test_think_tokens_an_older_checkpoint_saved_as_special_are_saved_plain_with_their_ids(tmp_path) -> None:
    from transformers import AutoTokenizer

    tok = chatml_tokenizer()
    tok.add_tokens(["<think>", "</think>"], special_tokens=True)  # what thinktune wrote before
    ids = tok("<think>ok</think>", add_special_tokens=False).input_ids
    assert apply(tok, "model", "", "m").added_tokens == ()
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded("<think>ok</think>", add_special_tokens=False).input_ids == ids
    assert reloaded.decode(ids, skip_special_tokens=True) == "<think>ok</think>"


def test_an_unset_system_prompt_under_phi4_keeps_the_one_a_phi4_checkpoint_carries() -> None:
    """``model.chat_template=phi4`` at evaluate or serve must not swap a checkpoint's prompt for Phi-4's."""
    trained = {}
    for prompt in ("Be brief.", ""):
        tok = chatml_tokenizer()
        apply(tok, "phi4", prompt, "m")
        trained[prompt] = tok.chat_template  # what the checkpoint saves
    for prompt, template in trained.items():
        tok = chatml_tokenizer()
        tok.chat_template = template
        fmt = apply(tok, "phi4", None, "m")
        assert tok.chat_template == template and fmt.system_prompt == prompt and not fmt.written
        system = f"<|im_start|>system<|im_sep|>{prompt}<|im_end|>" if prompt else ""
        assert tok.apply_chat_template(Q, tokenize=False) == f"{system}<|im_start|>user<|im_sep|>Q<|im_end|>"
    tok = chatml_tokenizer()
    tok.chat_template = PHI4_CHAT_TEMPLATE  # no thinktune preamble: a fresh tokenizer gets Phi-4's message
    assert apply(tok, "phi4", None, "m").system_prompt == PHI4_REASONING_SYSTEM_PROMPT


def test_describe_names_the_templates_own_prompt_that_a_set_one_replaces() -> None:
    tok = chatml_tokenizer()
    fmt = apply(tok, "model", "Be brief.", "m")
    assert fmt.replaced == "Default." and "in place of the template's own 'Default.'" in fmt.describe()
    again = apply(tok, "model", "Be brief.", "m")  # the template now carries it: nothing is replaced
    assert again.replaced == "Be brief." and "in place of" not in again.describe()
