"""The content-addressed call cache: ``orion.llm_calls`` (one row per call, keyed by what determines
the answer, never by credentials) and ``orion.llm_prompts`` (each distinct prompt once). Results are
flushed while a batch runs, so a killed run keeps its calls. Specification: ``docs/llm-calls.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from orion_assets.ids import content_id
from orion_assets.llm.types import GenerationResult, SamplingParams
from orion_assets.store import SCHEMA, BaseStore
from orion_assets.store.columns import StoreTable, col

log = logging.getLogger(__name__)

TABLE = "llm_calls"
PROMPTS_TABLE = "llm_prompts"
KEY_LENGTH = 32

LLM_PROMPTS = StoreTable(PROMPTS_TABLE, "each distinct prompt once, named by its hash", {
    "prompt_hash": col("VARCHAR NOT NULL", "the prompt's key: the sha256 of its JSON text, hex, cut to 32 characters"),
    "messages": col("JSON", "the prompt: its chat messages as JSON ([{role, content}, ...])"),
})
LLM_PROMPTS_DDL = LLM_PROMPTS.ddl(SCHEMA)

LLM_CALLS = StoreTable(TABLE, "one row per LLM call (the latest outcome of each call id), written while a batch runs", {
    "call_id": col("VARCHAR NOT NULL", "the call's key: a content hash of what determines the reply (backend, base URL, "
                                       "model, its revision, messages, sampling parameters, sample index)"),
    "role": col("VARCHAR", "who answered: teacher, student or judge"),
    "backend": col("VARCHAR", "the endpoint's backend: openai, hf or replay"),
    "base_url": col("VARCHAR", "the OpenAI-compatible server's URL, or managed:<kind> for a server ORION started "
                               "(NULL: hf and replay)"),
    "model": col("VARCHAR", "the model named (openai), <folder>@<fingerprint> of the local model (hf), or the replayed file or field "
                         "(replay)"),
    "prompt_hash": col("VARCHAR", "the prompt's key in llm_prompts"),
    "params": col("JSON", "the sampling parameters: max_tokens, temperature, top_p, seed (the base seed: the "
                           "sample index is added), and json_mode when set"),
    "sample_index": col("INTEGER", "which of the samples drawn for this prompt (0, 1, ...)"),
    "text": col("VARCHAR", "the reply's text"),
    "reasoning": col("VARCHAR", "a reasoning model's separate thinking, when the server returns it"),
    "finish_reason": col("VARCHAR", "stop, length (the token limit) or error"),
    "prompt_tokens": col("INTEGER", "the prompt's length in tokens, as the backend counted it"),
    "completion_tokens": col("INTEGER", "the reply's length in tokens (a reasoning model's thinking included)"),
    "latency_s": col("DOUBLE", "seconds the call took with its retries (hf: the batch it ran in)"),
    "retries": col("INTEGER", "attempts after the first"),
    "error": col("VARCHAR", "why the call failed (NULL: it did not)"),
    "status": col("VARCHAR", "ok, or error (asked again by the next run)"),
    "dagster_run_id": col("VARCHAR", "the Dagster run that made the call"),
    "created_at": col("TIMESTAMPTZ", "when the row was made (UTC)"),
    "model_revision": col("VARCHAR", "which weights answered under the model's name (an evaluated checkpoint's id; "
                                     "NULL: none named)"),
    "reasoning_tokens": col("INTEGER", "the part of completion_tokens spent thinking, when the server says (NULL: "
                                       "it did not)"),
})
LLM_CALLS_DDL = LLM_CALLS.ddl(SCHEMA)
# Files written before ``model_revision`` existed gain the column (null: no revision was named);
# likewise ``reasoning_tokens`` (null: the server did not say, or the row predates the column).
LLM_CALLS_MIGRATIONS: tuple[str, ...] = (
    f"ALTER TABLE {SCHEMA}.{TABLE} ADD COLUMN IF NOT EXISTS model_revision VARCHAR",
    f"ALTER TABLE {SCHEMA}.{TABLE} ADD COLUMN IF NOT EXISTS reasoning_tokens INTEGER",
)

COLUMNS: tuple[str, ...] = tuple(LLM_CALLS.columns)

ARROW_SCHEMA = pa.schema(
    [
        ("call_id", pa.string()),
        ("role", pa.string()),
        ("backend", pa.string()),
        ("base_url", pa.string()),
        ("model", pa.string()),
        ("prompt_hash", pa.string()),
        ("params", pa.string()),
        ("sample_index", pa.int32()),
        ("text", pa.string()),
        ("reasoning", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("latency_s", pa.float64()),
        ("retries", pa.int32()),
        ("error", pa.string()),
        ("status", pa.string()),
        ("dagster_run_id", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("model_revision", pa.string()),
        ("reasoning_tokens", pa.int32()),
    ]
)


PROMPTS_ARROW_SCHEMA = pa.schema([("prompt_hash", pa.string()), ("messages", pa.string())])


def _canonical_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(m) for m in messages]


def messages_json(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text a prompt is stored as in ``orion.llm_prompts.messages``."""
    return json.dumps(_canonical_messages(messages), ensure_ascii=False)


