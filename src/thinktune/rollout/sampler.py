"""Batched sampling for any HF causal LM: the one place every stage draws completions from.

``sample`` takes tokenized prompts (any lengths) and returns, per prompt, ``n`` completions with their
token ids, text, per-token log-probs and whether they finished. ``RolloutEngine`` does the same and keeps
its KV cache (and CUDA graphs) between calls, which is what GRPO wants: build it once, call it every step.

The decode loop is ours, not ``model.generate``'s:

- The architectures in ``modeling/arch.py``'s table (Llama, Qwen2, Qwen3, Phi3, Mistral) run on ``LeanDecoder``
  (static KV cache, ~25 ops per layer); on CUDA its decode step is replayed from CUDA graphs
  (``cuda_graphs.py``), in the model's dtype (bf16 for training).
  Any other causal LM runs on ``HFDecoder`` (``model.forward`` with a ``DynamicCache``). Both feed the
  same loop, so sampling, stops and log-probs are identical code.
- A row stops at an end-of-sequence token (the tokenizer's EOS plus ``stop_token_ids``), at a stop string,
  or at ``max_new_tokens``. Finished rows leave the batch at once (the live rows are compacted to the
  front of the cache), so they cost nothing in later steps.
- Log-probs: ``Completion.logprobs`` are the model's log-probs of the sampled tokens with NO temperature
  and no filter, ``log_softmax(logits)[token]``: what a teacher-forced forward pass of the same model on
  the same tokens gives (tested), so GRPO can use them as the old policy's log-probs.
  ``Completion.sampling_logprobs`` are under the distribution actually sampled: logits / temperature,
  then top-k and top-p, renormalised (and EOS removed before ``min_new_tokens``); 0 for greedy. With
  ``top_k=0, top_p=1`` they are ``log_softmax(logits / T)[token]``, the temperature-scaled policy that
  TRL and verl score with; a GRPO that trains on ``logits / T`` wants these. See ``sampling.py``.
- ``min_new_tokens`` holds back every stop (EOS is not drawn, stop strings are not checked) before that
  many tokens.
- Seeded: one ``torch.Generator`` per call, so the same call with the same seed gives the same completions.
  A row's draws depend on which rows share its batch (they share random tensors), not only on its prompt.

Within a batch, each distinct prompt is prefilled once and its cache rows are copied to every sample of it.
Not done here (yet): refilling finished slots with waiting prompts (continuous batching: today a batch
waits for its longest row, though finished rows cost nothing), and sharing the prompt's cache rows
between samples while decoding (each sample holds its own copy). For vLLM, see ``vllm_backend.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers import PreTrainedTokenizerBase

from thinktune import runtime
from thinktune.errors import ConfigError
from thinktune.modeling import lora
from thinktune.rollout import weights
from thinktune.rollout.cuda_graphs import CudaGraphDecoder
from thinktune.rollout.hf_decoder import HFDecoder
from thinktune.rollout.lean import LeanDecoder, cache_bytes, unsupported_reason
from thinktune.rollout.sampling import gumbel_noise, select_tokens
from thinktune.tracking import progress

DECODERS = ("auto", "lean", "hf")  # auto: lean where the architecture is supported, else hf


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # completions per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    max_new_tokens: int = 256
    greedy: bool = False
    min_new_tokens: int = 0  # end-of-sequence tokens are not drawn before this many new tokens
    stop: tuple[str, ...] = ()  # stop strings: the completion ends once its text contains one
    stop_token_ids: tuple[int, ...] = ()  # more end-of-sequence ids besides the tokenizer's EOS

    def __post_init__(self) -> None:
        if self.greedy and self.n > 1:
            raise ConfigError(f"greedy decoding with n={self.n} samples gives the same completion every time; "
                              "set n=1 or greedy=false")
        if not self.greedy and self.temperature <= 0:
            raise ConfigError("temperature must be > 0 for sampling; use greedy=true for argmax decoding")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            raise ConfigError(f"top_k={self.top_k} must be >= 0 (0: no top-k filter)")
        if self.n < 1 or self.max_new_tokens < 1:
            bad = [f"{k}={v}" for k, v in (("n", self.n), ("max_new_tokens", self.max_new_tokens)) if v < 1]
            raise ConfigError(f"{', '.join(bad)}: must be >= 1")
        if not math.isfinite(self.temperature) or not math.isfinite(self.top_p):
            raise ConfigError(f"temperature={self.temperature} and top_p={self.top_p} must be finite numbers")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError(f"min_new_tokens={self.min_new_tokens} must be in [0, max_new_tokens]")
        if any(not s for s in self.stop):
            raise ConfigError("stop strings must be non-empty")


@dataclass
class Completion:
    token_ids: list[int]  # generated tokens, up to and including the EOS (or the token that completed a stop)
    text: str  # decoded generation without the EOS; with a stop string it ends right after that string
    finished: bool  # ended with EOS or a stop string (False: cut at max_new_tokens)
    logprobs: list[float] = field(default_factory=list)  # model log-probs (T=1, no filter), per token
    sampling_logprobs: list[float] | None = None  # under the distribution sampled; None if a backend lacks them
    finish_reason: str = "length"  # "eos" | "stop" | "length" | "cancelled" (ended by an ``on_step`` hook)


OnComplete = Callable[[int, int, Completion], None]  # (prompt index, sample index, the completion just ended)
# After each decoding step: the (prompt index, sample index) of every row that drew a token in it and the tokens
# drawn, in the same order. Returns the prompts to stop (their live samples end now, "cancelled"), or None.
OnStep = Callable[[list[tuple[int, int]], list[int]], Collection[int] | None]


class Decoder(Protocol):
    """What the loop needs from a decoder (``LeanDecoder``, ``CudaGraphDecoder``, ``HFDecoder``)."""

    max_batch: int
    max_len: int

    def refresh_weights(self) -> None: ...
    def prefill(self, input_ids: torch.Tensor, pad: torch.Tensor) -> torch.Tensor: ...
    def step(self, tokens: torch.Tensor) -> torch.Tensor: ...
    def reorder(self, index: torch.Tensor) -> None: ...


@dataclass
class _Stops:
    """Per-call stop conditions and scratch."""

    eos: torch.Tensor  # [K] end-of-sequence ids on the device
    strings: tuple[str, ...]
    window: int  # generated tokens decoded when looking for a stop string


@dataclass
class _Row:
    """One completion as it is decoded."""

    tokens: list[int]
    logps: list[float]
    sampling_logps: list[float]
    reason: str


class RolloutEngine:
    """A sampler bound to one model; reuses its cache and CUDA graphs across ``sample`` calls.

    Args:
        model: any HF causal LM; it is read, never modified (weights are re-read at every call).
        tokenizer: its tokenizer (EOS, PAD, decoding).
        decoder: "auto" (lean where supported, else hf), "lean" (error if unsupported) or "hf".
        cuda_graphs: replay the lean decode step from CUDA graphs; None: on when the model is on CUDA and
            the lean decoder runs it (True: an error where it cannot).

    Raises:
        ConfigError: an unknown decoder, or CUDA graphs asked for off CUDA.
    """

    backend = "thinktune"

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, decoder: str = "auto",
                 cuda_graphs: bool | None = None, batch_size: int = 64) -> None:
        if decoder not in DECODERS:
            raise ConfigError(f"decoder={decoder!r}; choose one of {', '.join(DECODERS)}")
        # ``source`` is what ``sync_weights`` writes into (a peft model, or under FSDP the policy's plain copy);
        # the decoder reads the HF model inside it, adapters active.
        self.source, self.model = model, lora.decodable(model)
        self.tokenizer, self.decoder_choice, self.batch_size = tokenizer, decoder, batch_size
        self._synced = False
        self.device = next(self.model.parameters()).device
        if cuda_graphs and self.device.type != "cuda":
            raise ConfigError(f"cuda_graphs=true needs the model on CUDA, it is on {self.device}")
        self.graphs_required = cuda_graphs is True
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        self._decoder: Decoder | None = None
        self.lean_unsupported: str | None = None  # why the lean decoder could not run this model, if so
        self.stats: dict[str, int | str] = {}  # of the last call: decoder, steps, decoded_rows

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Sample from ``policy``'s current weights from now on. On one process the engine reads the policy
        itself and re-reads its weights at every call, so there is nothing to do; under FSDP it reads a plain
        copy (``weights.rollout_copy``), refreshed here from the shards (every rank calls this together)."""
        weights.sync_copy(self.source, policy, trainable_only=self._synced)
        self._synced = True

    def release(self) -> None:
        """Nothing: the engine keeps its KV cache (and CUDA graphs) between calls, since rebuilding them every
        step would cost more than the memory they hold; sample fewer rows at once to make it smaller."""

    def resume(self) -> None:
        """Nothing to restore (see ``release``)."""

    def _get_decoder(self, rows: int, max_len: int) -> Decoder:
        d = self._decoder
        if d is not None and d.max_batch >= rows and d.max_len >= max_len:
            return d
        self._decoder = None  # free the old cache before allocating the new one
        reason = self.lean_unsupported = unsupported_reason(self.model, max_len)
        if self.decoder_choice == "lean" and reason:
            raise ConfigError(f"decoder=lean cannot run this model ({reason}); use decoder=auto or hf")
        if self.decoder_choice == "hf" or reason:
            if self.graphs_required:
                raise ConfigError(f"cuda_graphs=true needs the lean decoder, which is not used here "
                                  f"({reason or 'decoder=hf'}); leave cuda_graphs unset")
            self._decoder = HFDecoder(self.model, rows, max_len)
        else:
            self._check_cache_fits(rows, max_len)
            lean = LeanDecoder(self.model, rows, max_len, fuse=self.device.type == "cpu")
            self._decoder = CudaGraphDecoder(lean) if self.cuda_graphs else lean
        return self._decoder

    def _check_cache_fits(self, rows: int, max_len: int) -> None:
        """Refuse a static cache larger than the memory free on the device, with the way out, rather than fail
        inside the allocator (at a 32k-token budget a few hundred rows of a real model need terabytes)."""
        need, free = cache_bytes(self.model, rows, max_len), runtime.free_memory(self.device)
        if free is not None and need > free:
            raise ConfigError(
                f"the rollout KV cache for {rows} rows of up to {max_len} tokens needs {need / 2**30:.1f} GiB, but "
                f"{free / 2**30:.1f} GiB is free on {self.device}: sample fewer rows at once "
                "(sampling.batch_size), lower sampling.max_new_tokens, or sample with vLLM "
                "(pip install 'thinktune[vllm]')")

    def sample(self, prompts: list[list[int]], params: SamplingParams, seed: int = 0, batch_size: int | None = None,
               show_progress: bool = True, on_complete: OnComplete | None = None,
               on_step: OnStep | None = None) -> list[list[Completion]]:
        """Sample ``params.n`` completions for each tokenized prompt, ``batch_size`` rows at a time (None: the
        engine's own).

        ``on_complete(p, j, completion)``, if given, is called from the decode loop as soon as completion ``j``
        of prompt ``p`` has ended, while the rest are still decoding: GRPO starts scoring it there.
        ``on_step(rows, tokens)``, if given, is called after every decoding step with each live row's token
        (``thinktune serve`` streams them); the prompts it returns stop at once, their completions cut there
        with ``finish_reason="cancelled"`` (a client that went away). It costs a device sync per step.

        Returns:
            ``out[p][j]`` is completion ``j`` of prompt ``p``.

        Raises:
            ConfigError: an empty prompt, ``batch_size < 1``, or a decoder that cannot run the model.
        """
        if not prompts:
            return []
        batch_size = batch_size or self.batch_size
        if any(len(p) == 0 for p in prompts) or batch_size < 1:
            raise ConfigError(f"every prompt needs at least one token and batch_size={batch_size} must be >= 1")
        tok = self.tokenizer
        eos_ids = end_token_ids(self.model, tok, params.stop_token_ids)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos_ids[0]
        stops = _Stops(eos=torch.tensor(eos_ids, device=self.device), strings=params.stop,
                       window=4 * max((len(s) for s in params.stop), default=0) + 1)
        requests = [(p, j) for j in range(params.n) for p in range(len(prompts))]
        rows = min(batch_size, len(requests))
        generator = torch.Generator(self.device).manual_seed(seed)
        out: list[list[Completion | None]] = [[None] * params.n for _ in prompts]
        was_training = self.model.training
        self.model.eval()
        bar = progress(len(requests), desc="sample", enabled=show_progress)
        with torch.inference_mode():  # also keeps the CPU weight copies out of autograd
            decoder = self._get_decoder(rows, max(len(p) for p in prompts) + params.max_new_tokens)
            decoder.refresh_weights()
            self.stats = {"decoder": type(decoder).__name__, "steps": 0, "decoded_rows": 0}
            cancelled: set[int] = set()  # prompts an ``on_step`` hook stopped
            for start in range(0, len(requests), rows):
                chunk = requests[start:start + rows]

                def done(i: int, row: _Row, chunk: list[tuple[int, int]] = chunk) -> None:  # batch row i ended
                    p, j = chunk[i]
                    out[p][j] = make_completion(self.tokenizer, row.tokens, row.logps, row.sampling_logps,
                                                 row.reason, params.stop)
                    if on_complete is not None:
                        on_complete(p, j, out[p][j])

                for i in [i for i, (p, _) in enumerate(chunk) if p in cancelled]:  # stopped in an earlier chunk
                    done(i, _Row([], [], [], "cancelled"))
                live = [i for i, (p, _) in enumerate(chunk) if p not in cancelled]
                if live:
                    self._run_batch(decoder, [prompts[chunk[i][0]] for i in live], params, stops, pad_id, generator,
                                    lambda b, row, live=live, done=done: done(live[b], row),
                                    _step_hook(on_step, [chunk[i] for i in live], cancelled))
                bar.update(len(chunk))
        bar.close()
        self.model.train(was_training)
        return out  # type: ignore[return-value]

    def _run_batch(self, decoder: Decoder, prompts: list[list[int]], params: SamplingParams, stops: _Stops,
                   pad_id: int, generator: torch.Generator, done: Callable[[int, _Row], None],
                   step: Callable[[list[int], torch.Tensor], list[int]] | None = None) -> None:
        """Decode one batch of prompts to the end, calling ``done(i, row)`` for batch row ``i`` as it ends;
        ``step(rows, tokens)`` after each step returns the live-slot positions to cancel."""
        # The n samples of a prompt share its prefill: each distinct prompt is prefilled once and its cache
        # rows are then copied to every row that samples from it.
        distinct: dict[tuple[int, ...], int] = {}
        where = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]  # row -> distinct prompt
        ids, pad = _left_pad([list(p) for p in distinct], pad_id, self.device)
        logits = decoder.prefill(ids, pad)  # [u, V]
        if len(distinct) < len(prompts):
            index = torch.tensor(where, device=self.device)  # [n]
            decoder.reorder(index)
            logits = logits[index]  # [n, V]
        rows = [_Row([], [], [], "length") for _ in prompts]
        slots = list(range(len(prompts)))  # live slot -> batch row
        segment: tuple[list, list, list] = ([], [], [])  # per step since the last flush: tokens, logps, s-logps
        noise = _NoiseBank(generator, logits.shape[1], self.device, enabled=not params.greedy)
        for s in range(params.max_new_tokens):
            picked = select_tokens(
                logits, greedy=params.greedy, temperature=params.temperature, top_k=params.top_k,
                top_p=params.top_p, generator=generator, banned=stops.eos if s < params.min_new_tokens else None,
                gumbel=noise.next(len(slots)))
            for buf, x in zip(segment, picked, strict=True):
                buf.append(x)  # [m] each
            tok = picked[0]
            ended = self._ended(tok, slots, rows, segment, stops) if s >= params.min_new_tokens else {}
            if step is not None:
                ended |= {i: "cancelled" for i in step(slots, tok) if i not in ended}
            if s == params.max_new_tokens - 1:
                break
            if ended:
                _flush(segment, slots, rows)
                for i, reason in ended.items():
                    rows[slots[i]].reason = reason
                    done(slots[i], rows[slots[i]])
                keep = _compaction(len(slots), ended)
                if not keep:
                    return
                index = torch.tensor(keep, device=self.device)  # [m']
                decoder.reorder(index)
                slots = [slots[i] for i in keep]
                tok = tok[index]
            logits = decoder.step(tok)  # [m', V]
            self.stats["steps"] += 1
            self.stats["decoded_rows"] += len(slots)
        _flush(segment, slots, rows)
        for i, reason in ended.items():
            rows[slots[i]].reason = reason
        for slot in slots:  # ended at the last step, or cut at max_new_tokens
            done(slot, rows[slot])

    def _ended(self, tok: torch.Tensor, slots: list[int], rows: list[_Row], segment: tuple[list, list, list],
               stops: _Stops) -> dict[int, str]:
        """Slots whose last token ended them: ``{slot: "eos" | "stop"}`` (EOS wins when both)."""
        ended: dict[int, str] = {}
        if stops.strings:  # needs the text so far: flush every step (stop strings are the slow path)
            _flush(segment, slots, rows)
            texts = self.tokenizer.batch_decode([rows[r].tokens[-stops.window:] for r in slots],
                                                skip_special_tokens=False)
            ended = {i: "stop" for i, text in enumerate(texts) if any(st in text for st in stops.strings)}
        hit = (tok[:, None] == stops.eos).any(dim=1)  # [m]
        if hit.any():
            ended.update({i: "eos" for i in hit.nonzero().squeeze(1).tolist()})
        return ended


