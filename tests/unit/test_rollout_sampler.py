"""Tests for thinktune.rollout.sampler end to end on a tiny random Phi3 (and a GPT-2 for the HF fallback).

What is pinned down: log-probs equal a teacher-forced forward pass (with sampling filters, prompts of
different lengths and rows finishing at different steps); greedy equals argmax and ``model.generate``;
first-token frequencies match the model's softmax; stops on EOS, stop strings and max_new_tokens;
finished rows cost no further decode work; seeds reproduce; both decoders give the same outputs.
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from thinktune.errors import ConfigError
from thinktune.modeling.models import IM_END, build_tiny_model
from thinktune.rollout.sampler import RolloutEngine, SamplingParams, sample

SMALL = dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
             max_position_embeddings=256)


@pytest.fixture(scope="module")
def model(char_tokenizer):
    return build_tiny_model("phi3", char_tokenizer, **SMALL).eval()


@pytest.fixture(scope="module")
def prompts(char_tokenizer):
    texts = ["What is 2+3?", "7*8", "Be brief. Q"]
    return [char_tokenizer(t)["input_ids"] for t in texts]


def teacher_forced(model, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """log p(tokens[i] | prompt, tokens[:i]) from one plain forward pass: [len(tokens)]."""
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids).logits[0, len(prompt) - 1:-1].float(), dim=-1)
    return logps.gather(1, torch.tensor(tokens)[:, None]).squeeze(1)


def assert_teacher_forced(model, prompts, out) -> None:
    """Every completion's log-probs equal a teacher-forced forward pass of ``model``."""
    for prompt, group in zip(prompts, out, strict=True):
        for c in group:
            torch.testing.assert_close(torch.tensor(c.logprobs), teacher_forced(model, prompt, c.token_ids),
                                       atol=1e-4, rtol=1e-4)


def run(model, tok, prompts, seed=0, decoder="auto", batch_size=64, **kw):
    return sample(model, tok, prompts, SamplingParams(**kw), seed=seed, batch_size=batch_size,
                  show_progress=False, decoder=decoder)


@pytest.mark.parametrize("decoder", ["lean", "hf"])
def test_logprobs_equal_teacher_forcing(model, char_tokenizer, prompts, decoder):
    out = run(model, char_tokenizer, prompts, decoder=decoder, n=3, temperature=3.0, top_k=40, top_p=0.95,
              max_new_tokens=24)
    lengths = {len(c.token_ids) for group in out for c in group}
    assert len(lengths) > 1 and any(c.finished for g in out for c in g)  # rows ended at different steps
    for prompt, group in zip(prompts, out, strict=True):
        for c in group:
            torch.testing.assert_close(torch.tensor(c.logprobs), teacher_forced(model, prompt, c.token_ids),
                                       atol=1e-4, rtol=1e-4)
            assert all(s <= 1e-6 for s in c.sampling_logprobs) and len(c.sampling_logprobs) == len(c.token_ids)


def test_greedy_is_argmax_and_matches_generate(model, char_tokenizer, prompts):
    out = run(model, char_tokenizer, prompts, greedy=True, max_new_tokens=12)
    eos = char_tokenizer.convert_tokens_to_ids(IM_END)
    for prompt, (c,) in zip(prompts, out, strict=True):
        ids = torch.tensor([prompt + c.token_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1]
        assert logits.argmax(-1).tolist() == c.token_ids
        with torch.no_grad():
            ref = model.generate(input_ids=torch.tensor([prompt]), do_sample=False, max_new_tokens=12,
                                 eos_token_id=eos, pad_token_id=char_tokenizer.pad_token_id)
        assert ref[0, len(prompt):].tolist()[:len(c.token_ids)] == c.token_ids


def test_first_token_frequencies_match_the_model(model, char_tokenizer, prompts):
    prompt = prompts[0]
    draws = 2000
    out = run(model, char_tokenizer, [prompt], n=draws, max_new_tokens=1, batch_size=draws)
    counts = torch.bincount(torch.tensor([g.token_ids[0] for g in out[0]]), minlength=model.config.vocab_size)
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=torch.tensor([prompt])).logits[0, -1].double(), -1)
    expected = probs * draws
    common = expected >= 5  # pool the rare tokens into one cell, as the chi-square test requires
    observed, expected = counts[common].double(), expected[common]
    if not common.all():
        observed = torch.cat([observed, counts[~common].double().sum()[None]])
        expected = torch.cat([expected, (probs * draws)[~common].sum()[None]])
    stat = ((observed - expected) ** 2 / expected).sum().item()
    df = observed.numel() - 1
    c = 2 / (9 * df)
    assert stat < df * (1 - c + 3.090232 * math.sqrt(c)) ** 3  # chi-square, p = 1e-3 (Wilson-Hilferty)


