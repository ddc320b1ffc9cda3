"""``vllm.outputs`` (vLLM 0.34.0): ``CompletionOutput`` and ``RequestOutput``, with the fields thinktune reads."""

from dataclasses import dataclass

from vllm.logprobs import Logprob


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None  # "stop" | "length"
    stop_reason: int | str | None = None  # None: the EOS; a token id: another stop token; a str: a stop string


class RequestOutput:
    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int] | None,
                 prompt_logprobs: None, outputs: list[CompletionOutput], finished: bool) -> None:
        self.request_id, self.prompt, self.prompt_token_ids = request_id, prompt, prompt_token_ids
        self.prompt_logprobs, self.outputs, self.finished = prompt_logprobs, outputs, finished
