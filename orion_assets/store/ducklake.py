"""The DuckLake store (``[store] backend = "ducklake"``): the same ``orion`` tables, catalog in
Postgres, SQLite or a DuckDB file, rows as Parquet in a folder or S3, with many writers and no lock.
Every write is one transaction that bumps a guard row of what it writes, so concurrent writers of the
same rows conflict and retry; docs/store.md says how, and how instances and secrets are kept.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from orion_assets.profiles.schema import StoreConfig
from orion_assets.store.base import CATALOG, MATERIALIZATIONS_DDL, SCHEMA, TABLE_PARENTS_DDL, BaseStore, T, has_table, sql_quote
from orion_assets.store.ducklake_catalog import EXTENSION_WHEELS, S3Settings, StoreError, create_secrets, extension_path, parse_catalog
from orion_assets.store.lock import LOCK_TIMEOUT_S, file_lock
from orion_assets.store.vocabulary import vocabulary_statements

__all__ = [
    "DEFAULT_RETRIES", "EXTENSION_WHEELS", "GUARD_SCHEMA", "DuckLakeStore", "S3Settings", "StoreConflict", "StoreError",
    "StoreMissing", "close_all", "extension_path", "is_conflict",
]

GUARD_SCHEMA = "orion_guards"
DEFAULT_RETRIES = 10
RETRY_WAIT_S = 0.1  # the backoff's unit: retry n waits up to 2**n of it (at most RETRY_WAIT_MAX_S), jittered
RETRY_WAIT_MAX_S = 5.0


class StoreMissing(FileNotFoundError):
    """A read of a lake that was never written (no catalog yet)."""


class StoreConflict(RuntimeError):
    """A write that kept conflicting with other writers' commits after every retry."""


@dataclass
class _Lease:
    """A DuckDB-file catalog, attached in this process while any of its threads uses it, with the
    sidecar file lock held for as long (the DuckDB instance, extensions loaded, stays)."""

    instance: duckdb.DuckDBPyConnection | None = None
    holders: int = 0
    read_only: bool = True
    lock: AbstractContextManager | None = None
    changed: threading.Condition = field(default_factory=threading.Condition)


# This process's instances (Postgres and SQLite catalogs: attached once) and leases (DuckDB-file
# catalogs), by process id and lake: a forked child opens its own.
_INSTANCES: dict[tuple, duckdb.DuckDBPyConnection] = {}
_LEASES: dict[tuple, _Lease] = {}
_INSTANCES_LOCK = threading.Lock()


