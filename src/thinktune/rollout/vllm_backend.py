"""The vLLM backend: the same ``sample`` interface on a vLLM engine, with the policy's weights pushed in.

Install with ``pip install 'thinktune[vllm]'`` (needs CUDA). ``resolve_backend("auto")`` picks it when
vllm is importable and a GPU is present, and thinktune's own sampler otherwise.

The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) next to the training model, so
``push_weights`` hands the policy's tensors to vLLM's model directly (``load_weights`` via
``collective_rpc``), with no copy to disk or across processes, and then drops vLLM's prefix cache, whose
KV entries were computed with the old weights.

Differences from thinktune's sampler, stated rather than hidden:

- ``Completion.logprobs`` are vLLM's raw log-probs (before temperature and filters), the same quantity as
  ours; vLLM computes them in its own kernels, so they match a teacher-forced pass only to within its
  numerics. ``sampling_logprobs`` is None: vLLM returns one kind per engine.
- Seeds are per prompt (``request_seed``): reproducible, but not the same draws as ours.
- Both stop at the tokenizer's EOS, every ``eos_token_id`` of the model's generation config (vLLM reads it
  itself; ours through ``sampler.end_token_ids``) and ``stop_token_ids``.

Tested in ``tests/integration/test_rollout_vllm.py`` and ``test_recipes_vllm.py`` (GRPO, evaluate and a curation
verb on vLLM) where vllm and CUDA exist, skipped elsewhere; thinktune's own logic here (seeds, finish reasons,
how pushed weights are chunked) in ``tests/unit/test_vllm_backend.py``.

What CI runs: ``tests/unit/test_vllm_glue.py`` drives this module against ``tests/stubs/vllm``, a stand-in for
vLLM (not vLLM) with the signatures of vLLM 0.34.0's ``LLM``, ``SamplingParams``, ``TokensPrompt`` and outputs,
restricted to what is called here, that samples with a transformers model on CPU and really discards the weights
in a level-2 sleep. It checks the keywords and the mapping both ways, the weight pushes and the sleep/wake order,
and a GRPO run on this backend. The real vLLM engine has not been run in CI: it runs only in the two integration
tests above, where vLLM and a GPU exist.
"""

from __future__ import annotations

import gc
import importlib.util
import os
from collections.abc import Iterable

import torch
from transformers import PreTrainedTokenizerBase

from thinktune.config import BACKENDS
from thinktune.errors import ConfigError, UserError
from thinktune.rollout.sampler import Completion, OnComplete, SamplingParams, make_completion
from thinktune.rollout.weights import full_parameters
from thinktune.runtime import pick_device, rng_state, set_rng_state


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_backend(name: str) -> str:
    """``"auto"`` -> ``"vllm"`` when vllm is installed and runs pick CUDA (``runtime.pick_device``), else
    ``"thinktune"``.

    Raises:
        ConfigError: an unknown name, or ``"vllm"`` where it cannot run.
    """
    if name not in BACKENDS:
        raise ConfigError(f"sampling.backend={name!r}; choose one of {', '.join(BACKENDS)}")
    usable = vllm_available() and pick_device().type == "cuda"
    if name == "vllm" and not usable:
        forced = " (THINKTUNE_DEVICE keeps this run off the GPU)" if torch.cuda.is_available() else ""
        raise ConfigError(f"rollout backend vllm needs `pip install 'thinktune[vllm]'` and a CUDA GPU{forced}; "
                          "use sampling.backend=thinktune")
    if name == "auto":
        return "vllm" if usable else "thinktune"
    return name


def check_vocab(model_path: str, tokens: int, exact: bool) -> None:
    """Refuse ``tokens`` token ids (a policy's embedding rows, ``exact``: pushed weights must match the
    saved shapes; or a tokenizer's size, at most) that the saved model vLLM builds its engine from cannot
    take: the tokenizer may have gained the Phi-4 tokens since ``model_path`` was saved.

    Raises:
        ConfigError: the sizes do not fit.
    """
    from transformers import AutoConfig

    saved = AutoConfig.from_pretrained(model_path).vocab_size
    if tokens > saved or (exact and tokens != saved):
        raise ConfigError(f"{tokens} token ids are in use but {model_path} was saved with a vocabulary of {saved}, "
                          "so vLLM cannot run it; save the model with its tokenizer first (SFT does) or use "
                          "sampling.backend=thinktune")