def _step_hook(on_step: OnStep | None, chunk: list[tuple[int, int]], cancelled: set[int]
               ) -> Callable[[list[int], torch.Tensor], list[int]] | None:
    """``on_step`` for one batch, whose row ``i`` is sample ``chunk[i]``: reports each live slot's token and
    returns the slots whose prompt has been stopped (adding the prompts it names to ``cancelled``)."""
    if on_step is None:
        return None

    def step(slots: list[int], tok: torch.Tensor) -> list[int]:  # tok: [m], slot i is batch row slots[i]
        ids = [chunk[r] for r in slots]
        cancelled.update(on_step(ids, tok.tolist()) or ())
        return [i for i, (p, _) in enumerate(ids) if p in cancelled]

    return step


def sample(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]],
           params: SamplingParams, seed: int = 0, batch_size: int = 64, show_progress: bool = True,
           decoder: str = "auto") -> list[list[Completion]]:
    """Sample ``params.n`` completions for each tokenized prompt (a one-off ``RolloutEngine``).

    Args:
        model: any HF causal LM (those in ``modeling.arch.ARCH_SPECS`` take the lean path).
        tokenizer: its tokenizer.
        prompts: token ids per prompt; lengths may differ.
        params: how to sample and when to stop.
        seed: the same seed gives the same completions.
        batch_size: rows decoded together.
        show_progress: a progress bar over completions.
        decoder: "auto" | "lean" | "hf" (see ``RolloutEngine``).

    Returns:
        ``out[p][j]`` is completion ``j`` of prompt ``p``.
    """
    engine = RolloutEngine(model, tokenizer, decoder=decoder)
    return engine.sample(prompts, params, seed=seed, batch_size=batch_size, show_progress=show_progress)


