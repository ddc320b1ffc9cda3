"""math-verify under a hard time limit: a small pool of worker processes, killed and replaced on timeout.

math-verify's own timeouts use ``signal.alarm``: they only work in the main thread, and even there a
signal cannot interrupt a long C call (``(99!)!`` keeps gmpy busy forever with the alarm pending).
The only bound that always holds is to run the check in another process and kill it. So:

    - ``WorkerPool.run(gold, pred, timeout_s)`` sends the pair to an idle worker and waits at most
      ``timeout_s`` seconds (wall clock, from the moment the pair is sent). On timeout the worker is
      killed (SIGKILL) and a replacement starts in the background; the caller gets ``"timed_out"``.
    - A worker that dies (segfault, out of memory) gives ``"errored"``; an exception inside
      math-verify gives ``"errored"`` too. Neither crashes the caller.
    - Safe from any thread: each call owns one worker while it runs; at most ``max_workers`` run at
      once and further callers wait for a free one (that wait is not part of ``timeout_s``).
    - Workers are plain ``python -c`` subprocesses talking over a private socket pair, not
      ``multiprocessing`` children: they never re-import the caller's ``__main__`` (an unguarded
      training script would otherwise re-run in every worker), they can be started from daemonic
      processes (DataLoader workers), and fork-with-threads hazards do not arise.
    - Each worker caps its own address space (``memory_mb``) so a runaway expression fails with
      MemoryError instead of waking the OOM killer next to the trainer, and sets a per-task CPU rlimit
      (timeout + 2 s) so that even an orphaned worker (parent SIGKILLed mid-task) dies by itself.
    - A worker that cannot start (bad interpreter, unguarded ``__main__`` problems, a sandbox without
      ``fork``) raises ``RuntimeError``: failing loudly beats scoring every sample 0.

What is and isn't covered: POSIX only (``pass_fds``, ``resource``); on other platforms use the
in-process mode of ``thinktune.rewards.verify`` (``timeout_s=0``, input guards only). Starting a worker
costs one Python start plus the math-verify import (about 0.4 s), paid on first use and after a
timeout (in the background).
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import resource
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TypeVar

from math_verify import parse, verify

OUTCOMES = ("true", "false", "timed_out", "errored")
STARTUP_TIMEOUT_S = 60.0
DEFAULT_MEMORY_MB = 2048
MAX_WORKERS = max(2, min(8, os.cpu_count() or 2))
T = TypeVar("T")

# Runs in the worker: serve (gold, pred, timeout_s) requests on the inherited socket until it closes.
_WORKER_CODE = "import sys; from thinktune.rewards.pool import serve; serve(int(sys.argv[1]), int(sys.argv[2]))"

logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns whenever its signal timeouts are off


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> list:
    return parse(f"\\boxed{{{gold}}}", parsing_timeout=None)


def math_verify_equal(gold: str, pred: str) -> bool:
    """math-verify equivalence, gold first as math-verify intends, with both sides wrapped in
    ``\\boxed{}`` so LaTeX and plain expressions parse alike. No time bound of its own: call it through
    ``WorkerPool.run`` (or only on inputs that passed ``verify``'s guards). Parsed golds are cached,
    since a GRPO group checks many samples against one gold."""
    pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=None)
    return bool(verify(_parse_gold(gold), pred_parsed, timeout_seconds=None))


def _limit_resources(memory_mb: int) -> None:
    """Cap the worker's address space; no core files when the CPU rlimit fires."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if memory_mb > 0:
            limit = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError):  # not supported here (e.g. RLIMIT_AS on macOS): the wall-clock kill remains
        pass


def _set_cpu_budget(seconds: float) -> None:
    """Let the kernel kill this process (SIGXCPU) after ``seconds`` more CPU time: works even inside
    a C call, and even when the parent that should have killed us is gone."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(used.ru_utime + used.ru_stime + seconds) + 1
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    except (ValueError, OSError):
        pass


def serve(fd: int, memory_mb: int) -> None:
    """Worker main loop: answer ``(gold, pred, timeout_s)`` with an outcome until the socket closes."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the trainer, which then closes us
    _limit_resources(memory_mb)
    conn = Connection(fd)
    math_verify_equal("1", "1")  # warm the parser before saying we are ready
    conn.send("ready")
    while True:
        try:
            gold, pred, timeout_s = conn.recv()
        except (EOFError, OSError):
            return
        _set_cpu_budget(timeout_s + 2.0)
        try:
            outcome = "true" if math_verify_equal(gold, pred) else "false"
        except Exception:  # RecursionError, MemoryError, sympy errors: all mean "not verified"
            outcome = "errored"
        conn.send(outcome)


