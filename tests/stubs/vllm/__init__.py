"""A stand-in for vLLM, NOT vLLM: the subset of vLLM's Python API that ``thinktune.rollout.vllm_backend`` calls,
with the signatures of vLLM 0.34.0 (``vllm/entrypoints/llm.py``, ``sampling_params.py``, ``outputs.py``,
``logprobs.py``, ``inputs/llm.py``), run on CPU by a transformers model, so CI exercises thinktune's glue.

Tests put ``tests/stubs`` on ``sys.path`` themselves (``tests/unit/test_vllm_glue.py``); nothing else sees it.

Each signature is vLLM's restricted to the parameters thinktune passes: same names, order, defaults and
keyword-only markers, the others left out, so a keyword thinktune does not use (or vLLM lacks) is a TypeError.
What it does not copy: vLLM's kernels, batching, KV and prefix caches, CUDA memory; ``generate`` on a sleeping
engine raises where vLLM would queue the requests until ``wake_up``; validation errors are ``ValueError`` where
vLLM raises ``VLLMValidationError``.
"""

from vllm.entrypoints.llm import LLM
from vllm.inputs import TokensPrompt
from vllm.logprobs import Logprob
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import SamplingParams

__all__ = ["LLM", "CompletionOutput", "Logprob", "RequestOutput", "SamplingParams", "TokensPrompt"]
