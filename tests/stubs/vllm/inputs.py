"""``vllm.inputs.TokensPrompt`` (vLLM 0.34.0 ``vllm/inputs/llm.py``): a typed dict, as there."""

from typing import NotRequired, TypedDict


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]
    prompt: NotRequired[str]