def prompt_hash(messages_text: str) -> str:
    """The key of a stored prompt: the sha256 of its JSON text (:func:`messages_json`), hex, cut to
    ``KEY_LENGTH``. The migration computes the same in SQL (``left(sha256(messages::VARCHAR), 32)``),
    so a prompt moved from an older file and the same prompt written later share one row."""
    return hashlib.sha256(messages_text.encode("utf-8")).hexdigest()[:KEY_LENGTH]


def cache_key(
    backend: str,
    base_url: str | None,
    model: str | None,
    messages: Sequence[Mapping[str, Any]],
    params: SamplingParams,
    sample_index: int,
    *,
    extra: object = None,
    model_revision: str | None = None,
) -> str:
    """The call id: a content hash of everything that determines the reply (never a credential).

    ``extra`` lets a backend add what else determines its answer (the replay backend adds a digest
    of the text it replays). ``model_revision`` names which weights answer under ``model`` (an
    evaluated checkpoint's id): a server that keeps serving a retrained adapter under the same name
    gets new keys. ``None`` (no revision named) gives the keys of files written before it existed.
    """
    base = base_url.rstrip("/") if base_url else None
    parts: list[object] = [
        "llm_call/v1",
        backend,
        base,
        model,
        _canonical_messages(messages),
        params.to_json(),
        int(sample_index),
    ]
    if extra is not None:
        parts.append(extra)
    if model_revision is not None:
        parts.append(["model_revision", str(model_revision)])
    return content_id(*parts, length=KEY_LENGTH)


@dataclass(frozen=True)
class CallIdentity:
    """What a row says about its call besides the result (the columns that are not the reply)."""

    role: str
    backend: str
    base_url: str | None
    model: str | None
    model_revision: str | None = None


def _has_column(con, table: str, column: str) -> bool:
    # The table's own column list: about 1 ms, where a query of duckdb_columns() costs some 60 ms.
    description = con.execute(f"SELECT * FROM {SCHEMA}.{table} LIMIT 0").description
    return any(d[0] == column for d in description)


def _move_messages_to_prompts(con) -> None:
    """An ``llm_calls`` of an older file holds each call's messages: store each distinct text once in
    ``llm_prompts``, name it by ``prompt_hash`` and drop the column.

    Three steps, each safe to run again if a process dies between them (DuckDB refuses to change
    rows of a table altered in the same transaction): add ``prompt_hash``; fill it and copy the
    prompts, in one transaction; drop ``messages``."""
    calls, prompts = f"{SCHEMA}.{TABLE}", f"{SCHEMA}.{PROMPTS_TABLE}"
    con.execute(f"ALTER TABLE {calls} ADD COLUMN IF NOT EXISTS prompt_hash VARCHAR")
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f"""UPDATE {calls} SET prompt_hash = left(sha256(messages::VARCHAR), {KEY_LENGTH})
                        WHERE prompt_hash IS NULL AND messages IS NOT NULL""")
        con.execute(f"""INSERT INTO {prompts} (prompt_hash, messages)
                        SELECT prompt_hash, any_value(messages) FROM {calls} c
                        WHERE prompt_hash IS NOT NULL AND messages IS NOT NULL
                          AND NOT EXISTS (SELECT 1 FROM {prompts} p WHERE p.prompt_hash = c.prompt_hash)
                        GROUP BY prompt_hash""")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute(f"ALTER TABLE {calls} DROP COLUMN messages")
    log.info("moved the messages of %s into %s (one row per distinct prompt)", calls, prompts)


def _exists(con, table: str) -> bool:
    return bool(con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database() "
        "AND table_schema = ? AND table_name = ?", [SCHEMA, table]).fetchone()[0])


def _changes(con) -> list[str]:
    """The DDL the two tables still need: creating a missing one, adding columns added later."""
    tables = ((PROMPTS_TABLE, LLM_PROMPTS_DDL), (TABLE, LLM_CALLS_DDL))
    changes = [ddl for table, ddl in tables if not _exists(con, table)]
    if _exists(con, TABLE):
        have = {d[0] for d in con.execute(f"SELECT * FROM {SCHEMA}.{TABLE} LIMIT 0").description}
        changes += [s for s in LLM_CALLS_MIGRATIONS if s.split("IF NOT EXISTS ")[1].split()[0] not in have]
    return changes


