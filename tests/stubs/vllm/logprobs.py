"""``vllm.logprobs.Logprob`` (vLLM 0.34.0)."""

from dataclasses import dataclass


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None
