"""``vllm.LLM`` (vLLM 0.34.0 ``vllm/entrypoints/llm.py``) on a transformers model on CPU: ``generate``,
``collective_rpc``, ``sleep``, ``wake_up`` and ``reset_prefix_cache`` with vLLM's signatures, restricted to the
parameters thinktune passes (see the package docstring for what is not copied)."""

from collections.abc import Callable, Iterable, Sequence
from functools import partial

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vllm.inputs import TokensPrompt
from vllm.logprobs import Logprob
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import _SAMPLING_EPS, SamplingParams

# The EngineArgs fields that thinktune passes through LLM's **kwargs; EngineArgs (a dataclass) raises a
# TypeError for any keyword it lacks, and so does this stand-in for any keyword outside this subset.
ENGINE_ARGS = ("enable_prefix_caching", "enable_sleep_mode", "max_model_len", "distributed_executor_backend")
DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SLEEP_TAGS = ("weights", "kv_cache")  # what a level-1 or level-2 sleep releases, and wake_up(tags=) restores


class Model:
    """What ``worker.get_model()`` returns: the HF model behind vLLM's weight-loading interface. Names are HF's
    (vLLM's own models pack some, e.g. ``qkv_proj``, and report those)."""

    def __init__(self, hf: torch.nn.Module) -> None:
        self.hf = hf

    def named_parameters(self, *args, **kwargs) -> Iterable[tuple[str, torch.nn.Parameter]]:
        return self.hf.named_parameters(*args, **kwargs)

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params, loaded = dict(self.hf.named_parameters()), set()
        for name, tensor in weights:
            param = params[name]  # a name the model lacks is a KeyError, as in vLLM's loaders
            if param.shape != tensor.shape:  # vLLM's default_weight_loader asserts the same
                raise AssertionError(f"Attempted to load weight ({tensor.shape}) into parameter ({param.shape})")
            param.copy_(tensor)
            loaded.add(name)
        return loaded


class Worker:
    """The one in-process worker ``collective_rpc`` runs on (vLLM with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``)."""

    def __init__(self, hf: torch.nn.Module) -> None:
        self.model = Model(hf)

    def get_model(self) -> Model:
        return self.model