def _apply_changes(con) -> None:
    for statement in _changes(con):
        con.execute(statement)


def _keyed_tables(con) -> list[str]:
    """The cache tables of an older file that still carry a PRIMARY KEY."""
    rows = con.execute(
        "SELECT DISTINCT table_name FROM duckdb_constraints() WHERE constraint_type = 'PRIMARY KEY' "
        "AND database_name = current_database() AND schema_name = ? AND table_name IN (?, ?)",
        [SCHEMA, TABLE, PROMPTS_TABLE],
    ).fetchall()
    return sorted(r[0] for r in rows)


def _old_layout(con) -> bool:
    return (_exists(con, TABLE) and _has_column(con, TABLE, "messages")) or bool(_keyed_tables(con))


def _upgrade_old_file(con) -> None:
    """Bring an older DuckDB file's cache up to date, each step safe to run again: the messages move
    into ``llm_prompts``; a table with a PRIMARY KEY is copied into one without and takes its place."""
    _apply_changes(con)
    if _has_column(con, TABLE, "messages"):
        _move_messages_to_prompts(con)
    for table in _keyed_tables(con):
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(f"CREATE OR REPLACE TABLE {SCHEMA}.{table}__unkeyed AS SELECT * FROM {SCHEMA}.{table}")
            con.execute(f"DROP TABLE {SCHEMA}.{table}")
            con.execute(f"ALTER TABLE {SCHEMA}.{table}__unkeyed RENAME TO {table}")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        log.info("rebuilt %s.%s without its PRIMARY KEY", SCHEMA, table)


def ensure_table(store: BaseStore) -> None:
    """Create the two tables, or bring them up to date, changing only what is missing: look first,
    then change in one transaction (on DuckLake a DDL statement, even a no-op, can conflict with
    another process creating the same table; the transaction then runs again and finds them made).
    An older DuckDB file is upgraded once (:func:`_upgrade_old_file`)."""
    if store.exists():
        with store.connect(read_only=True) as con:
            old = _old_layout(con)
            if not old and not _changes(con):
                return
        if old:
            with store.connect() as con:  # a DuckDB file (a lake never had the old layout)
                _upgrade_old_file(con)
            return
    store.transaction(_apply_changes, what=f"creating {SCHEMA}.{TABLE} and {SCHEMA}.{PROMPTS_TABLE}")


def lookup(store: BaseStore, call_ids: Iterable[str]) -> dict[str, GenerationResult]:
    """Rows already in the cache with status 'ok', as cached results (error rows are not returned)."""
    ids = sorted(set(call_ids))
    if not ids:
        return {}
    keys = pa.table({"call_id": pa.array(ids, pa.string())})
    ensure_table(store)  # an older file gains the columns read below
    with store.connect(read_only=True) as con:
        con.register("_llm_keys", keys)
        try:
            rows = con.execute(
                f"""SELECT c.call_id, c.text, c.reasoning, c.finish_reason, c.prompt_tokens,
                           c.completion_tokens, c.latency_s, c.retries, c.error, c.reasoning_tokens
                    FROM {SCHEMA}.{TABLE} c JOIN _llm_keys k USING (call_id)
                    WHERE c.status = 'ok'"""
            ).fetchall()
        finally:
            con.unregister("_llm_keys")
    return {
        r[0]: GenerationResult(
            call_id=r[0],
            text=r[1],
            reasoning=r[2],
            finish_reason=r[3],
            prompt_tokens=r[4],
            completion_tokens=r[5],
            latency_s=r[6],
            retries=r[7] or 0,
            error=r[8],
            cached=True,
            reasoning_tokens=r[9],
        )
        for r in rows
    }


def make_row(
    identity: CallIdentity,
    messages: Sequence[Mapping[str, Any]],
    params: SamplingParams,
    sample_index: int,
    result: GenerationResult,
    run_id: str | None,
) -> dict[str, Any]:
    """A row for :func:`write_rows`: the ``llm_calls`` columns plus ``messages`` (the prompt's JSON
    text, written to ``llm_prompts`` under ``prompt_hash`` unless it is there already)."""
    text = messages_json(messages)
    return {
        "call_id": result.call_id,
        "role": identity.role,
        "backend": identity.backend,
        "base_url": identity.base_url,
        "model": identity.model,
        "prompt_hash": prompt_hash(text),
        "messages": text,
        "params": json.dumps(params.to_json(), sort_keys=True),
        "sample_index": sample_index,
        "text": result.text,
        "reasoning": result.reasoning,
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "latency_s": result.latency_s,
        "retries": result.retries,
        "error": result.error,
        "status": "error" if result.finish_reason == "error" else "ok",
        "dagster_run_id": run_id,
        "created_at": datetime.now(UTC),
        "model_revision": identity.model_revision,
        "reasoning_tokens": result.reasoning_tokens,
    }