def engine_for(model_path: str, tokenizer: PreTrainedTokenizerBase, dtype: str, gpu_memory_utilization: float,
               max_model_len: int | None = None, sleep_mode: bool = False) -> VLLMSampler:
    """A ``VLLMSampler`` for a thinktune run: ``dtype`` is ``model.dtype`` ("fp32" | "bf16"); ``max_model_len``
    (prompt plus new tokens) is capped at the model's context, where a sequence then stops, since vLLM refuses
    a longer one; None leaves the model's own. Under torchrun every rank holds its own engine on its own GPU
    (vLLM's "external_launcher", as TRL's colocated mode does)."""
    from transformers import AutoConfig

    context = getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)
    if max_model_len is not None and context:
        max_model_len = min(max_model_len, context)
    kwargs = {} if max_model_len is None else {"max_model_len": max_model_len}
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        kwargs["distributed_executor_backend"] = "external_launcher"
    return VLLMSampler(model_path, tokenizer, dtype={"bf16": "bfloat16", "fp32": "float32"}[dtype],
                       gpu_memory_utilization=gpu_memory_utilization, sleep_mode=sleep_mode, **kwargs)


# A vLLM request's n samples draw with seeds seed + 0..n-1, so prompt seeds are spaced this far apart.
MAX_SAMPLES_PER_PROMPT = 4096


def request_seed(seed: int, prompt: int, n: int) -> int:
    """The seed of prompt ``prompt``'s request in a call seeded ``seed``: its samples (seeds +0..n-1) share no
    seed with another prompt's, or with another call's (calls with seeds a few apart, as ranks and steps give).
    """
    if n > MAX_SAMPLES_PER_PROMPT:
        raise ConfigError(f"{n} samples per prompt; vLLM rollouts take at most {MAX_SAMPLES_PER_PROMPT}")
    return (seed * 1_000_003 + prompt) * MAX_SAMPLES_PER_PROMPT % 2**62  # a 64-bit generator seed, + n


def finish_reason(output) -> str:
    """thinktune's ``"eos" | "stop" | "length"`` for a vLLM ``CompletionOutput``: its ``stop_reason`` is None for
    the EOS, a token id for another stop token, the string for a stop string."""
    if output.finish_reason == "length":
        return "length"
    if output.finish_reason == "stop":
        return "stop" if isinstance(output.stop_reason, str) else "eos"
    raise RuntimeError(f"vLLM ended a completion with finish_reason={output.finish_reason!r}")


def _load_weights(worker, weights: list[tuple[str, torch.Tensor]]) -> list[str]:
    """Runs inside vLLM's worker (``collective_rpc``): load HF-named tensors into its model. Returns the names
    of vLLM's own (possibly packed, e.g. ``qkv_proj``) parameters they wrote."""
    return sorted(worker.get_model().load_weights(weights))


def _release_cached_memory() -> None:
    """Hand the memory PyTorch's caching allocator holds in this process back to the driver before vLLM wakes.

    The trainer's freed tensors (activations, gradients, optimizer temporaries) stay reserved by the caching
    allocator, invisible to anything that asks the driver for memory; vLLM's wake maps its pools with cuMem
    calls that do exactly that, so with trainer and engine on one GPU it can run out of memory while this
    process holds plenty. ``gc.collect`` first, so that tensors kept alive only by reference cycles are freed
    and their blocks can be returned too. Without CUDA initialised the allocator holds nothing.
    """
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _parameter_names(worker) -> list[str]:
    """Runs inside vLLM's worker: the names of its model's parameters (what a full weight push must write), in
    the namespace ``load_weights`` reports them in."""
    return sorted(name for name, _ in worker.get_model().named_parameters())


