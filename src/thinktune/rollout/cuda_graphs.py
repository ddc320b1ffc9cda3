"""The lean decoder's decode step replayed from CUDA graphs (bf16 or any dtype the model has).

A 0.5B model at batch 256 launches ~500 small kernels per decode step; from Python each costs more than
it computes, so ``model.generate`` runs at a few percent of the GPU's memory bandwidth. Capturing the step
once and replaying it removes the launches' CPU cost: one ``replay()`` per token.

What a graph needs, and how we give it:

- Fixed shapes: the step is captured per (rows bucket, key-length bucket). Rows round up to a power of
  two (at least 8, at most the batch); live rows sit in ``[0, n)`` (the sampler compacts them there), the
  rows up to the bucket are stale and their logits ignored. Keys round up to a power of two (at least 256,
  at most the cache length); the mask ``key_valid & (column <= t)`` hides the columns not written yet.
- Fixed addresses: tokens and the current column live in static device buffers (``tokens``, ``t``) that
  are filled before each replay; the KV cache, pad offsets and rope tables are the ``LeanDecoder``'s own
  preallocated tensors; weights are views of the model's parameters (``fuse=False``), so in-place
  optimizer updates are seen by the next replay without recapture. If a parameter's storage moves, or a
  LoRA adapter is merged, disabled, switched or rescaled (the ops the step runs change), the graphs are
  dropped and captured again.
- Sampling stays outside the graph (it needs the generator and a host-side stop check each step).

Graphs are captured lazily, the first time a bucket is needed, into one shared memory pool.
"""

from __future__ import annotations

import torch

from thinktune.rollout.lean import LeanDecoder, adapter_state


def _pow2_at_least(x: int, low: int) -> int:
    b = low
    while b < x:
        b *= 2
    return b


class CudaGraphDecoder:
    """``LeanDecoder`` with its decode step captured in CUDA graphs; same interface.

    Args:
        lean: a ``LeanDecoder`` built with ``fuse=False``.
        capture: capture and replay graphs (needs CUDA). False runs the same static-shape step eagerly,
            on any device: that is how the CPU tests check the bucketing, masking and stale-row logic
            that the graphs replay.

    Raises:
        ValueError: ``capture`` without CUDA.
    """

    min_rows = 8  # smallest rows bucket
    min_keys = 256  # smallest key-length bucket

    def __init__(self, lean: LeanDecoder, capture: bool = True) -> None:
        if capture and lean.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, the decoder is on {lean.device}")
        self.lean, self.capture = lean, capture
        self.max_batch, self.max_len = lean.max_batch, lean.max_len
        self.tokens = torch.zeros(lean.max_batch, dtype=torch.long, device=lean.device)  # [Bmax]
        self.t = torch.zeros(1, dtype=torch.long, device=lean.device)  # [1] the column being written
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle() if capture else None
        self._captured_for = self._what_graphs_capture()

    def _what_graphs_capture(self) -> tuple:
        """What a captured step depends on besides the values in its tensors: where the parameters live and
        which adapter ops run."""
        return tuple(p.data_ptr() for p in self.lean.model.parameters()), adapter_state(self.lean.model)

    def refresh_weights(self) -> None:
        """Re-read the weights; drop the graphs if a parameter moved to new memory or an adapter changed."""
        self.lean.refresh_weights()
        now = self._what_graphs_capture()
        if now != self._captured_for:
            self.graphs.clear()
            self._captured_for = now

    def prefill(self, input_ids: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """Eager prefill (one large forward; launch overhead does not matter there)."""
        return self.lean.prefill(input_ids, pad)

    def reorder(self, index: torch.Tensor) -> None:
        self.lean.reorder(index)

    def _body(self, rows: int, kv_len: int) -> torch.Tensor:
        lean, t = self.lean, self.t
        rope = lean.rope_at(t - lean.pad[:rows])  # [rows, ...]
        mask = lean.key_valid[:rows, None, None, :kv_len] & (lean.columns[:kv_len] <= t)  # [rows, 1, 1, kv]
        return lean.decode_forward(self.tokens[:rows], rope, t, mask, kv_len)  # [rows, V]

    def _capture(self, rows: int, kv_len: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # Warm up on a side stream first (cuBLAS workspaces, kernel selection), as capture requires.
        # The warm-up writes column t of rows < ``rows`` with the current tokens: the same values the
        # replay writes next, so it changes nothing.
        side = torch.cuda.Stream(device=self.lean.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._body(rows, kv_len)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = self._body(rows, kv_len)
        self.graphs[(rows, kv_len)] = (graph, logits)
        return graph, logits

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decode one token for the ``n`` live rows (``tokens`` ``[n]``); returns logits ``[n, V]``.

        The returned tensor is the graph's output buffer: valid until the next ``step``.
        """
        n, t = tokens.shape[0], self.lean.t
        rows = min(_pow2_at_least(n, self.min_rows), self.max_batch)
        kv_len = min(_pow2_at_least(t + 1, self.min_keys), self.max_len)
        self.tokens[:n].copy_(tokens)
        self.t.fill_(t)
        if self.capture:
            graph, logits = self.graphs.get((rows, kv_len)) or self._capture(rows, kv_len)
            graph.replay()
        else:
            logits = self._body(rows, kv_len)
        self.lean.t = t + 1
        return logits[:n]