class DuckLakeStore(BaseStore):
    """The ``orion`` tables in a DuckLake: ``catalog`` is a ``postgres:`` libpq connection string,
    ``sqlite:<file>`` or a DuckDB catalog file (``[duckdb:]<file>``); ``data_path`` a folder or
    ``s3://bucket/prefix/`` (None: the path the lake was created with). Relative files are relative
    to ``base`` (default: the working directory)."""

    def __init__(
        self,
        catalog: str,
        data_path: str | Path | None = None,
        *,
        s3: S3Settings | None = None,
        catalog_password_env: str | None = None,
        retries: int = DEFAULT_RETRIES,
        retry_wait_s: float = RETRY_WAIT_S,
        lock_timeout_s: float = LOCK_TIMEOUT_S,
        base: str | Path | None = None,
    ):
        base = Path(base).expanduser() if base is not None else Path.cwd()
        self.kind, self.catalog = parse_catalog(catalog, base)
        if data_path is not None:
            data_path = str(data_path)
            if not data_path.startswith("s3://"):
                data_path = str((base / Path(data_path).expanduser()).resolve())
            data_path = data_path.rstrip("/") + "/"
        self.data_path: str | None = data_path
        self.s3 = s3 if s3 is not None else (S3Settings() if self.on_s3 else None)
        self.catalog_password_env = catalog_password_env
        self.retries = retries
        self.retry_wait_s = retry_wait_s
        self.lock_timeout_s = lock_timeout_s
        #: Attempts the last :meth:`transaction` of this object took (1: no conflict).
        self.last_attempts = 0

    @classmethod
    def from_settings(cls, settings: StoreConfig, data_dir: str | Path) -> DuckLakeStore:
        """The lake of a profile's ``[store]`` section; local paths are relative to ``data_dir``."""
        s3 = S3Settings(
            endpoint=settings.s3_endpoint,
            region=settings.s3_region,
            url_style=settings.s3_url_style,
            use_ssl=settings.s3_use_ssl,
            key_id_env=settings.s3_key_id_env,
            secret_env=settings.s3_secret_env,
        )
        return cls(settings.catalog or "", settings.data_path, s3=s3, catalog_password_env=settings.catalog_password_env,
                   retries=settings.commit_retries, base=data_dir)

    # -- where -----------------------------------------------------------------------------------

    @property
    def on_s3(self) -> bool:
        return bool(self.data_path and self.data_path.startswith("s3://"))

    @property
    def attach_target(self) -> str:
        return f"ducklake:sqlite:{self.catalog}" if self.kind == "sqlite" else f"ducklake:{self.catalog}"

    @property
    def location(self) -> str:
        data = self.data_path or "the data path recorded in the catalog"
        return f"{self.attach_target} (data {data})"

    def __repr__(self) -> str:
        return f"DuckLakeStore({self.location!r})"

    @property
    def shared(self) -> bool:
        """Whether several processes may hold the catalog open at once (Postgres, SQLite)."""
        return self.kind != "duckdb"

    @property
    def lock_path(self) -> Path:
        return Path(self.catalog).with_name(Path(self.catalog).name + ".lock")

    def exists(self) -> bool:
        if self.kind != "postgres":
            return Path(self.catalog).exists()
        try:
            self._instance(read_only=True)
        except StoreMissing:
            return False
        return True

    # -- connections -------------------------------------------------------------------------------

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor whose current catalog is the lake (``read_only``: attached READ_ONLY, unless this
        process has it attached for writing already)."""
        if self.shared:
            cursor = self._instance(read_only).cursor()
        else:
            lease = self._take_lease(read_only)
            cursor = None
        try:
            if cursor is None:
                cursor = lease.instance.cursor()
            cursor.execute(f"USE {CATALOG}")
            yield cursor
        finally:
            if cursor is not None:
                cursor.close()
            if not self.shared:
                self._return_lease(lease)

    def _key(self, read_only: bool) -> tuple:
        return (os.getpid(), self.attach_target, self.data_path, self.s3, self.catalog_password_env, read_only)

    def _instance(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        """This process's DuckDB instance with the lake attached (a writable one serves reads too)."""
        with _INSTANCES_LOCK:
            instance = _INSTANCES.get(self._key(False))
            if instance is None and read_only:
                instance = _INSTANCES.get(self._key(True))
            if instance is None:
                instance = self._new_instance()
                try:
                    self._attach(instance, read_only)
                except BaseException:
                    instance.close()
                    raise
                _INSTANCES[self._key(read_only)] = instance
            return instance

    def _take_lease(self, read_only: bool) -> _Lease:
        """A DuckDB-file catalog: attach it (taking the file lock) unless this process holds it
        attached already in a mode that serves ``read_only``."""
        with _INSTANCES_LOCK:
            lease = _LEASES.setdefault(self._key(False), _Lease())
        with lease.changed:
            while lease.holders and lease.read_only and not read_only:
                lease.changed.wait()  # a writer waits for this process's readers to finish
            if lease.holders == 0:
                if read_only and not Path(self.catalog).exists():
                    raise StoreMissing(f"no DuckLake catalog at {self.catalog}: materialize some assets first")
                lock = file_lock(self.lock_path, exclusive=not read_only, timeout_s=self.lock_timeout_s)
                lock.__enter__()
                try:
                    if lease.instance is None:
                        lease.instance = self._new_instance()
                    self._attach(lease.instance, read_only)
                except BaseException:
                    if lease.instance is not None:  # attached, but its bookkeeping failed
                        _detach(lease.instance)
                    lock.__exit__(None, None, None)
                    raise
                lease.lock, lease.read_only = lock, read_only
            lease.holders += 1
            return lease

    def _return_lease(self, lease: _Lease) -> None:
        with lease.changed:
            lease.holders -= 1
            if lease.holders:
                return
            try:
                _detach(lease.instance)
            finally:
                lock, lease.lock = lease.lock, None
                lock.__exit__(None, None, None)
                lease.changed.notify_all()

    def close(self) -> None:
        """Close this process's instances of this lake (the next connection opens a new one)."""
        with _INSTANCES_LOCK:
            for read_only in (False, True):
                instance = _INSTANCES.pop(self._key(read_only), None)
                if instance is not None:
                    instance.close()
            lease = _LEASES.pop(self._key(False), None)
        if lease is not None and lease.instance is not None and not lease.holders:
            lease.instance.close()

    def _new_instance(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB with the lake's extensions (from their wheels) and secrets."""
        con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
        try:
            names = ["ducklake"]
            names += {"postgres": ["postgres_scanner"], "sqlite": ["sqlite_scanner"]}.get(self.kind, [])
            names += ["httpfs"] if self.on_s3 else []
            for name in names:
                con.execute(f"LOAD '{sql_quote(extension_path(name))}'")
            create_secrets(con, catalog_password_env=self.catalog_password_env,
                           s3_data_path=self.data_path if self.on_s3 else None, s3=self.s3)
            return con
        except BaseException:
            con.close()
            raise

    def _attach(self, con: duckdb.DuckDBPyConnection, read_only: bool) -> None:
        options = []
        if self.data_path is not None:
            options.append(f"DATA_PATH '{sql_quote(self.data_path)}'")
            if not self.on_s3 and not read_only:
                Path(self.data_path).mkdir(parents=True, exist_ok=True)
        if read_only:
            options.append("READ_ONLY")
        if self.kind != "postgres" and not read_only:
            Path(self.catalog).parent.mkdir(parents=True, exist_ok=True)
        clause = f" ({', '.join(options)})" if options else ""
        for attempt in range(self.retries + 1):
            try:
                con.execute(f"ATTACH '{sql_quote(self.attach_target)}' AS {CATALOG}{clause}")
                break
            except duckdb.Error as exc:
                if read_only and "does not exist" in str(exc):
                    raise StoreMissing(f"no DuckLake at {self.location}: materialize some assets first") from None
                # Two processes that attach a new lake at once both create its catalog tables; the
                # one that loses (its catalog transaction rolled back) attaches the lake made.
                if read_only or "initialize ducklake" not in str(exc).lower() or attempt == self.retries:
                    raise
                with contextlib.suppress(duckdb.Error):
                    _detach(con)
                time.sleep(self._backoff(attempt))
        con.execute(f"USE {CATALOG}")
        if not read_only:
            self._with_retries(_create_bookkeeping, con, what=f"creating the bookkeeping tables of {self.location}")

    # -- writes ------------------------------------------------------------------------------------

    def transaction(
        self, work: Callable[[duckdb.DuckDBPyConnection], T], *, guard: str | None = None, what: str = "a write"
    ) -> T:
        """``work`` in one transaction that also bumps the guard of table ``guard``; a conflict with
        another writer's commit rolls it back and runs it again, up to ``retries`` times."""

        def attempt(con: duckdb.DuckDBPyConnection) -> T:
            con.execute("BEGIN TRANSACTION")
            try:
                if guard is not None:
                    _bump_guard(con, guard)
                result = work(con)
                con.execute("COMMIT")
                return result
            except BaseException:
                _rollback(con)
                raise

        return self._with_retries(attempt, None, what=what)

    def _guard(self, con: duckdb.DuckDBPyConnection, name: str) -> None:
        _bump_guard(con, name)

    def _with_retries(self, fn: Callable[[duckdb.DuckDBPyConnection], T], con: duckdb.DuckDBPyConnection | None,
                      *, what: str) -> T:
        """``fn(con)`` (``con`` None: on a new connection each attempt) until it does not conflict."""
        for attempt in range(self.retries + 1):
            self.last_attempts = attempt + 1
            try:
                if con is not None:
                    return fn(con)
                with self.connect() as fresh:
                    return fn(fresh)
            except duckdb.Error as exc:
                if not is_conflict(exc):
                    raise
                if attempt == self.retries:
                    first = str(exc).strip().splitlines()[-1][:300]
                    times = f"{attempt + 1} time" + ("s" if attempt else "")
                    raise StoreConflict(
                        f"{what} in {self.location}: conflicted with other writers' commits {times}, giving "
                        f"up (last: {first}). Raise [store] commit_retries, or run fewer writers of this "
                        f"table at once"
                    ) from exc
            time.sleep(self._backoff(attempt))
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int) -> float:
        """Seconds before retry ``attempt + 1``: exponential, capped, with full jitter (writers that
        conflicted together do not come back together)."""
        return random.uniform(0, min(RETRY_WAIT_MAX_S, self.retry_wait_s * 2 ** (attempt + 1)))