def write_rows(store: BaseStore, rows: Sequence[Mapping[str, Any]], *, create: bool = True) -> None:
    """Upsert rows (from :func:`make_row`) by call_id in one short transaction (the last row for a
    call id wins), with the prompts that ``llm_prompts`` does not hold yet."""
    if not rows:
        return
    latest: dict[str, dict[str, Any]] = {}
    prompts: dict[str, str] = {}
    for row in rows:
        row = dict(row)
        text = row.pop("messages", None)
        if text is not None:
            if not isinstance(text, str):
                text = messages_json(text)
            row["prompt_hash"] = row.get("prompt_hash") or prompt_hash(text)
            prompts.setdefault(row["prompt_hash"], text)
        latest[row["call_id"]] = row
    table = pa.Table.from_pylist(list(latest.values()), schema=ARROW_SCHEMA)
    prompt_table = pa.Table.from_pydict(
        {"prompt_hash": list(prompts), "messages": list(prompts.values())}, schema=PROMPTS_ARROW_SCHEMA
    )
    if create:
        ensure_table(store)
    statements = [
        *store.upsert_sql(PROMPTS_TABLE, "_llm_prompts", "prompt_hash", ("prompt_hash", "messages"), replace=False),
        *store.upsert_sql(TABLE, "_llm_rows", "call_id", COLUMNS, replace=True),
    ]

    def work(con) -> None:
        con.register("_llm_rows", table)
        con.register("_llm_prompts", prompt_table)
        try:
            for statement in statements:
                con.execute(statement)
        finally:
            con.unregister("_llm_rows")
            con.unregister("_llm_prompts")

    store.transaction(work, guard=TABLE, what=f"{len(latest)} rows of {SCHEMA}.{TABLE}")


_STOP = object()


FLUSH_EVERY = 256
FLUSH_INTERVAL_S = 1.0


class CacheWriter:
    """Writes rows from a background thread: a row is in the file at most ``flush_interval_s`` after
    it arrived, or as soon as ``flush_every`` rows wait.

    A flush takes everything queued at that moment (so a busy endpoint writes bigger batches, never
    a backlog of tiny ones). Each flush is one short locked transaction, which costs tens of
    milliseconds of CPU whatever its size (opening the file, the checkpoint on close), hence the
    time-driven default rather than a small row count. :meth:`close` flushes the rest and re-raises
    a write failure.
    """

    def __init__(self, store: BaseStore, *, flush_every: int = FLUSH_EVERY, flush_interval_s: float = FLUSH_INTERVAL_S):
        self.store = store
        self.flush_every = flush_every
        self.flush_interval_s = flush_interval_s
        self.rows_written = 0
        self.flushes = 0
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="orion-llm-cache-writer", daemon=True)
        self._thread.start()

    def put(self, row: Mapping[str, Any]) -> None:
        if self._error is not None:
            raise RuntimeError(f"the LLM call cache writer failed: {self._error}") from self._error
        self._queue.put(row)

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"the LLM call cache writer failed: {self._error}") from self._error

    def _run(self) -> None:
        pending: list[Mapping[str, Any]] = []
        first_at = 0.0
        stopping = False
        while not stopping:
            timeout = None if not pending else max(0.0, first_at + self.flush_interval_s - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            while item is not None:
                if item is _STOP:
                    stopping = True
                    break
                if not pending:
                    first_at = time.monotonic()
                pending.append(item)  # type: ignore[arg-type]
                if len(pending) >= self.flush_every:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            due = pending and (
                stopping or len(pending) >= self.flush_every or time.monotonic() - first_at >= self.flush_interval_s
            )
            if due:
                # Take whatever else arrived meanwhile, unless we are stopping (then it is all here).
                while not stopping:
                    try:
                        extra = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if extra is _STOP:
                        stopping = True
                        break
                    pending.append(extra)  # type: ignore[arg-type]
                try:
                    write_rows(self.store, pending, create=self.flushes == 0)
                except BaseException as exc:  # noqa: BLE001 - reported by close()/put()
                    log.error("writing %d LLM call rows failed: %s", len(pending), exc)
                    self._error = exc
                    return
                self.rows_written += len(pending)
                self.flushes += 1
                pending = []