def test_stops_and_finished_rows_cost_nothing(model, char_tokenizer, prompts):
    eos = char_tokenizer.convert_tokens_to_ids(IM_END)
    engine = RolloutEngine(model, char_tokenizer)
    out = engine.sample(prompts, SamplingParams(n=8, temperature=4.0, max_new_tokens=20), show_progress=False)
    completions = [c for g in out for c in g]
    for c in completions:
        assert (c.token_ids[-1] == eos) == c.finished == (c.finish_reason == "eos")
        assert eos not in c.token_ids[:-1] and len(c.token_ids) <= 20
        assert c.finished or len(c.token_ids) == 20
        assert IM_END not in c.text
    assert any(c.finished for c in completions) and not all(c.finished for c in completions)
    # Each decode step advances only live rows; the first token of every row comes from the prefill.
    assert engine.stats["decoded_rows"] == sum(len(c.token_ids) - 1 for c in completions)



@pytest.mark.parametrize("decoder", ["lean", "hf"])
def test_on_complete_reports_each_completion_when_it_ends(model, char_tokenizer, prompts, decoder):
    engine = RolloutEngine(model, char_tokenizer, decoder=decoder)
    reported = []  # (p, j, completion, decode steps taken so far)

    def on_complete(p, j, c):
        reported.append((p, j, c, engine.stats["steps"]))

    # 24 rows in batches of 10: the last batch has 4; rows end at different steps.
    out = engine.sample(prompts, SamplingParams(n=8, temperature=4.0, max_new_tokens=20), show_progress=False,
                        batch_size=10, on_complete=on_complete)
    assert sorted((p, j) for p, j, _, _ in reported) == [(p, j) for p in range(3) for j in range(8)]
    assert all(c is out[p][j] for p, j, c, _ in reported)

    # Requests run sample j of every prompt before sample j + 1, 10 to a batch; a batch's decode steps start
    # where the previous batch's last report left engine.stats["steps"].
    def batch(p, j):
        return (j * len(prompts) + p) // 10

    start = [0]
    for b in (1, 2):
        start.append(max(steps for p, j, _, steps in reported if batch(p, j) == b - 1))
    # A completion of k tokens ends at decode step k - 1 of its batch (its first token comes from the prefill)
    # and is reported then, before its batch decodes any further.
    for p, j, c, steps in reported:
        assert steps - start[batch(p, j)] == len(c.token_ids) - 1, (p, j, c.token_ids, steps, start)
    assert any(c.finished for _, _, c, _ in reported) and not all(c.finished for _, _, c, _ in reported)


@pytest.mark.parametrize("decoder", ["lean", "hf"])
def test_samples_of_a_prompt_share_one_prefill(model, char_tokenizer, prompts, decoder):
    engine = RolloutEngine(model, char_tokenizer, decoder=decoder)
    params = SamplingParams(n=4, temperature=2.0, max_new_tokens=8)
    # 12 rows in batches of 6, sample j of every prompt before sample j+1: each batch has 3 distinct prompts
    engine.sample(prompts, params, show_progress=False, batch_size=6)  # builds the decoder
    prefilled = []
    inner = engine._decoder.prefill
    engine._decoder.prefill = lambda ids, pad: prefilled.append(ids.shape[0]) or inner(ids, pad)
    out = engine.sample(prompts, params, show_progress=False, batch_size=6)
    assert prefilled == [3, 3] and all(len(g) == 4 for g in out)


def test_min_new_tokens_holds_back_eos(model, char_tokenizer, prompts):
    out = run(model, char_tokenizer, prompts, n=8, temperature=4.0, max_new_tokens=12, min_new_tokens=12)
    assert all(len(c.token_ids) == 12 and not c.finished for g in out for c in g)


