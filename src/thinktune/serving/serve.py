"""Serve a checkpoint behind an OpenAI-compatible chat-completions API, so it can teach another model.

Run:
    thinktune serve model.path=runs/demo/sft/final port=8000
    # then, from anywhere on this machine:
    thinktune distill base_url=http://127.0.0.1:8000/v1 model=sft prompts=train.jsonl api_key_env=

Listens on 127.0.0.1 (loopback) unless ``host`` says otherwise; with ``api_key_env`` set, requests must
carry that environment variable's value as a bearer token. ``http.*`` bounds what clients can hold: connection
threads, the queue before 503, idle/header/body timeouts and the body size (``HTTPLimits``); ``stream: true``
replies are sent token by token. The ``<think>`` part comes back in
``reasoning_content`` (``reasoning=separate``) or inline in ``content`` (``reasoning=inline``). See
``thinktune.serving.server`` for the wire format and how concurrent requests are batched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from thinktune import runtime
from thinktune.config import ModelConfig, SamplingConfig, env_secret
from thinktune.errors import ConfigError
from thinktune.modeling import models
from thinktune.rollout.service import make_sampler
from thinktune.serving.server import HTTPLimits, ServerSettings, start


@dataclass
class ServeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    served_name: str = ""  # the `model` clients send; default: the checkpoint directory's name
    host: str = "127.0.0.1"  # loopback only; 0.0.0.0 exposes the server to the network
    port: int = 8000  # 0: any free port (printed at start)
    api_key_env: str = ""  # environment variable holding the key clients must send ("": no key)
    reasoning: Literal["separate", "inline"] = "separate"
    max_new_tokens: int = 2048  # default and cap of a request's max_tokens
    # A request's max_tokens above the cap (or above what the context leaves): "reject" answers 400 naming the
    # cap; "clamp" decodes up to the cap (finish_reason "length" says where it stopped), for evaluation harnesses
    # that ask for long budgets.
    max_tokens_over_cap: Literal["reject", "clamp"] = "reject"
    max_n: int = 16  # most samples per request
    batch_size: int = 64  # rows decoded together across concurrent requests
    decoder: Literal["auto", "lean", "hf"] = "auto"
    http: HTTPLimits = field(default_factory=HTTPLimits)  # connection threads, queue, timeouts, body size
    verbose: bool = False  # log every request

    def __post_init__(self) -> None:
        self.model.check_sampling_only("serve")
        if not self.model.path:
            raise ConfigError("model.path is empty; set the checkpoint to serve (model.path=DIR)")
        if self.max_new_tokens < 1 or self.max_n < 1 or self.batch_size < 1:
            raise ConfigError("max_new_tokens, max_n and batch_size must be >= 1")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port={self.port} must be in [0, 65535]")


def settings_for(cfg: ServeConfig, context_len: int) -> ServerSettings:
    """Server settings from the config; the API key is read from the environment here and kept in memory."""
    return ServerSettings(model_name=cfg.served_name or Path(cfg.model.path).name, api_key=env_secret(cfg.api_key_env),
                          reasoning=cfg.reasoning, max_new_tokens=cfg.max_new_tokens,
                          max_tokens_over_cap=cfg.max_tokens_over_cap, max_n=cfg.max_n, context_len=context_len,
                          batch_size=cfg.batch_size, http=cfg.http)


def run(cfg: ServeConfig) -> None:
    rt = runtime.init(cfg.model.dtype, seed=0)
    tokenizer = models.load_tokenizer(cfg.model)
    model = models.load_model(cfg.model, tokenizer, rt.device, rt.dtype)
    settings = settings_for(cfg, context_len=model.config.max_position_embeddings)
    # thinktune's sampler: it streams each completion as it ends and batches concurrent requests together
    engine = make_sampler(SamplingConfig(backend="thinktune", decoder=cfg.decoder, batch_size=cfg.batch_size),
                          cfg.model, tokenizer, rt, model=model)
    server = start(settings, tokenizer, engine, cfg.host, cfg.port, log=tqdm.write if cfg.verbose else None)
    print(f"[serve] {settings.model_name!r} on {server.url} (reasoning {cfg.reasoning}, "
          f"{'key required' if settings.api_key else 'no key'}, max_tokens <= {cfg.max_new_tokens} "
          f"({cfg.max_tokens_over_cap} above), {cfg.http.workers} connection threads); Ctrl-C stops it", flush=True)
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        print(f"[serve] WARNING: listening on {cfg.host} with no API key: anyone who can reach this machine "
              "can use the model; set api_key_env", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        tqdm.write("[serve] stopped")
    finally:
        server.server_close()
