"""Rollouts: ``sampler`` (the API every stage calls), ``lean``/``cuda_graphs``/``hf_decoder`` (decoders),
``sampling`` (token selection) and ``vllm_backend`` (the optional vLLM engine)."""
