"""What every preflight check reads: the profile, the selection, and what the store already holds."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from orion_assets.cli.preflight.report import Report
from orion_assets.profiles import Profile
from orion_assets.store import SCHEMA, BaseStore, store_for

HTTP_TIMEOUT_S = 5.0


class Context:
    """One preflight of ``profile`` for the assets in ``selection`` (None: the whole graph)."""

    def __init__(self, profile: Profile, data_dir: Path, selection: Iterable[str] | None = None,
                 timeout_s: float = HTTP_TIMEOUT_S):
        self.profile = profile
        self.cfg = profile.config
        self.data_dir = Path(data_dir)
        self.selection = set(selection) if selection else None
        self.timeout_s = timeout_s
        self.report = Report(profile)
        self.store_ok = True  # False once the store check could not open it: nothing more is read from it
        self._cache_stats: dict[str, dict[str, float]] | None = None
        self._checkpoints: set[str] | None = None

    def selected(self, asset: str) -> bool:
        return self.selection is None or asset in self.selection

    def store(self) -> BaseStore:
        return store_for(self.cfg.store, self.data_dir)

    def cache_stats(self) -> dict[str, dict[str, float]]:
        """Per role: answered calls in ``orion.llm_calls`` and their mean prompt/completion tokens."""
        if self._cache_stats is None:
            self._cache_stats = {}
            store = self.store()
            if self.store_ok and store.exists() and store.table_exists("llm_calls"):
                with store.connect(read_only=True) as con:
                    rows = con.execute(
                        f"SELECT role, count(*), avg(prompt_tokens), avg(completion_tokens) "
                        f"FROM {SCHEMA}.llm_calls WHERE status = 'ok' GROUP BY role"
                    ).fetchall()
                self._cache_stats = {r[0]: {"calls": r[1], "prompt": r[2], "completion": r[3]} for r in rows}
        return self._cache_stats

    def checkpoints(self) -> list[dict]:
        """The rows of ``orion.student_checkpoint`` (student, variant, seed, checkpoint id, path, kind)."""
        if self._checkpoints is None:
            self._checkpoints = []
            store = self.store()
            if self.store_ok and store.exists() and store.table_exists("student_checkpoint"):
                self._checkpoints = store.read("student_checkpoint").to_dicts()
        return self._checkpoints

    def completion_estimate(self, role: str, max_tokens: int) -> int:
        """Tokens per answer of ``role``: the cache's mean where it has answers, else ``max_tokens``."""
        mean = self.cache_stats().get(role, {}).get("completion")
        return int(min(mean, max_tokens)) if mean else max_tokens