class _Worker:
    """One worker subprocess and our end of its socket."""

    def __init__(self, memory_mb: int, python: str) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        # The worker imports thinktune from the same place we did, whatever sys.path tricks got us here.
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
        try:
            self.proc = subprocess.Popen(
                [python, "-c", _WORKER_CODE, str(theirs.fileno()), str(memory_mb)],
                pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        except OSError as e:
            ours.close()
            raise RuntimeError(f"could not start a math-verify worker ({e}); pass timeout_s=0 to verify "
                               "in-process (input guards only, no hard time bound)") from e
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        if not self.conn.poll(STARTUP_TIMEOUT_S) or self._recv_ready() != "ready":
            self.kill()
            raise RuntimeError(
                f"a math-verify worker ({python} -c ...) did not start (exit code {self.proc.poll()}); see its "
                "error above. Pass timeout_s=0 to verify in-process without a hard time bound.")

    def _recv_ready(self) -> str | None:
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            return None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.conn.close()


class WorkerPool:
    """Up to ``max_workers`` math-verify worker processes, started on demand, shared by all threads.

    Args:
        max_workers: the most checks that run at once.
        memory_mb: address-space cap per worker (0: none).
        python: the interpreter that runs workers (tests point it at a broken one).
    """

    def __init__(self, max_workers: int = MAX_WORKERS, memory_mb: int = DEFAULT_MEMORY_MB,
                 python: str = sys.executable) -> None:
        self.max_workers, self.memory_mb, self.python = max_workers, memory_mb, python
        self._idle: list[_Worker] = []
        self._live = 0  # running or starting workers, idle or busy
        self._cond = threading.Condition()
        self._closed = False
        self.started = 0  # workers ever started (replacements included)

    def run(self, gold: str, pred: str, timeout_s: float) -> str:
        """Check ``pred`` against ``gold`` in a worker, waiting at most ``timeout_s`` seconds for it.

        Returns:
            One of ``OUTCOMES``: ``"true"``/``"false"`` (math-verify's answer), ``"timed_out"`` (the
            worker was killed), ``"errored"`` (math-verify raised, or the worker died).

        Raises:
            RuntimeError: no worker could be started.
        """
        worker = self._acquire()
        healthy = False
        try:
            worker.conn.send((gold, pred, timeout_s))
            if not worker.conn.poll(timeout_s):
                return "timed_out"
            outcome = worker.conn.recv()
            healthy = True
            return outcome
        except (EOFError, OSError):  # the worker died under us
            return "errored"
        finally:
            self._release(worker, healthy)

    def warm_up(self, n: int = 1) -> None:
        """Start up to ``n`` workers now, in parallel (e.g. before timing the first step).

        Raises:
            RuntimeError: a worker could not be started.
        """
        workers: list[_Worker] = []
        errors: list[BaseException] = []

        def take() -> None:
            try:
                workers.append(self._acquire())
            except RuntimeError as e:
                errors.append(e)

        threads = [threading.Thread(target=take) for _ in range(min(n, self.max_workers))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for worker in workers:
            self._release(worker, True)
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Stop the workers: idle ones now, busy ones when their call returns; later calls start anew."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._live -= len(idle)
        for worker in idle:
            worker.kill()

    def _acquire(self) -> _Worker:
        with self._cond:
            self._closed = False
            while not self._idle and self._live >= self.max_workers:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._live += 1
        return self._start()

    def _start(self) -> _Worker:
        """Start a worker for a slot already counted in ``_live``; give the slot back on failure."""
        try:
            worker = _Worker(self.memory_mb, self.python)
        except BaseException:
            with self._cond:
                self._live -= 1
                self._cond.notify()
            raise
        with self._cond:
            self.started += 1
        return worker

    def _release(self, worker: _Worker, healthy: bool) -> None:
        if healthy and self._park(worker):
            return
        worker.kill()
        if healthy:  # the pool was closed; _park gave the slot back
            return
        with self._cond:
            if self._closed:
                self._live -= 1
                self._cond.notify()
                return
        threading.Thread(target=self._replace, name="math-verify-restart", daemon=True).start()

    def _replace(self) -> None:
        """Start a replacement for a killed worker, so the next caller does not pay the start-up."""
        try:
            worker = self._start()
        except RuntimeError:
            return  # the slot was given back; the next caller retries and sees the error itself
        if not self._park(worker):
            worker.kill()

    def _park(self, worker: _Worker) -> bool:
        """Make ``worker`` idle, unless the pool was closed (then give its slot back and return False)."""
        with self._cond:
            if self._closed:
                self._live -= 1
                self._cond.notify()
                return False
            self._idle.append(worker)
            self._cond.notify()
            return True


_pool: WorkerPool | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def threaded_map(fn: Callable[[int], T], n: int, threads: int = MAX_WORKERS) -> list[T]:
    """``[fn(0), ..., fn(n - 1)]``, computed in up to ``threads`` threads.

    Answer checks spend their time in this pool's worker processes, so threads let up to ``max_workers``
    checks run at once; 1 thread computes in the caller. An exception from ``fn`` is raised here (the
    first in index order).
    """
    if threads <= 1 or n <= 1:
        return [fn(i) for i in range(n)]
    with ThreadPoolExecutor(max_workers=min(threads, n), thread_name_prefix="verify") as pool:
        return list(pool.map(fn, range(n)))


def get_pool() -> WorkerPool:
    """This process's pool, created on first use (and afresh in a forked child, which must not share
    its parent's workers)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool, _pool_pid = WorkerPool(), os.getpid()
            atexit.register(_pool.close)
        return _pool