def test_stop_strings_end_the_text_after_the_string(model, char_tokenizer, prompts):
    params = dict(temperature=2.0, max_new_tokens=40)
    free = run(model, char_tokenizer, prompts[:1], seed=3, **params)[0][0]
    stop = free.text[len(free.text) // 2]  # a character that occurs mid-way
    stopped = run(model, char_tokenizer, prompts[:1], seed=3, stop=(stop,), **params)[0][0]
    assert stopped.finished and stopped.finish_reason == "stop"
    assert stopped.text == free.text[:free.text.index(stop) + 1]
    assert stopped.token_ids == free.token_ids[:len(stopped.token_ids)]  # one row: same draws up to the stop


def test_seeds_reproduce_and_decoders_agree(model, char_tokenizer, prompts):
    kw = dict(n=2, temperature=1.5, top_p=0.9, max_new_tokens=16)
    a = run(model, char_tokenizer, prompts, seed=5, **kw)
    b = run(model, char_tokenizer, prompts, seed=5, **kw)
    c = run(model, char_tokenizer, prompts, seed=6, **kw)
    hf = run(model, char_tokenizer, prompts, seed=5, decoder="hf", **kw)
    ids = [[x.token_ids for x in g] for g in a]
    assert ids == [[x.token_ids for x in g] for g in b] == [[x.token_ids for x in g] for g in hf]
    assert ids != [[x.token_ids for x in g] for g in c]


def test_an_engine_follows_in_place_weight_updates(char_tokenizer, prompts):
    model = build_tiny_model("qwen2", char_tokenizer, **SMALL).eval()  # q/k/v are copied on CPU: must refresh
    engine = RolloutEngine(model, char_tokenizer)
    params = SamplingParams(greedy=True, max_new_tokens=12)
    before = engine.sample(prompts, params, show_progress=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # in place, like an optimizer step
    after = engine.sample(prompts, params, show_progress=False)
    fresh = sample(model, char_tokenizer, prompts, params, show_progress=False)
    ids = [[[c.token_ids for c in g] for g in out] for out in (before, after, fresh)]
    assert ids[1] == ids[2] != ids[0]


def test_a_lora_policy_samples_on_the_lean_decoder(char_tokenizer, prompts):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(build_tiny_model("qwen2", char_tokenizer, **SMALL),
                                LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)  # fresh B is zero: give the adapters an effect
    peft_model.eval()
    engine = RolloutEngine(peft_model.get_base_model(), char_tokenizer)  # what GRPO samples from
    out = engine.sample(prompts, SamplingParams(n=2, temperature=2.0, max_new_tokens=10), show_progress=False)
    assert engine.stats["decoder"] == "LeanDecoder"
    assert_teacher_forced(peft_model, prompts, out)


def test_other_architectures_fall_back_to_hf(char_tokenizer, prompts):
    config = AutoConfig.for_model("gpt2", vocab_size=len(char_tokenizer), n_embd=32, n_layer=2, n_head=2,
                                  n_positions=128, eos_token_id=char_tokenizer.convert_tokens_to_ids(IM_END))
    torch.manual_seed(0)
    gpt2 = AutoModelForCausalLM.from_config(config).eval()
    engine = RolloutEngine(gpt2, char_tokenizer)
    out = engine.sample(prompts, SamplingParams(n=2, temperature=2.0, max_new_tokens=10), show_progress=False)
    assert engine.stats["decoder"] == "HFDecoder"
    assert_teacher_forced(gpt2, prompts, out)
    with pytest.raises(ConfigError, match="decoder=lean cannot run"):
        run(gpt2, char_tokenizer, prompts, decoder="lean")


def test_bad_settings_are_errors(model, char_tokenizer):
    with pytest.raises(ConfigError, match="min_new_tokens"):
        SamplingParams(max_new_tokens=4, min_new_tokens=5)
    with pytest.raises(ConfigError, match="stop strings"):
        SamplingParams(stop=("",))
    with pytest.raises(ConfigError, match="decoder"):
        RolloutEngine(model, char_tokenizer, decoder="fast")
    with pytest.raises(ConfigError, match="cuda_graphs"):
        RolloutEngine(model, char_tokenizer, cuda_graphs=True)


def test_cache_bytes_is_what_the_decoder_allocates(model):
    from thinktune.rollout.lean import LeanDecoder, cache_bytes

    decoder = LeanDecoder(model, 5, 37, fuse=True)
    assert cache_bytes(model, 5, 37) == decoder.kv.numel() * decoder.kv.element_size()
    # by hand: 5 rows x 2 layers x (k, v) x 2 kv heads x 37 tokens x 8 dims (32 / 4 heads) x 4 bytes
    assert cache_bytes(model, 5, 37) == 5 * 2 * 2 * 2 * 37 * 8 * 4


def test_a_cache_larger_than_free_memory_is_refused_with_the_way_out(model, char_tokenizer, prompts, monkeypatch):
    from thinktune import runtime
    from thinktune.rollout.lean import cache_bytes

    params = SamplingParams(n=2, max_new_tokens=8)
    rows, max_len = 3 * 2, max(len(p) for p in prompts) + 8
    need = cache_bytes(model, rows, max_len)
    monkeypatch.setattr(runtime, "free_memory", lambda device: need - 1)
    with pytest.raises(ConfigError, match=r"rollout KV cache for 6 rows .* sample fewer rows at once"):
        RolloutEngine(model, char_tokenizer).sample(prompts, params, show_progress=False)
    monkeypatch.setattr(runtime, "free_memory", lambda device: need)
    assert len(RolloutEngine(model, char_tokenizer).sample(prompts, params, show_progress=False)) == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/meminfo")
def test_free_memory_reads_the_host_on_linux():
    from thinktune import runtime

    free = runtime.free_memory(torch.device("cpu"))
    assert isinstance(free, int) and 0 < free <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("decoder", ["lean", "hf"])
def test_every_eos_of_the_generation_config_ends_a_completion(char_tokenizer, prompts, decoder):
    """A chat model's generation config may list several end ids (``<|im_end|>``, ``<|endoftext|>``); sampling
    stops at each, as ``generate`` and vLLM do. The greedy first token of a prompt, made an extra EOS, ends
    that completion after one token, reported as "eos" and left out of the text."""
    model = build_tiny_model("phi3", char_tokenizer, **SMALL).eval()
    eos = char_tokenizer.convert_tokens_to_ids(IM_END)
    first = run(model, char_tokenizer, prompts[:1], greedy=True, max_new_tokens=6, decoder=decoder)[0][0].token_ids[0]
    assert first != eos  # else the test below would pass without the generation config
    model.generation_config.eos_token_id = [eos, first]
    c = run(model, char_tokenizer, prompts[:1], greedy=True, max_new_tokens=6, decoder=decoder)[0][0]
    assert c.token_ids == [first] and c.finish_reason == "eos" and c.finished and c.text == ""


def test_end_token_ids_unions_tokenizer_config_and_extra_ids(model, char_tokenizer):
    from thinktune.rollout.sampler import end_token_ids

    eos = char_tokenizer.convert_tokens_to_ids(IM_END)
    saved = model.generation_config.eos_token_id
    try:
        model.generation_config.eos_token_id = 7
        assert end_token_ids(model, char_tokenizer, (9, eos)) == [eos, 7, 9]
        model.generation_config.eos_token_id = None
        assert end_token_ids(model, char_tokenizer) == [eos]
    finally:
        model.generation_config.eos_token_id = saved


GIB = 2**30
V1_NO_LIMIT = 9223372036854771712  # v1's "no limit": 2**63 - 1 rounded down to a 4 KiB page


def fake_cgroup(directory, limit, usage, inactive, v1=False):
    """One level of a fake cgroup tree: v2's files (``limit`` may be "max"), or v1's with ``v1``."""
    directory.mkdir(parents=True, exist_ok=True)
    if v1:
        (directory / "memory.limit_in_bytes").write_text(f"{limit}\n")
        (directory / "memory.usage_in_bytes").write_text(f"{usage}\n")
        (directory / "memory.stat").write_text(f"inactive_file 1\ntotal_inactive_file {inactive}\n")
    else:
        (directory / "memory.max").write_text(f"{limit}\n")
        (directory / "memory.current").write_text(f"{usage}\n")
        (directory / "memory.stat").write_text(f"anon {usage}\ninactive_file {inactive}\n")


def proc_cgroup(tmp_path, text):
    path = tmp_path / "proc_self_cgroup"
    path.write_text(text)
    return path


def test_cgroup_free_memory_takes_the_tightest_level_of_a_nested_v2_cgroup(tmp_path):
    """Each level's free memory is limit - usage + inactive page cache (reclaimable); the answer is the least
    over this process's cgroup and its ancestors up to the mount root, whichever level holds it."""
    from thinktune.runtime import cgroup_free_memory

    root = tmp_path / "cg"
    root.mkdir()
    (root / "memory.stat").write_text("inactive_file 7\n")  # a v2 root has no memory.max: no limit there
    own = proc_cgroup(tmp_path, "0::/job/task\n")
    fake_cgroup(root / "job", 8 * GIB, 6 * GIB, GIB // 2)  # 8 - 6 + 0.5 = 2.5 GiB
    fake_cgroup(root / "job" / "task", 2 * GIB, GIB, GIB // 4)  # 2 - 1 + 0.25 = 1.25 GiB: its own is tighter
    assert cgroup_free_memory(root, own) == 2 * GIB - GIB + GIB // 4
    fake_cgroup(root / "job" / "task", 4 * GIB, GIB, GIB // 4)  # 4 - 1 + 0.25 = 3.25 GiB: the parent's is
    assert cgroup_free_memory(root, own) == 8 * GIB - 6 * GIB + GIB // 2
    fake_cgroup(root / "job" / "task", "max", GIB, GIB // 4)  # no limit of its own: still the parent's
    assert cgroup_free_memory(root, own) == 8 * GIB - 6 * GIB + GIB // 2
    fake_cgroup(root / "job", "max", 6 * GIB, GIB // 2)
    assert cgroup_free_memory(root, own) is None  # no level has a limit
    assert cgroup_free_memory(root, tmp_path / "absent") is None


def test_cgroup_free_memory_reads_v1_memory_controller_path(tmp_path):
    """v1: the memory controller's line (here sharing its hierarchy, on a hybrid host that also lists v2's
    "0::/") gives the path under ``memory/``; v1's page-rounded 2**63 is no limit."""
    from thinktune.runtime import cgroup_free_memory

    root = tmp_path / "cg"
    fake_cgroup(root / "memory", V1_NO_LIMIT, 50 * GIB, GIB, v1=True)
    fake_cgroup(root / "memory" / "x", 4 * GIB, 3 * GIB, GIB, v1=True)  # 4 - 3 + 1 = 2 GiB
    own = proc_cgroup(tmp_path, "5:cpu,cpuacct:/elsewhere\n4:memory,foo:/x\n1:name=systemd:/\n0::/\n")
    assert cgroup_free_memory(root, own) == 4 * GIB - 3 * GIB + GIB
    fake_cgroup(root / "memory" / "x", V1_NO_LIMIT, 3 * GIB, GIB, v1=True)
    assert cgroup_free_memory(root, own) is None


def test_cgroup_free_memory_of_a_container_at_the_mount_root(tmp_path):
    """Inside a container the path is often "/": the mount root is the process's own cgroup. A path whose
    levels are missing under this mount (a container without its own cgroup namespace) falls back to the
    levels that exist; usage over the limit plus cache clamps to 0."""
    from thinktune.runtime import cgroup_free_memory

    root = tmp_path / "cg"
    fake_cgroup(root, 8 * GIB, 6 * GIB, GIB // 2)  # 8 - 6 + 0.5 = 2.5 GiB
    assert cgroup_free_memory(root, proc_cgroup(tmp_path, "0::/\n")) == 8 * GIB - 6 * GIB + GIB // 2
    assert cgroup_free_memory(root, proc_cgroup(tmp_path, "0::/docker/abc\n")) == 8 * GIB - 6 * GIB + GIB // 2
    fake_cgroup(root, 8 * GIB, 9 * GIB, GIB // 2)  # 8 - 9 + 0.5 < 0
    assert cgroup_free_memory(root, proc_cgroup(tmp_path, "0::/\n")) == 0

    v1 = tmp_path / "v1"
    fake_cgroup(v1 / "memory", 4 * GIB, 3 * GIB, GIB, v1=True)  # 4 - 3 + 1 = 2 GiB
    assert cgroup_free_memory(v1, proc_cgroup(tmp_path, "4:memory:/\n")) == 4 * GIB - 3 * GIB + GIB


def test_free_memory_is_the_smaller_of_host_and_cgroup(monkeypatch):
    from thinktune import runtime

    monkeypatch.setattr(runtime, "host_available_memory", lambda: 5000)
    for cgroup, free in ((1234, 1234), (9999, 5000), (None, 5000)):
        monkeypatch.setattr(runtime, "cgroup_free_memory", lambda cgroup=cgroup: cgroup)
        assert runtime.free_memory(torch.device("cpu")) == free
