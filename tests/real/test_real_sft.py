"""SFT on SmolLM2, full weights and LoRA: it learns the think format, and its checkpoints are plain transformers.

A checkpoint must reproduce training in a tool that knows nothing of thinktune: the saved chat template
renders the training prompt (the system prompt included, which is why the run sets its own), and the saved
generation config ends a reply where thinktune's sampler ends it.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors import safe_open
from smollm2_data import CUSTOM_SYSTEM, metrics
from transformers import AutoModelForCausalLM, AutoTokenizer

from thinktune.config import ModelConfig, load_config
from thinktune.data.chat import render_prompt
from thinktune.modeling import models
from thinktune.modeling.chat_format import IM_END, THINK_OPEN
from thinktune.recipes import sft
from thinktune.rollout.sampler import RolloutEngine, SamplingParams
from thinktune.tasks import teacher, world

pytestmark = pytest.mark.real

QUESTION = [{"role": "user", "content": "427+385"}]  # a level-1 problem, not one of the training rows'


def test_sft_loss_falls_clearly(sft_run):
    rows = metrics(sft_run)
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == len(rows) and all(math.isfinite(x) for x in losses)
    # Step 1 is the untrained model's loss on the trace format: about 4 nats a token, since <think> and
    # </think> are new and the column-by-column layout is unfamiliar. Learning the format halves it; a sign or
    # mask error would leave it flat or send it up.
    tail = sum(losses[-4:]) / 4
    assert tail < losses[0] / 2, losses


def test_sft_checkpoint_renders_the_training_prompt_in_plain_transformers(sft_run, smollm2_dir):
    final = sft_run / "final"
    plain = AutoTokenizer.from_pretrained(final)
    text = plain.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    trained = models.load_tokenizer(ModelConfig(path=str(smollm2_dir), system_prompt=CUSTOM_SYSTEM))
    assert text == trained.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert text.startswith(f"<|im_start|>system\n{CUSTOM_SYSTEM}<|im_end|>")  # not SmolLM2's default
    # The think tags are single tokens in the saved tokenizer too, and its EOS is the end of turn.
    assert len(plain(THINK_OPEN, add_special_tokens=False).input_ids) == 1
    assert plain.eos_token == IM_END


def greedy_generate(model, tok, messages: list[dict], max_new_tokens: int) -> tuple[list[int], list[int]]:
    """(prompt ids, greedy reply ids) from plain transformers: the saved template, ``generate``'s own stops."""
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids  # [1, T]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens)  # [1, T + n]
    return ids[0].tolist(), out[0, ids.shape[1]:].tolist()


def test_plain_generate_stops_where_thinktunes_sampler_stops(sft_run, data):
    assert QUESTION[0]["content"] not in (data / "sft.jsonl").read_text()  # an unseen question
    final = sft_run / "final"
    plain_tok = AutoTokenizer.from_pretrained(final)
    plain_model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32).eval()
    im_end = plain_tok.convert_tokens_to_ids(IM_END)
    listed = plain_model.generation_config.eos_token_id
    assert (listed if isinstance(listed, int) else listed[0]) == im_end

    # thinktune's own loading of the checkpoint, with model.system_prompt unset: it renders the prompt the
    # checkpoint carries, as plain transformers does (it used to drop it for the template's default).
    tok = models.load_tokenizer(ModelConfig(path=str(final)))
    model = models.load_model(ModelConfig(path=str(final)), tok, torch.device("cpu"), torch.float32)
    engine = RolloutEngine(model, tok)
    # An arithmetic question (the trained task) and a chat question, whose reply is short enough to end.
    chats = [QUESTION, [{"role": "user", "content": "What is the capital of France? Answer in one word."}]]
    budget, replies = 40, []
    for messages in chats:
        prompt, ref = greedy_generate(plain_model, plain_tok, messages, budget)
        assert prompt == render_prompt(tok, messages)
        (ours,) = engine.sample([prompt], SamplingParams(greedy=True, max_new_tokens=budget), show_progress=False)[0]
        assert ours.token_ids == ref, (ours.text, plain_tok.decode(ref))
        assert ours.finished == (ref[-1] == im_end) == (ours.finish_reason == "eos")
        replies.append(ours)
    assert any(c.finished for c in replies)  # a reply stopped inside the budget: both stopping points compared
    # The arithmetic reply follows the trained traces: it opens with the units column, as the teacher does.
    first_step = teacher.solve(world.make_problem(1, (427, 385), "q")).reasoning.split()[0]  # "7+5=12"
    assert replies[0].text.removeprefix(THINK_OPEN).lstrip().startswith(first_step), replies[0].text


def test_lora_sft_trains_adapters_and_exports_a_plain_merged_model(smollm2_dir, data, tmp_path):
    out = tmp_path / "lora"
    args = {"model.path": smollm2_dir, "model.system_prompt": "", "model.lora.r": 8, "model.lora.alpha": 16,
            "data.train": data / "sft.jsonl", "data.max_seq_len": 128, "optim.lr": 2e-3, "optim.warmup_steps": 1,
            "batch_size": 4, "micro_batch_size": 2, "max_steps": 4, "log.log_every": 1, "log.save_every": 0,
            "log.progress": "false", "output_dir": out}
    sft.run(load_config(sft.SFTConfig, None, [f"{k}={v}" for k, v in args.items()]))
    losses = [r["train/loss"] for r in metrics(out)]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0], losses

    final = out / "final"
    merged = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32)  # plain transformers
    with safe_open(str(final / "adapter" / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
        prefix = next(k for k in keys if "layers.0.self_attn.q_proj.lora_A" in k).removesuffix("lora_A.weight")
        a, b = f.get_tensor(prefix + "lora_A.weight"), f.get_tensor(prefix + "lora_B.weight")  # [r, in], [out, r]
    assert a.shape[0] == 8 and b.abs().max() > 0  # B starts at zero: non-zero means the adapter trained
    with safe_open(str(smollm2_dir / "model.safetensors"), "pt") as f:
        base_q = f.get_tensor("model.layers.0.self_attn.q_proj.weight")  # [out, in]
    # The export is the base plus (alpha / r) * B @ A, to the rounding of one fp32 matmul.
    torch.testing.assert_close(merged.model.layers[0].self_attn.q_proj.weight, base_q + (16 / 8) * b @ a,
                               rtol=0, atol=1e-6)
    assert merged.lm_head.weight is merged.model.embed_tokens.weight  # still tied after the merge
