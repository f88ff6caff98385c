"""The advisory lock on a sidecar file that serializes a DuckDB file's users across processes.

Shared for readers, exclusive for writers; both the DuckDB file store and a DuckLake whose catalog
is a DuckDB file take it, so a second process queues for the file instead of failing to open it.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_TIMEOUT_S = 1800.0


class StoreLockTimeout(RuntimeError):
    pass


@contextmanager
def file_lock(path: Path, exclusive: bool, timeout_s: float) -> Iterator[None]:
    """Hold the lock on ``path`` (created if missing), polling with backoff for up to ``timeout_s``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + timeout_s
        delay = 0.02
        while True:
            try:
                fcntl.flock(handle.fileno(), mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreLockTimeout(
                        f"waited {timeout_s:.0f}s for the DuckDB lock {path}; another process holds it"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
