"""The hard time limit on math-verify: worker processes killed at the limit, from threads, and recovery."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from thinktune.rewards import verify as verify_module
from thinktune.rewards.pool import WorkerPool
from thinktune.rewards.verify import Verdict, check_answer, reset_verify_stats, verify_stats

# Both pass the input guards. sympy expands the first for about 90 s; the second never returns, and
# since it is one C call (gmpy factorial) even math-verify's signal.alarm could not interrupt it.
SLOW = ["(x+1)^{9999}", "(99!)!"]
LIMIT_S = 0.3
SLACK_S = 0.4  # killing and reaping the worker, thread scheduling on a busy 2-core machine


@pytest.fixture(scope="module")
def pool() -> Iterator[WorkerPool]:
    pool = WorkerPool(max_workers=2)  # two: the timeout test runs two checks at once
    pool.warm_up(2)
    yield pool
    pool.close()


@pytest.fixture
def isolated(pool: WorkerPool, monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkerPool]:
    """Route checks to the module's own pool and start with an empty verdict cache."""
    monkeypatch.setattr(verify_module, "get_pool", lambda: pool)
    verify_module._math_verify_outcome.cache_clear()
    yield pool
    verify_module._math_verify_outcome.cache_clear()


def test_a_dead_worker_is_an_error_not_a_crash_and_is_replaced(isolated: WorkerPool) -> None:
    isolated.warm_up(1)
    isolated._idle[-1].proc.kill()  # the next call takes the last idle worker
    started = isolated.started
    reset_verify_stats()
    assert check_answer("\\boxed{x+2}", "x+1", timeout_s=5) == Verdict(False, "x+2", "errored")
    assert verify_stats()["errored"] == 1
    # A start is one Python start plus the math-verify import (about 0.6 s here; many times that on a loaded
    # machine). The loop ends as soon as it is done, so a generous deadline costs nothing.
    deadline = time.monotonic() + 60
    while isolated.started == started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert isolated.started > started  # a replacement started in the background


def test_pool_outcomes(pool: WorkerPool) -> None:
    assert pool.run("\\frac{1}{2}", "0.5", 5.0) == "true"
    assert pool.run("\\frac{1}{2}", "0.6", 5.0) == "false"
    assert pool.run("x", "\\frac{1}{0} \\int", 5.0) in ("false", "errored")


def test_slow_predictions_time_out_from_worker_threads(isolated: WorkerPool) -> None:
    # Both workers ready first: a replacement still starting (an earlier test killed one) would add its
    # start-up, which the time limit does not cover, to a check's measured time.
    isolated.warm_up(2)
    reset_verify_stats()
    results: dict[str, tuple[Verdict, float]] = {}

    def check(pred: str) -> None:
        start = time.perf_counter()
        verdict = check_answer(f"<think>hm</think>\\boxed{{{pred}}}", "5", timeout_s=LIMIT_S)
        results[pred] = (verdict, time.perf_counter() - start)

    threads = [threading.Thread(target=check, args=(pred,)) for pred in SLOW]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert sorted(results) == sorted(SLOW)
    for verdict, elapsed in results.values():
        assert verdict.correct is False and verdict.failure == "timed_out"
        assert elapsed < LIMIT_S + SLACK_S
    assert verify_stats()["timed_out"] == 2


def test_a_worker_that_cannot_start_raises() -> None:
    pool = WorkerPool(max_workers=1, python="/bin/false")
    with pytest.raises(RuntimeError, match="did not start"):
        pool.run("1", "1", 1.0)
    assert pool._live == 0  # the slot was given back: a later call tries again
