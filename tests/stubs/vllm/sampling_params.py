"""``vllm.SamplingParams`` (vLLM 0.34.0 ``vllm/sampling_params.py``): the fields thinktune sets, with their
defaults and vLLM's checks of them. vLLM's is a msgspec struct that also takes positional arguments; this one
takes keywords only, which is how thinktune calls it."""

from dataclasses import dataclass

_SAMPLING_EPS = 1e-5  # below it the temperature means greedy
_MAX_TEMP = 1e-2  # vLLM raises smaller positive temperatures to this


@dataclass(kw_only=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 (or -1, accepted quietly) is off
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        if 0 < self.temperature < _MAX_TEMP:
            self.temperature = _MAX_TEMP
        self.seed = None if self.seed == -1 else self.seed
        self.stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        self.stop_token_ids = list(dict.fromkeys(self.stop_token_ids or []))
        checks = [
            (isinstance(self.n, int) and self.n >= 1, f"n must be at least 1, got {self.n}."),
            (0.0 <= self.temperature <= 2.0, f"temperature must be in [0, 2], got {self.temperature}."),
            (0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}."),
            (isinstance(self.top_k, int) and self.top_k >= -1,
             f"top_k must be 0 (disable), or at least 1, got {self.top_k}."),
            (self.max_tokens is None or self.max_tokens >= 1,
             f"max_tokens must be at least 1, got {self.max_tokens}."),
            (self.min_tokens >= 0, f"min_tokens must be greater than or equal to 0, got {self.min_tokens}."),
            (self.max_tokens is None or self.min_tokens <= self.max_tokens,
             f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, got {self.min_tokens}."),
            (self.logprobs is None or self.logprobs >= -1,
             f"logprobs must be non-negative or -1, got {self.logprobs}."),
            (all(isinstance(t, int) for t in self.stop_token_ids),
             f"stop_token_ids must contain only integers, got {self.stop_token_ids}."),
            (all(self.stop), "stop cannot contain an empty string."),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.temperature < _SAMPLING_EPS:  # greedy
            self.top_p, self.top_k = 1.0, 0
            if self.n > 1:
                raise ValueError(f"n must be 1 when using greedy sampling, got {self.n}.")