def end_token_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, extra: Sequence[int] = ()
                  ) -> list[int]:
    """The ids that end a completion: the tokenizer's EOS first, then every ``eos_token_id`` of the model's
    generation config (chat models often list several, e.g. ``<|im_end|>`` and ``<|endoftext|>``, and
    ``generate`` and vLLM stop at each), then ``extra``; without duplicates.

    Raises:
        ConfigError: there is none at all.
    """
    ids = [] if tokenizer.eos_token is None else [tokenizer.convert_tokens_to_ids(tokenizer.eos_token)]
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += [config_eos] if isinstance(config_eos, int) else list(config_eos or [])
    ids = list(dict.fromkeys([*ids, *extra]))
    if not ids:
        raise ConfigError("no end-of-sequence token: the tokenizer has no eos_token and the model's generation "
                          "config no eos_token_id; set tokenizer.eos_token (or pass stop_token_ids)")
    return ids


def make_completion(tokenizer: PreTrainedTokenizerBase, tokens: list[int], logps: list[float],
                    sampling_logps: list[float] | None, reason: str, stop_strings: tuple[str, ...]) -> Completion:
    """A ``Completion`` from generated ``tokens`` that ended for ``reason`` ("eos" | "stop" | "length" |
    "cancelled").

    The text leaves out a final EOS and, for a stop string, ends right after the first stop string in it
    (the last token may have carried characters past it; ``token_ids`` keep that whole token).
    """
    body = tokens[:-1] if reason == "eos" else tokens
    text = tokenizer.decode(body, skip_special_tokens=False)
    ends = [text.find(s) + len(s) for s in stop_strings if s in text] if reason == "stop" else []
    if ends:
        text = text[:min(ends)]
    return Completion(token_ids=tokens, text=text, finished=reason in ("eos", "stop"), logprobs=logps,
                      sampling_logprobs=sampling_logps, finish_reason=reason)


