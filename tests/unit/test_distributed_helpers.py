"""The one-process side of thinktune.train.distributed and thinktune.modeling.lora: splitting, errors, merging."""

from __future__ import annotations

import os

import pytest
import torch

from thinktune.config import LoRAConfig, ModelConfig, load_config
from thinktune.errors import ConfigError
from thinktune.modeling import lora
from thinktune.recipes import sft
from thinktune.rollout import weights
from thinktune.runtime import Runtime, pick_device
from thinktune.train import distributed

CPU = torch.device("cpu")


def test_shard_gives_each_rank_a_contiguous_share_and_covers_the_batch():
    items = list(range(12))
    shares = [distributed.shard(items, Runtime(CPU, torch.float32, rank=r, world_size=3)) for r in range(3)]
    assert shares == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_rank_passes_cover_every_pass_once_and_run_as_many_on_every_rank():
    for n, world in ((7, 3), (6, 3), (2, 4), (5, 1)):
        shares = [distributed.rank_passes(n, Runtime(CPU, torch.float32, rank=r, world_size=world))
                  for r in range(world)]
        assert sorted(k for share in shares for k in share if k is not None) == list(range(n))
        assert {len(share) for share in shares} == {-(-n // world)}  # ceil(n / world) passes each
    assert distributed.rank_passes(7, Runtime(CPU, torch.float32, rank=2, world_size=3)) == [2, 5, None]


def test_a_batch_that_does_not_split_over_the_ranks_is_a_config_error():
    two = Runtime(CPU, torch.float32, rank=0, world_size=2)
    distributed.check_divisible("batch_size", 8, 2, two)  # 2 ranks x 2 micro-batches of 2
    with pytest.raises(ConfigError, match=r"batch_size=12 does not split over 2 ranks x 4 per pass; .* multiple of 8"):
        distributed.check_divisible("batch_size", 12, 4, two)


def test_fsdp_refuses_a_model_without_decoder_blocks():
    two = Runtime(CPU, torch.float32, rank=0, world_size=2)
    with pytest.raises(ConfigError, match="cannot be sharded or compiled block by block"):
        distributed.prepare(torch.nn.Linear(4, 4), ModelConfig(path="x"), two)


def test_one_process_helpers_are_identities(tiny_phi3):
    one = Runtime(CPU, torch.float32)
    assert distributed.all_sum(2.0, 3.0) == [2.0, 3.0]
    assert distributed.pad_passes([[0, 1], [2]]) == [[0, 1], [2]]
    assert distributed.gather_lists(["a"]) == ["a"]
    assert weights.rollout_copy(tiny_phi3, one) is tiny_phi3


def test_lora_config_errors(tiny_model_dir, char_tokenizer):
    with pytest.raises(ConfigError, match="model.lora: r=-1 must be >= 0"):
        LoRAConfig(r=-1)
    with pytest.raises(ConfigError, match="target_modules is empty"):
        LoRAConfig(r=4, target_modules=[])
    cfg = load_config(sft.SFTConfig, None, [f"model.path={tiny_model_dir}", "data.train=x.jsonl", "model.lora.r=4",
                                            "model.lora.target_modules=[no_such_proj]"])
    with pytest.raises(ConfigError, match=r"model.lora.target_modules=\['no_such_proj'\]"):
        lora.load_policy(cfg.model, None, char_tokenizer, CPU)


def test_merged_export_leaves_the_training_weights_alone(tiny_model_dir, char_tokenizer):
    cfg = ModelConfig(path=str(tiny_model_dir), system_prompt="", lora=LoRAConfig(r=2, alpha=4))
    policy = lora.load_policy(cfg, None, char_tokenizer, CPU)
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # a trained adapter; a fresh one (B = 0) merges to the base
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    state = distributed.full_state_dict(policy)
    merged = lora.merged(policy, state)
    assert all(torch.equal(v, before[k]) for k, v in policy.state_dict().items())
    ids = torch.tensor([[3, 4, 5, 6]])
    torch.testing.assert_close(merged(ids).logits, policy(input_ids=ids).logits, rtol=1e-5, atol=1e-6)


def test_thinktune_device_picks_the_device_or_says_what_is_wrong(monkeypatch):
    monkeypatch.setenv("THINKTUNE_DEVICE", "CPU")
    assert pick_device() == torch.device("cpu")
    monkeypatch.setenv("THINKTUNE_DEVICE", "tpu")
    with pytest.raises(ConfigError, match="THINKTUNE_DEVICE='tpu': choose one of cuda, mps, cpu"):
        pick_device()
    monkeypatch.delenv("THINKTUNE_DEVICE")
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert pick_device().type == expected
    if not torch.cuda.is_available():
        monkeypatch.setenv("THINKTUNE_DEVICE", "cuda")
        with pytest.raises(ConfigError, match="this machine has no cuda device"):
            pick_device()


def test_tests_not_marked_gpu_run_on_the_cpu():
    # conftest's cpu_unless_marked_gpu: the suite's tolerances are the CPU's, also on a machine with a GPU
    assert os.environ.get("THINKTUNE_DEVICE") == "cpu" and pick_device() == torch.device("cpu")
