"""vLLM's ``vllm.entrypoints`` package (stand-in)."""
