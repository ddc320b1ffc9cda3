"""The engine thread of ``thinktune serve``: requests from many connection threads, batched for one engine.

Connection threads parse and validate requests, then ``submit`` them to one engine thread (``EngineWorker``),
which owns the engine. Requests that arrive while a batch runs are decoded together in the next one when their
sampling settings agree, so concurrent clients share forward passes. A request with a ``seed`` is decoded alone,
because a row's draws depend on the rows that share its batch.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from thinktune.rollout.sampler import Completion, SamplingParams
from thinktune.rollout.service import Sampler


@dataclass
class Job:
    """One request queued for the engine; ``steps`` (streaming) gets ``[(sample, token), ...]`` per step, then None."""

    prompt: list[int]
    params: SamplingParams
    seed: int | None
    steps: queue.Queue | None = None
    future: Future = field(default_factory=Future)
    cancelled: bool = False  # set by the connection thread when its client went away: the rows stop


class EngineWorker:
    """One thread that owns the engine; ``submit`` from any thread, batches formed from what is queued."""

    def __init__(self, engine: Sampler, batch_size: int) -> None:
        self.engine, self.batch_size = engine, batch_size
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.seeds = itertools.count(1)
        self.largest_batch = 0  # most requests decoded together so far (for tests and logs)
        self.thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self.thread.start()

    def submit(self, prompt: list[int], params: SamplingParams, seed: int | None,
               steps: queue.Queue | None = None) -> Job:
        job = Job(prompt, params, seed, steps)
        self.jobs.put(job)
        return job

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=10)
        while True:  # requests still queued fail rather than wait for ever
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self._finish(job, error=RuntimeError("the server is shutting down"))

    def _loop(self) -> None:
        while (job := self.jobs.get()) is not None:
            pending = [job]
            rows = job.params.n
            while rows < self.batch_size:  # take whatever queued up while the last batch ran
                try:
                    nxt = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.jobs.put(None)
                    break
                pending.append(nxt)
                rows += nxt.params.n
            for j in pending:
                if j.cancelled:  # its client left while it waited
                    self._finish(j, result=[])
            for group in _groups([j for j in pending if not j.cancelled]):
                self._run(group)

    def _run(self, group: list[Job]) -> None:
        seed = group[0].seed if group[0].seed is not None else next(self.seeds)
        # Only a streamed request asks for the per-step hook: it costs a device sync per step.
        hook = {"on_step": _step_hook(group)} if any(j.steps is not None for j in group) else {}
        try:
            outs = self.engine.sample([j.prompt for j in group], group[0].params, seed=seed,
                                      batch_size=self.batch_size, show_progress=False, **hook)
        except Exception as e:  # the request fails with a 500; the server keeps serving
            for j in group:
                self._finish(j, error=e)
            return
        self.largest_batch = max(self.largest_batch, len(group))
        for j, out in zip(group, outs, strict=True):
            self._finish(j, result=out)

    @staticmethod
    def _finish(job: Job, result: list[Completion] | None = None, error: BaseException | None = None) -> None:
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
        if job.steps is not None:
            job.steps.put(None)


def _step_hook(group: list[Job]) -> Callable[[list[tuple[int, int]], list[int]], list[int]]:
    """The engine's ``on_step`` for one batch: each step's tokens to their job, the cancelled jobs back."""
    def on_step(rows: list[tuple[int, int]], tokens: list[int]) -> list[int]:
        per_job: dict[int, list[tuple[int, int]]] = {}
        for (p, j), token in zip(rows, tokens, strict=True):
            per_job.setdefault(p, []).append((j, token))
        for p, items in per_job.items():
            if group[p].steps is not None:
                group[p].steps.put(items)
        return [p for p, job in enumerate(group) if job.cancelled]

    return on_step


def _groups(jobs: list[Job]) -> list[list[Job]]:
    """Jobs that can share one ``sample`` call: the same params and no seed; a seeded job goes alone."""
    groups: dict[Any, list[Job]] = {}
    for i, j in enumerate(jobs):
        groups.setdefault((j.params, None) if j.seed is None else ("seeded", i), []).append(j)
    return list(groups.values())