class LLM:
    def __init__(self, model: str, *, dtype: str = "auto", gpu_memory_utilization: float | None = None,
                 **kwargs) -> None:
        for key in kwargs:
            if key not in ENGINE_ARGS:
                raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument '{key}'")
        hf = AutoModelForCausalLM.from_pretrained(model, dtype=DTYPES[dtype]).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        context = hf.config.max_position_embeddings
        self.max_model_len = kwargs.get("max_model_len") or context
        if self.max_model_len > context:
            raise ValueError(f"User-specified max_model_len ({self.max_model_len}) is greater than the derived "
                             f"max_model_len (max_position_embeddings={context} in model's config.json).")
        eos = hf.generation_config.eos_token_id
        self.config_eos = {eos} if isinstance(eos, int) else set(eos or [])  # vLLM stops at these as well
        self.enable_sleep_mode = kwargs.get("enable_sleep_mode", False)
        self.sleeping_tags: set[str] = set()
        self.worker = Worker(hf)
        self.generator = torch.Generator().manual_seed(0)  # LLM(seed=0) draws the unseeded requests
        self.requests = 0

    def generate(self, prompts: TokensPrompt | Sequence[TokensPrompt],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, *,
                 use_tqdm: bool | Callable = True) -> list[RequestOutput]:
        if self.sleeping_tags:
            raise RuntimeError(f"stand-in: generate on an engine whose {sorted(self.sleeping_tags)} are asleep "
                               "(vLLM would hold the requests until wake_up)")
        prompts = [prompts] if isinstance(prompts, dict) else list(prompts)
        params = sampling_params or SamplingParams()
        params = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(params) != len(prompts):
            raise ValueError("The lengths of prompts and sampling_params must be the same.")
        return [self._request(p["prompt_token_ids"], sp) for p, sp in zip(prompts, params, strict=True)]

    def _request(self, prompt: list[int], sp: SamplingParams) -> RequestOutput:
        if not 0 < len(prompt) < self.max_model_len:
            raise ValueError(f"The decoder prompt (length {len(prompt)}) is empty, or too long for the maximum "
                             f"model length of {self.max_model_len} plus at least one output token.")
        outputs = []
        for j in range(sp.n):  # vLLM seeds sample j of a request with seed + j
            generator = self.generator if sp.seed is None else torch.Generator().manual_seed(sp.seed + j)
            outputs.append(self._complete(j, list(prompt), sp, generator))
        self.requests += 1
        return RequestOutput(str(self.requests - 1), None, list(prompt), None, outputs, finished=True)

    @torch.no_grad()
    def _complete(self, index: int, prompt: list[int], sp: SamplingParams, generator: torch.Generator
                  ) -> CompletionOutput:
        eos = self.tokenizer.eos_token_id
        # as SamplingParams.update_from_generation_config: the config's other EOS ids are stop tokens
        stop_ids = (set(sp.stop_token_ids) | self.config_eos) - {eos}
        banned = sorted({eos, *stop_ids} - {None})  # before min_tokens
        max_tokens = sp.max_tokens or self.max_model_len - len(prompt)
        tokens: list[int] = []
        logprobs: list[dict[int, Logprob]] = []
        finish, stop_reason, cut, seen = "length", None, None, 0  # seen: characters of text already searched
        while True:
            logits = self.worker.model.hf(torch.tensor([prompt + tokens])).logits[0, -1].float()  # [V]
            raw = torch.log_softmax(logits, dim=-1)  # [V] vLLM's default logprobs_mode="raw_logprobs"
            if len(tokens) < sp.min_tokens:
                logits[banned] = float("-inf")
            token = pick(logits, sp, generator)
            tokens.append(token)
            logprobs.append({token: Logprob(raw[token].item(), rank=int((raw > raw[token]).sum()) + 1)})
            if token == eos or token in stop_ids:  # vLLM's check_stop: the EOS first, then the stop tokens
                finish, stop_reason = "stop", None if token == eos else token
                break
            text = self.tokenizer.decode(tokens, skip_special_tokens=sp.skip_special_tokens)
            # as vLLM's check_stop_strings: a stop string that ends in the new characters, the earliest
            found = [(i + len(s), s) for s in sp.stop if (i := text.find(s, max(seen - len(s) + 1, 0))) >= 0]
            seen = len(text)
            if found and len(tokens) > sp.min_tokens:
                end, stop_reason = min(found)
                finish, cut = "stop", end if sp.include_stop_str_in_output else end - len(stop_reason)
                break
            if len(tokens) >= max_tokens or len(prompt) + len(tokens) >= self.max_model_len:
                break
        shown = tokens[:-1] if finish == "stop" and cut is None and not sp.include_stop_str_in_output else tokens
        text = self.tokenizer.decode(shown, skip_special_tokens=sp.skip_special_tokens)[:cut]
        cumulative = sum(lp[t].logprob for lp, t in zip(logprobs, tokens, strict=True))
        keep = sp.logprobs is not None
        return CompletionOutput(index, text, tokens, cumulative if keep else None, logprobs if keep else None,
                                finish, stop_reason)

    def collective_rpc(self, method: str | Callable, timeout: float | None = None, args: tuple = (),
                       kwargs: dict | None = None) -> list:
        fn = getattr(self.worker, method) if isinstance(method, str) else partial(method, self.worker)
        return [fn(*args, **(kwargs or {}))]

    def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        return True  # no requests run between calls here, so nothing holds a cached block

    def sleep(self, level: int = 1) -> None:
        """Level 1 keeps the weights (vLLM: offloaded to CPU, restored on wake); level 2 discards them: every
        parameter becomes NaN until weights are loaded again."""
        if not self.enable_sleep_mode:
            raise RuntimeError("stand-in: sleep needs LLM(enable_sleep_mode=True)")
        if level >= 1:
            self.sleeping_tags |= set(SLEEP_TAGS)
        if level >= 2:
            with torch.no_grad():
                for _, param in self.worker.model.named_parameters():
                    param.fill_(float("nan"))

    def wake_up(self, tags: list[str] | None = None) -> bool:
        for tag in tags or []:
            if tag not in SLEEP_TAGS:
                raise ValueError(f"wake_up tags must be in {SLEEP_TAGS}, got {tag!r}")
        self.sleeping_tags -= set(SLEEP_TAGS if tags is None else tags)
        return not self.sleeping_tags


def pick(logits: torch.Tensor, sp: SamplingParams, generator: torch.Generator) -> int:
    """The next token from ``logits`` ``[V]``: argmax at temperature 0, else a draw after temperature, top-k and
    top-p."""
    if sp.temperature < _SAMPLING_EPS:
        return int(logits.argmax())
    scores = logits / sp.temperature  # [V]
    if sp.top_k > 0:
        scores[scores < scores.topk(min(sp.top_k, scores.numel())).values[-1]] = float("-inf")
    if sp.top_p < 1.0:
        probs, order = scores.softmax(dim=-1).sort(descending=True)  # [V] each
        outside = probs.cumsum(dim=-1) - probs >= sp.top_p  # [V] the mass before a token already reaches top_p
        scores[order[outside]] = float("-inf")
    return int(torch.multinomial(scores.softmax(dim=-1), 1, generator=generator))