def check_every_parameter_written(engine_names: list[str], loaded: set[str]) -> None:
    """Refuse a push after a level-2 sleep that left some of the engine's parameters (``engine_names``, from
    ``_parameter_names``) out of ``loaded`` (what ``load_weights`` reported writing): the sleep discarded their
    memory, so they would hold garbage. Names, not counts, are compared, so a name the engine lacks cannot
    stand in for one it missed.

    Raises:
        RuntimeError: naming the first few missing parameters and how many there are.
    """
    missing = sorted(set(engine_names) - loaded)
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise RuntimeError(f"the pushed weights left {len(missing)} of the vLLM engine's {len(engine_names)} "
                           f"parameters unwritten ({shown}), and its sleep discarded them, so they would hold "
                           "garbage; push every weight, or set sampling.vllm.sleep=false in the GRPO config to keep the "
                           "engine's weights resident")


class VLLMSampler:
    """A vLLM engine for one model, sampled like ``RolloutEngine``.

    Args:
        model_path: a saved HF model directory (the policy's starting point).
        tokenizer: its tokenizer (EOS, decoding).
        dtype: vLLM's weight dtype.
        gpu_memory_utilization: the share of GPU memory vLLM may take (leave room for training).
        sleep_mode: allow ``sleep``: between samplings the engine gives its GPU memory (weights and KV cache)
            back to training, and the next ``push_weights`` restores it (vLLM's sleep mode, CUDA only).
        **engine_kwargs: passed to ``vllm.LLM`` (``max_model_len``, ``enforce_eager``, ...).

    Raises:
        UserError: vllm is not installed.
    """

    def __init__(self, model_path: str, tokenizer: PreTrainedTokenizerBase, dtype: str = "bfloat16",
                 gpu_memory_utilization: float = 0.4, sleep_mode: bool = False, **engine_kwargs) -> None:
        if not vllm_available():
            raise UserError("vllm is not installed: pip install 'thinktune[vllm]' (it needs a CUDA GPU)")
        # One process: push_weights hands its tensors to the model object by reference (with vLLM's worker in
        # another process they would be pickled), and the engine shares the training GPU.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        self.tokenizer = tokenizer
        self.sleep_mode, self.asleep, self.stale = sleep_mode, False, False
        # vLLM reseeds the process's global RNGs (Python, NumPy, torch) with its seed while it starts: keep
        # the caller's state, which resumable runs save in their checkpoints.
        state = rng_state()
        self.llm = LLM(model=model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                       enable_prefix_caching=True, enable_sleep_mode=sleep_mode, **engine_kwargs)
        set_rng_state(state)

    backend = "vllm"

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Sample from ``policy``'s current weights from now on: push them into the engine, gathered one
        parameter at a time under FSDP (no second whole copy); wakes a released engine."""
        self.push_weights(full_parameters(policy))

    def release(self) -> None:
        """Give the engine's GPU memory to the update until the next ``sync_weights`` (``sleep``), where the
        engine was built with sleep mode; otherwise nothing."""
        if self.sleep_mode:
            self.sleep()

    def resume(self) -> None:
        """Take back the memory ``release`` gave away. The sleep discarded the weights, so the engine cannot
        sample until ``sync_weights`` has pushed them again: a training loop calls ``sync_weights`` instead."""
        if self.asleep:
            _release_cached_memory()
            self.llm.wake_up()
            self.asleep, self.stale = False, True

    def sleep(self) -> None:
        """Give the engine's GPU memory back until the next ``push_weights``: its weights and KV cache are
        discarded (vLLM's sleep level 2: a GRPO step pushes every weight before it samples again anyway, so
        keeping a CPU copy, level 1, would only cost host memory and two copies per step).

        Raises:
            RuntimeError: the engine was built without ``sleep_mode``.
        """
        if not self.sleep_mode:
            raise RuntimeError("this vLLM engine was built without sleep_mode=True, so it cannot sleep")
        self.llm.sleep(level=2)
        self.asleep = True

    def push_weights(self, weights: Iterable[tuple[str, torch.Tensor]], chunk_bytes: int = 2**30) -> int:
        """Load ``(HF name, tensor)`` pairs into the engine (after every optimizer step), then drop the prefix
        cache, whose entries were computed with the old weights. An engine asleep wakes first its weights'
        memory, then, once every weight is in, its KV cache (so the two never need memory at once); before
        each wake this process's cached GPU memory goes back to the driver (``_release_cached_memory``).

        ``weights`` is consumed a chunk of about ``chunk_bytes`` at a time, so a lazy source (the policy's
        parameters all-gathered one by one under FSDP: ``distributed.full_parameters``) never needs a whole
        second copy of the model; vLLM's ``load_weights`` takes any subset of the weights per call.

        Returns:
            how many of vLLM's parameters were written (its packed ones, such as ``qkv_proj``, count once).

        Raises:
            RuntimeError: after a sleep, the weights did not cover every parameter of the engine (the rest
                would hold garbage); or vLLM could not drop its prefix cache (a request still holds blocks).
        """
        if self.asleep:
            _release_cached_memory()
            self.llm.wake_up(tags=["weights"])
        loaded: set[str] = set()
        chunk, size = [], 0
        for name, tensor in weights:
            chunk.append((name, tensor))
            size += tensor.numel() * tensor.element_size()
            if size >= chunk_bytes:
                loaded.update(self.llm.collective_rpc(_load_weights, args=(chunk,))[0])
                chunk, size = [], 0
        if chunk:
            loaded.update(self.llm.collective_rpc(_load_weights, args=(chunk,))[0])
        chunk = tensor = None  # under FSDP the last chunk is gathered copies: free them before the KV cache wakes
        if self.asleep:
            check_every_parameter_written(self.llm.collective_rpc(_parameter_names)[0], loaded)
        if not self.llm.reset_prefix_cache():  # stale entries would serve keys computed with the old weights
            raise RuntimeError("vLLM could not reset its prefix cache after a weight update")
        if self.asleep:
            _release_cached_memory()
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self.stale = False
        return len(loaded)

    def sample(self, prompts: list[list[int]], params: SamplingParams, seed: int = 0, batch_size: int | None = None,
               show_progress: bool = True, on_complete: OnComplete | None = None) -> list[list[Completion]]:
        """Sample ``params.n`` completions per tokenized prompt; ``out[p][j]`` is completion ``j`` of ``p``.

        ``batch_size`` is accepted for the ``Sampler`` signature and unused: vLLM schedules its own batches.
        ``on_complete(p, j, completion)`` is called for every completion once ``generate`` returns them all.
        """
        if self.asleep or self.stale:
            raise RuntimeError("the vLLM engine's weights were discarded by release(): sync_weights before sampling")
        from vllm import SamplingParams as VLLMParams
        from vllm import TokensPrompt

        eos = self.tokenizer.convert_tokens_to_ids(self.tokenizer.eos_token)
        per_prompt = [VLLMParams(
            n=params.n, temperature=0.0 if params.greedy else params.temperature, top_p=params.top_p,
            # -1 is off in every release we support: 0.34 prefers 0 but accepts -1; older releases reject 0
            top_k=params.top_k if params.top_k > 0 else -1, max_tokens=params.max_new_tokens,
            min_tokens=params.min_new_tokens, stop=list(params.stop), stop_token_ids=[eos, *params.stop_token_ids],
            include_stop_str_in_output=True, skip_special_tokens=False, logprobs=0,
            seed=request_seed(seed, i, params.n),
        ) for i in range(len(prompts))]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], per_prompt,
                                    use_tqdm=show_progress)
        result = []
        for p, out in enumerate(outputs):
            group = []
            for j, c in enumerate(out.outputs):
                tokens = list(c.token_ids)
                logps = [lp[t].logprob for lp, t in zip(c.logprobs, tokens, strict=True)]
                group.append(make_completion(self.tokenizer, tokens, logps, None, finish_reason(c), params.stop))
                if on_complete is not None:
                    on_complete(p, j, group[-1])
            result.append(group)
        return result