def _left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``ids`` ``[B, T]`` left padded with ``pad_id`` and ``pad`` ``[B]`` (pad columns per row)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], dtype=torch.long)  # [B, T]
    pad = torch.tensor([width - len(r) for r in rows], dtype=torch.long)  # [B]
    return ids.to(device), pad.to(device)


class _NoiseBank:
    """Gumbel noise for many steps at once: one random call per ~2^22 values rather than one per step.

    Noise is i.i.d. and independent of the logits, so any row of it serves any live row; a bank made for
    ``m`` rows serves every later step with fewer rows too.
    """

    def __init__(self, generator: torch.Generator, vocab: int, device: torch.device, enabled: bool) -> None:
        self.generator, self.vocab, self.device, self.enabled = generator, vocab, device, enabled
        self.bank: torch.Tensor | None = None  # [steps, rows, V]
        self.used = 0

    def next(self, rows: int) -> torch.Tensor | None:
        if not self.enabled:
            return None
        if self.bank is None or self.used == self.bank.shape[0] or self.bank.shape[1] < rows:
            steps = max(1, min(64, 2**22 // (rows * self.vocab)))
            self.bank, self.used = gumbel_noise((steps, rows, self.vocab), self.generator, self.device), 0
        self.used += 1
        return self.bank[self.used - 1, :rows]  # [rows, V]


def _flush(segment: tuple[list, list, list], slots: list[int], rows: list[_Row]) -> None:
    """Move the steps held as tensors (one ``[m]`` per step) into the rows' lists, then clear them."""
    if not segment[0]:
        return
    tokens, logps, sampling_logps = (torch.stack(buf, dim=1).tolist() for buf in segment)  # [m, steps] each
    for i, slot in enumerate(slots):
        rows[slot].tokens += tokens[i]
        rows[slot].logps += logps[i]
        rows[slot].sampling_logps += sampling_logps[i]
    for buf in segment:
        buf.clear()


def _compaction(m: int, ended: dict[int, str]) -> list[int]:
    """The live slots, as a new order in which only the slots past the new end move (into the holes)."""
    live = [i for i in range(m) if i not in ended]
    keep = list(range(len(live)))
    holes = [i for i in keep if i in ended]
    movers = [i for i in live if i >= len(live)]
    for hole, mover in zip(holes, movers, strict=True):
        keep[hole] = mover
    return keep
