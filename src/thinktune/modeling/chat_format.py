"""The chat format a tokenizer speaks: its template, the system prompt baked into it, think and end tokens.

Two formats (``model.chat_template``):

- ``model``: the model's own template, kept as it is, with ``<think>``/``</think>`` added as single tokens
  when the vocabulary lacks them. An instruct model answers coherently in its own layout, so this is
  what ``auto`` (the default) picks whenever the tokenizer has a template.
- ``phi4``: the Phi-4-reasoning format (docs/recipe.md section 1.2), applied only where asked or where the
  tokenizer has no template::

    <|im_start|>system<|im_sep|>{system}<|im_end|><|im_start|>user<|im_sep|>{question}<|im_end|>
    <|im_start|>assistant<|im_sep|><think>{reasoning}</think>{solution with \\boxed{answer}}<|im_end|>

The system prompt is written into the template itself (a conversation without a system message gets it),
so every stage renders prompts the same way, and a checkpoint's saved template reproduces the training
prompt under plain ``apply_chat_template``, in any harness (lm-eval, vLLM, a server; docs/interop.md).
``model.system_prompt`` unset keeps the checkpoint's own: the prompt a thinktune run wrote into the template
(none, where that run set ""), else the format's own: the Phi-4-reasoning message for ``phi4``, whatever the
template adds by itself (often nothing) for ``model``. So ``evaluate`` and ``serve`` render by default
exactly what training rendered, and what a harness renders from the saved template.

``<think>``/``</think>`` are single tokens but not special ones (``special=False``, as Qwen3 and
DeepSeek-R1 ship them): ``decode(skip_special_tokens=True)``, which lm-eval and most servers call, keeps
them, so a harness can split the reasoning off at ``</think>``. A tokenizer that has them as special tokens
(a checkpoint saved by an older thinktune) gets them re-marked, which its next save writes out.

The end-of-turn token is read off the template (what follows the assistant's text), becomes the tokenizer's
EOS, and so is where sampling, ``generate`` (through the generation config) and the SFT labels stop.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from transformers import AddedToken, PreTrainedTokenizerBase

from thinktune.errors import ConfigError

IM_START, IM_SEP, IM_END = "<|im_start|>", "<|im_sep|>", "<|im_end|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
PHI4_TOKENS = [IM_START, IM_SEP, IM_END, THINK_OPEN, THINK_CLOSE]
PHI4_MARKUP = [IM_START, IM_SEP, IM_END]  # special tokens: a harness's decode may drop them
THINK_TOKENS = [THINK_OPEN, THINK_CLOSE]  # plain added tokens: every decode keeps them

# The Phi-4-reasoning chat template (S9 in docs/recipe.md) with no default system message: the system prompt is
# added by ``with_system_prompt`` so that it is the configured one.
PHI4_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '<|im_sep|>' + message['content'] + '<|im_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}"
)

# The fixed reasoning system message of Phi-4-reasoning (docs/recipe.md section 1.2, from its chat template).
PHI4_REASONING_SYSTEM_PROMPT = (
    "You are Phi, a language model trained by Microsoft to help users. Your role as an assistant involves "
    "thoroughly exploring questions through a systematic thinking process before providing the final precise "
    "and accurate solutions. This requires engaging in a comprehensive cycle of analysis, summarizing, "
    "exploration, reassessment, reflection, backtracing, and iteration to develop well-considered thinking "
    "process. Please structure your response into two main sections: Thought and Solution using the specified "
    "format: <think> {Thought section} </think> {Solution section}. In the Thought section, detail your "
    "reasoning process in steps. Each step should include detailed considerations such as analysing questions, "
    "summarizing relevant findings, brainstorming new ideas, verifying the accuracy of the current steps, "
    "refining any errors, and revisiting previous steps. In the Solution section, based on various attempts, "
    "explorations, and reflections from the Thought section, systematically present the final solution that "
    "you deem correct. The Solution section should be logical, accurate, and concise and detail necessary "
    "steps needed to reach the conclusion. Now, try to solve the following question through the above "
    "guidelines:"
)

# The system-prompt preamble thinktune puts before a template, between markers so that a later run that sets
# another prompt replaces it rather than stacking a second one.
_OPEN, _CLOSE = "{#- thinktune: system prompt -#}", "{#- thinktune: end system prompt -#}"
_PREAMBLE = re.compile(re.escape(_OPEN) + ".*?" + re.escape(_CLOSE), re.DOTALL)


@dataclass(frozen=True)
class ChatFormat:
    """What ``apply`` made of a tokenizer, for the one line each stage prints and for the checks that follow."""

    name: str  # "phi4" | "model"
    system_prompt: str  # the system prompt a conversation without one gets ("" for none)
    written: bool  # True: thinktune wrote it into the template; False: the template's own
    replaced: str  # the template's own prompt that a set model.system_prompt replaced ("" for none)
    end_of_turn: str  # the token that ends an assistant turn; the tokenizer's EOS
    added_tokens: tuple[str, ...]  # tokens the vocabulary lacked: the model has never produced them
    prompt_overhead: int  # tokens a one-turn prompt spends besides the question (system prompt, markup)

    def describe(self) -> str:
        whose = "" if self.written else "the template's own "
        system = f"{whose}system prompt {_shorten(self.system_prompt)!r}" if self.system_prompt else "no system prompt"
        if self.replaced and self.replaced != self.system_prompt:  # what a harness on the loaded template renders
            system += f" (in place of the template's own {_shorten(self.replaced)!r})"
        added = f"; added {', '.join(self.added_tokens)} (new to the model)" if self.added_tokens else ""
        return (f"chat format {self.name}: {system}; each prompt costs {self.prompt_overhead} tokens besides the "
                f"question; turns end with {self.end_of_turn}{added}")


def apply(tok: PreTrainedTokenizerBase, choice: str, system_prompt: str | None, where: str) -> ChatFormat:
    """Give ``tok`` the chosen format in place: template, system prompt, think tokens, EOS.

    Args:
        tok: the tokenizer, changed in place.
        choice: "auto" | "phi4" | "model" (``model.chat_template``).
        system_prompt: None keeps the checkpoint's own (see the module docstring); "" adds none; text is
            written into the template.
        where: the model path, for error messages.

    Raises:
        ConfigError: ``model`` is asked of a tokenizer with no template, or the template's end-of-turn token
            cannot be found.
    """
    name = choice if choice != "auto" else ("model" if tok.chat_template else "phi4")
    if name == "model" and not tok.chat_template:
        raise ConfigError(f"{where} has no chat template; use model.chat_template=phi4 (or auto)")
    added = add_format_tokens(tok, PHI4_MARKUP if name == "phi4" else [])
    own = _PREAMBLE.search(tok.chat_template or "")  # what an earlier thinktune run wrote, if any
    # The prompt a harness rendering this template gets (for ``model``, whose template stays otherwise as is).
    replaced = template_system_prompt(tok) if system_prompt is not None and name == "model" else ""
    if name == "phi4":
        tok.chat_template = (own.group(0) if own and system_prompt is None else "") + PHI4_CHAT_TEMPLATE
        if system_prompt is None and not own:
            system_prompt = PHI4_REASONING_SYSTEM_PROMPT
    if system_prompt is not None:  # None keeps the template as saved, with the prompt a checkpoint carries
        tok.chat_template = with_system_prompt(tok.chat_template, system_prompt)
    end = IM_END if name == "phi4" else end_of_turn(tok, where)
    tok.eos_token = end
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    system = system_prompt or template_system_prompt(tok)
    return ChatFormat(name, system, bool(system_prompt), replaced, end, added, prompt_overhead(tok))


def add_format_tokens(tok: PreTrainedTokenizerBase, markup: list[str]) -> tuple[str, ...]:
    """Add the ``markup`` tokens (as special tokens) and ``<think>``/``</think>`` (as plain ones) that ``tok``
    lacks, and re-mark think tokens it has as special tokens as plain ones, keeping their ids.

    Returns:
        The tokens the vocabulary lacked, markup first: the model has never produced them.
    """
    vocab = tok.get_vocab()
    missing_markup = [t for t in markup if t not in vocab]
    missing_think = [t for t in THINK_TOKENS if t not in vocab]
    if missing_markup:
        tok.add_tokens(missing_markup, special_tokens=True)  # the same call in transformers 4.x and 5.x
    special_think = [t.content for t in tok.added_tokens_decoder.values() if t.content in THINK_TOKENS and t.special]
    if missing_think or special_think:
        # normalized=False: matched in the raw text, before a normalizer (Metaspace's "▁") could change it.
        # Re-adding a present token keeps its id and writes special=False into the next save; the loaded
        # backend may still drop it in decode(skip_special_tokens=True), which thinktune never calls.
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS
                        if t in missing_think or t in special_think])
    return (*missing_markup, *missing_think)


def with_system_prompt(template: str, system_prompt: str) -> str:
    """``template`` that adds ``system_prompt`` to a conversation that has no system message ("" adds none).

    A preamble from an earlier call is replaced, never stacked. "" writes an empty one: it records that the
    run chose no prompt, so a later ``model.system_prompt`` left unset keeps none (see ``apply``).
    """
    template = _PREAMBLE.sub("", template)
    if not system_prompt:
        return _OPEN + _CLOSE + template
    # json.dumps gives a double-quoted literal with backslash escapes, which Jinja reads the same way.
    literal = json.dumps(system_prompt)
    preamble = (f"{_OPEN}{{%- if not messages or messages[0]['role'] != 'system' %}}"
                f"{{%- set messages = [{{'role': 'system', 'content': {literal}}}] + messages %}}"
                f"{{%- endif %}}{_CLOSE}")
    return preamble + template


def template_system_prompt(tok: PreTrainedTokenizerBase) -> str:
    """The system prompt the template adds by itself to a conversation without one ("" when it adds none).

    A marker as the system message splits the rendering into the markup before and after it; a template that
    adds a default renders the bare conversation as that same markup around its default.
    """
    marker, question = "\u2063SYS\u2063", [{"role": "user", "content": "Q"}]
    given = tok.apply_chat_template([{"role": "system", "content": marker}, *question], tokenize=False)
    bare = tok.apply_chat_template(question, tokenize=False)
    if marker not in given:  # the template drops system messages
        return ""
    before, _, after = given.partition(marker)
    if len(bare) > len(before) + len(after) and bare.startswith(before) and bare.endswith(after):
        return bare[len(before):len(bare) - len(after)]
    return ""


def end_of_turn(tok: PreTrainedTokenizerBase, where: str) -> str:
    """The special token the template writes right after an assistant's text (ChatML: ``<|im_end|>``)."""
    probe = "Seven."
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": probe}]
    text = tok.apply_chat_template(messages, tokenize=False)
    after = text[text.rfind(probe) + len(probe):]
    specials = sorted((t for t in tok.all_special_tokens + list(tok.get_added_vocab()) if t and t in after),
                      key=after.find)
    if specials:
        return specials[0]
    if tok.eos_token and tok.eos_token in after:
        return tok.eos_token
    raise ConfigError(f"{where}: the chat template writes no special token after an assistant turn "
                      f"({after!r}), so thinktune cannot tell where a reply ends; use model.chat_template=phi4")


def prompt_overhead(tok: PreTrainedTokenizerBase) -> int:
    """Tokens a one-question prompt spends besides the question: the system prompt and the chat markup."""
    question = "What is 2 + 2?"
    text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                   add_generation_prompt=True)
    return len(tok(text, add_special_tokens=False).input_ids) - len(tok(question, add_special_tokens=False).input_ids)


def too_long_note(lengths: list[int], max_len: int, overhead: int, knob: str) -> str:
    """Why rows of ``lengths`` tokens were dropped at ``max_len``, and how many the prompt overhead cost."""
    saved = sum(1 for n in lengths if n - overhead <= max_len)
    because = (f"; {saved} of them would fit but for the {overhead} tokens each row spends on the system "
               "prompt and chat markup (model.system_prompt= shortens it)") if saved else ""
    return f"{len(lengths)} longer than {knob}={max_len} dropped{because}"


def _shorten(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