def close_all() -> None:
    """Close every lake this process has open (their Postgres connections with them)."""
    with _INSTANCES_LOCK:
        instances = [v for k, v in _INSTANCES.items() if k[0] == os.getpid()]
        leases = [v for k, v in _LEASES.items() if k[0] == os.getpid()]
        for key in [k for k in _INSTANCES if k[0] == os.getpid()]:
            del _INSTANCES[key]
        for key in [k for k in _LEASES if k[0] == os.getpid()]:
            del _LEASES[key]
    for instance in instances:
        instance.close()
    for lease in leases:
        if lease.instance is not None and not lease.holders:
            lease.instance.close()


def is_conflict(exc: BaseException) -> bool:
    """Whether a DuckDB error is DuckLake refusing a commit for another transaction's changes: a
    logical conflict, or a snapshot id that other writers kept taking until DuckLake's own commit
    retries ran out (the catalog's primary key on ``ducklake_snapshot``; seen with 8 writers).
    Either way nothing was committed, so the transaction can run again."""
    message = str(exc).lower()
    if isinstance(exc, duckdb.TransactionException) and "conflict" in message:
        return True
    return "transaction conflict" in message or (
        "failed to commit" in message and "ducklake_snapshot_pkey" in message)


def _detach(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("USE memory")
    con.execute(f"DETACH DATABASE IF EXISTS {CATALOG}")


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass  # a failed COMMIT has ended the transaction already


def _schema_exists(con: duckdb.DuckDBPyConnection, schema: str) -> bool:
    return bool(con.execute(
        "SELECT count(*) FROM information_schema.schemata WHERE catalog_name = current_database() AND schema_name = ?",
        [schema],
    ).fetchone()[0])


def _create_bookkeeping(con: duckdb.DuckDBPyConnection) -> None:
    """Schema ``orion`` with the materialization log, the lineage links and the vocabulary views, and the
    guards' schema: what is missing (or, for a view, changed), created in one transaction that looks and
    creates on one snapshot (a no-op takes no snapshot; two processes creating them at once conflict, and
    the retry finds them made)."""

    def missing() -> list[str]:
        statements = [f"CREATE SCHEMA IF NOT EXISTS {schema}" for schema in (SCHEMA, GUARD_SCHEMA)
                      if not _schema_exists(con, schema)]
        return statements + [ddl for table, ddl in (("materializations", MATERIALIZATIONS_DDL),
                                                    ("table_parents", TABLE_PARENTS_DDL))
                             if not has_table(con, table)] + vocabulary_statements(con)

    if not missing():
        return
    con.execute("BEGIN TRANSACTION")
    try:
        for statement in missing():
            con.execute(statement)
        con.execute("COMMIT")
    except BaseException:
        _rollback(con)
        raise


def _bump_guard(con: duckdb.DuckDBPyConnection, guard: str) -> None:
    """Update the one row of ``orion_guards.<guard>`` (created on first use), so that this
    transaction conflicts with every concurrent one that takes the same guard."""
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database() "
        "AND table_schema = ? AND table_name = ?",
        [GUARD_SCHEMA, guard],
    ).fetchone()[0]
    if exists:
        con.execute(f'UPDATE {GUARD_SCHEMA}."{guard}" SET writes = writes + 1')
    else:
        con.execute(f'CREATE TABLE {GUARD_SCHEMA}."{guard}" (writes BIGINT)')
        con.execute(f'INSERT INTO {GUARD_SCHEMA}."{guard}" VALUES (1)')
