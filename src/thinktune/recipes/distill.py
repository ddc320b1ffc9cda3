"""Distill a teacher: n samples per prompt from any OpenAI-compatible endpoint, verified traces to SFT JSONL.

Run:
    export OPENAI_API_KEY=...
    thinktune distill prompts=train.jsonl base_url=https://api.openai.com/v1 model=o3-mini \\
        reasoning_effort=high k=4 output_dir=runs/distill
    thinktune distill prompts=train.jsonl base_url=http://127.0.0.1:8000/v1 model=sft api_key_env=  # thinktune serve

Each sample is one request (``n=1``) through the official ``openai`` client, ``concurrency`` at a time;
the client retries 429s, 5xx, timeouts and dropped connections ``max_retries`` times with backoff. Every
reply goes to an on-disk cache keyed by (endpoint, model, prompt, sample index) before it counts, so a
rerun, or a run after a crash, asks only for what is missing. Sampling settings are not in the key: to
resample with other settings, use a new ``output_dir`` (or ``cache``). A reply is checked before it is
cached: one that is malformed (not JSON, a field of the wrong type) or empty is a failed sample, like a 500
after the retries. A cached reply that fails the same check (written by an older thinktune) is skipped with
a warning and asked for again; the new reply is appended and supersedes it.

Writes to ``output_dir``: ``sft.jsonl`` (verified traces, ``{"id", "messages", "answer", "mode",
"prompt_id", "sample"}``, what ``thinktune sft`` reads), ``rejected.jsonl`` (with the ``reason``),
``failed.jsonl`` (samples with no usable reply after the retries, with the error; a rerun asks for them
again), ``summary.json`` (kept, rejected, failed, tokens) and ``cache.jsonl``. The API key is read from the
environment variable named by ``api_key_env`` and is never written anywhere.

Departures from the paper: Phi-4-reasoning's o3-mini traces included the model's reasoning; OpenAI's API
does not return o3-mini's reasoning, so with it ``require_reasoning=true`` rejects every sample. Use a
teacher that returns its reasoning (DeepSeek-R1, a vLLM reasoning model, ``thinktune serve``), or set
``require_reasoning=false`` to train on answers alone.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import openai
from tqdm import tqdm

from thinktune.config import env_secret, save_config
from thinktune.curation.cache import ReplyCache, sample_key
from thinktune.curation.teacher_client import (
    BadReply,
    MalformedReply,
    Reply,
    check_endpoint,
    describe,
    key_error,
    make_client,
    request_sample,
)
from thinktune.data.chat import prompt_messages, with_system
from thinktune.data.io import write_json, write_jsonl
from thinktune.errors import ConfigError, UserError
from thinktune.rewards.verify import check_answer
from thinktune.tasks.benchmarks import load_prompts
from thinktune.tracking import progress


@dataclass
class DistillConfig:
    prompts: str = ""  # prompt JSONL: {"id", "prompt", "answer", "mode"?}
    base_url: str = ""  # the endpoint, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1
    model: str = ""  # the teacher's model name at that endpoint
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key ("": send none)
    n: int = 4  # samples per prompt
    temperature: float | None = None  # None: not sent (o3-mini accepts none)
    top_p: float | None = None  # None: not sent
    max_new_tokens: int = 0  # sent as max_completion_tokens (0: not sent, the endpoint's default)
    reasoning_effort: str = ""  # o3-mini: low | medium | high ("": not sent)
    system_prompt: str = ""  # sent to the teacher when set; not part of the SFT rows
    seed: int | None = None  # sample j asks with seed + j when set
    concurrency: int = 8  # requests in flight
    max_retries: int = 5  # the openai client's retries per request (429, 5xx, timeouts, dropped connections)
    timeout_s: float = 600.0  # per request attempt
    require_reasoning: bool = True  # reject replies that return no reasoning
    difficulties: list[int] = field(default_factory=list)  # keep prompts of these levels only (empty: all)
    limit: int = 0  # first N prompts (0: all)
    cache: str = ""  # reply cache JSONL ("": output_dir/cache.jsonl); share it between runs to reuse replies
    output_dir: str = "runs/distill"

    # The names the sampling stages use (sampling.n, sampling.max_new_tokens): the teacher's knobs stay at the top
    # level here, since each is sent to the endpoint only when set.
    RENAMED: ClassVar[dict[str, str]] = {"k": "n", "max_tokens": "max_new_tokens"}

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ConfigError("prompts is empty; give the prompt JSONL to distill (prompts=FILE)")
        if not self.base_url or not self.model:
            raise ConfigError("set base_url (e.g. https://api.openai.com/v1) and model (e.g. o3-mini)")
        if self.n < 1 or self.concurrency < 1 or self.max_retries < 0 or self.timeout_s <= 0:
            raise ConfigError("n and concurrency must be >= 1, max_retries >= 0, timeout_s > 0")
        if self.reasoning_effort not in ("", "low", "medium", "high"):
            raise ConfigError(f"reasoning_effort={self.reasoning_effort!r}; use low, medium, high or leave it empty")


@dataclass(frozen=True)
class Job:
    row: dict
    index: int  # sample index within the prompt
    messages: list[dict]  # as sent to the teacher
    key: str


def request_options(cfg: DistillConfig, index: int) -> dict:
    """The request fields beyond model/messages/n, leaving out what the config leaves unset."""
    options: dict = {"temperature": cfg.temperature, "top_p": cfg.top_p,
                     "max_completion_tokens": cfg.max_new_tokens or None, "reasoning_effort": cfg.reasoning_effort or None,
                     "seed": None if cfg.seed is None else cfg.seed + index}
    return {k: v for k, v in options.items() if v is not None}


def cached_replies(jobs: list[Job], cache: ReplyCache) -> dict[str, Reply]:
    """``{key: reply}`` for the jobs with a valid cached reply.

    A cached record that is not a valid reply (an older thinktune cached replies unchecked, e.g. with a
    ``null`` token count) is skipped with a warning, so that its sample is asked for again.
    """
    replies = {}
    for job in jobs:
        record = cache.get(job.key)
        if record is None:
            continue
        try:
            replies[job.key] = Reply.from_record(record)
        except MalformedReply as e:
            tqdm.write(f"[distill] warning: {cache.path}: skipping the cached reply with key {job.key} "
                       f"(prompt {job.row['id']}, sample {job.index}): {e}; asking for it again")
    return replies


def ask_all(client: openai.OpenAI, cfg: DistillConfig, jobs: list[Job],
            cache: ReplyCache) -> tuple[dict[str, Reply], dict[str, str]]:
    """Request every job, caching each valid reply as it lands.

    Returns:
        ``({key: reply}, {key: error})``: the replies and the failures (no reply after the retries, or a
        reply that is malformed or empty).

    Raises:
        UserError: the endpoint rejects the key or does not know the model (every request would fail the
            same way); replies received so far stay cached.
    """
    def ask(job: Job) -> Reply:
        reply = request_sample(client, cfg.model, job.messages, request_options(cfg, job.index))
        cache.put(job.key, {"prompt_id": job.row["id"], "sample": job.index, "endpoint": cfg.base_url,
                            "model": cfg.model, **asdict(reply)})
        return reply

    replies: dict[str, Reply] = {}
    failures: dict[str, str] = {}
    bar = progress(len(jobs), desc="distill")
    pool = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="distill")
    try:
        futures = {pool.submit(ask, job): job for job in jobs}
        for future in as_completed(futures):
            bar.update(1)
            try:
                replies[futures[future].key] = future.result()
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                raise UserError(key_error(cfg.base_url, cfg.api_key_env, e.status_code)) from None
            except openai.NotFoundError as e:
                raise UserError(f"{cfg.base_url} answered 404 for model {cfg.model!r} ({describe(e)}); "
                                "check model and base_url") from None
            except (BadReply, openai.APIError) as e:
                failures[futures[future].key] = describe(e)
    except BaseException:
        # A stop (Ctrl-C, a bad key): closing the client's connections ends the requests in flight, whose
        # threads the interpreter would otherwise wait for at exit, through every retry and timeout.
        client.close()
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
    return replies, failures


def rejection(row: dict, reply: Reply, require_reasoning: bool) -> str | None:
    """Why a reply is not a usable trace, or None when it is (verified against the row's answer)."""
    if reply.finish_reason == "length":
        return "truncated: the reply hit max_new_tokens"
    if require_reasoning and not reply.reasoning:
        return "no reasoning: the reply has no reasoning_content and no <think> block"
    verdict = check_answer(reply.trace(), row["answer"], row["mode"])
    if verdict.correct:
        return None
    if verdict.failure:
        return f"unverifiable: the check {verdict.failure.replace('_', ' ')}"
    if verdict.answer is None:
        return "no answer: no \\boxed{} or 'answer is' in the reply"
    return f"wrong answer: {verdict.answer[:80]!r}, expected {row['answer']!r}"


def sort_samples(jobs: list[Job], replies: dict[str, Reply], failures: dict[str, str],
                 require_reasoning: bool) -> tuple[list[dict], list[dict], list[dict], dict[str, int]]:
    """Every job ends in exactly one of kept (SFT rows), rejected or failed. Also returns token counts."""
    kept, rejected, failed = [], [], []
    tokens = {"prompt": 0, "completion": 0}
    for job in jobs:
        row, where = job.row, {"prompt_id": job.row["id"], "sample": job.index}
        reply = replies.get(job.key)
        if reply is None:
            failed.append({**where, "error": failures.get(job.key, "not requested")})
            continue
        tokens["prompt"] += reply.prompt_tokens
        tokens["completion"] += reply.completion_tokens
        messages = [*prompt_messages(row["prompt"]), {"role": "assistant", "content": reply.trace()}]
        sft_row = {"id": f"{row['id']}-{job.index}", "messages": messages, "answer": row["answer"],
                   "mode": row["mode"], **where}
        reason = rejection(row, reply, require_reasoning)
        if reason is None:
            kept.append(sft_row)
        else:
            rejected.append({**sft_row, "reason": reason})
    return kept, rejected, failed, tokens


def summarize(cfg: DistillConfig, rows: list[dict], asked: int, kept: list[dict], rejected: list[dict],
              failed: list[dict], tokens: dict[str, int]) -> tuple[dict, str]:
    reasons = Counter(r["reason"].split(":")[0] for r in rejected)
    summary = {"prompts": len(rows), "samples": len(rows) * cfg.n, "asked_this_run": asked, "kept": len(kept),
               "rejected": len(rejected), "failed": len(failed), "rejected_by_reason": dict(reasons),
               "prompts_with_a_kept_trace": len({r["prompt_id"] for r in kept}),
               "tokens": {**tokens, "total": tokens["prompt"] + tokens["completion"]}}
    lines = [f"[distill] {cfg.model} at {cfg.base_url}: {len(rows)} prompts x {cfg.n} samples "
             f"({asked} asked this run, the rest from the cache)",
             "| samples | count |", "|---|---|", f"| kept | {len(kept)} |", f"| rejected | {len(rejected)} |",
             *(f"| - {reason} | {n} |" for reason, n in reasons.most_common()),
             f"| failed | {len(failed)} |",
             f"prompts with a kept trace: {summary['prompts_with_a_kept_trace']}/{len(rows)}; tokens: "
             f"{tokens['prompt']} prompt + {tokens['completion']} completion"]
    if failed:
        lines.append(f"{len(failed)} failed samples are in failed.jsonl; rerun the same command to ask for them again")
    return summary, "\n".join(lines)


def run(cfg: DistillConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    rows = load_prompts(cfg.prompts, limit=cfg.limit or None, difficulties=cfg.difficulties)
    client = make_client(cfg.base_url, env_secret(cfg.api_key_env), cfg.timeout_s, cfg.max_retries)
    check_endpoint(client, cfg.base_url, cfg.api_key_env)
    cache = ReplyCache(cfg.cache or out / "cache.jsonl")
    jobs = []
    for row in rows:
        messages = with_system(prompt_messages(row["prompt"]), cfg.system_prompt)
        jobs += [Job(row, j, messages, sample_key(cfg.base_url, cfg.model, messages, j)) for j in range(cfg.n)]
    replies = cached_replies(jobs, cache)
    todo = [job for job in jobs if job.key not in replies]
    tqdm.write(f"[distill] {len(jobs)} samples: {len(jobs) - len(todo)} cached, asking for {len(todo)}")
    asked, failures = ask_all(client, cfg, todo, cache)
    kept, rejected, failed, tokens = sort_samples(jobs, replies | asked, failures, cfg.require_reasoning)
    write_jsonl(out / "sft.jsonl", kept)
    write_jsonl(out / "rejected.jsonl", rejected)
    write_jsonl(out / "failed.jsonl", failed)
    summary, table = summarize(cfg, rows, len(todo), kept, rejected, failed, tokens)
    write_json(out / "summary.json", summary)
    tqdm.write(table)
    return summary
