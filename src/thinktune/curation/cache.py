"""An append-only on-disk cache of results (teacher replies, pass-rate estimates), so a rerun or a crash
never asks twice.

One JSON line per result; ``distill`` keys a reply by SHA-256 of (endpoint, model, prompt messages, sample
index). Each line is flushed and fsynced before the request counts as done. A key written again supersedes
its earlier lines (``distill`` asks again for a cached reply that fails its checks, and appends the new
one). A crash can tear only the last line; opening the cache drops such a tail (that one sample is asked
again), while a bad line anywhere else is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from thinktune.errors import DataError


def cache_key(*parts: object) -> str:
    """SHA-256 of the JSON of ``parts`` (anything JSON can write): equal parts, equal keys."""
    text = json.dumps(parts, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sample_key(endpoint: str, model: str, messages: list[dict], index: int) -> str:
    """The cache key of sample ``index`` of a prompt (``messages`` as sent) from ``model`` at ``endpoint``."""
    return cache_key(endpoint.rstrip("/"), model, messages, index)


class ReplyCache:
    """``key -> record`` held in memory, every ``put`` appended to ``path`` durably. Thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, dict] = {}
        self.lock = threading.Lock()
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # ``tail`` is empty unless the last write was torn
        for lineno, line in enumerate(complete, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self.records[record["key"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f"{self.path}:{lineno}: not a cache record; the cache is damaged, move it away "
                                "to start over (its replies will be asked again)") from None
        if tail:
            with self.path.open("r+b") as f:
                f.truncate(len(data) - len(tail))

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def put(self, key: str, record: dict) -> None:
        record = {"key": key, **record}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self.lock:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self.records[key] = record
