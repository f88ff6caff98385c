"""Real services, started on demand: a Postgres server (Debian's ``postgresql``: ``initdb`` and
``pg_ctl`` in a temporary folder, on a free loopback port) and an S3 endpoint (``moto`` in server mode,
on a free loopback port, with one bucket). No mocks: DuckDB's postgres and httpfs extensions talk
to them over TCP.

:func:`postgres` and :func:`moto_s3` are plain context managers (the benchmarks use them, and get a
plain :class:`ServiceError` when a service is missing); the session fixtures at the end give the
tests one of each per xdist worker, and skip, with the reason, only when Postgres is not installed
(``.ci/run`` installs it). The tests' Postgres trades durability for speed (``durable=False``); a
benchmark's commits are durable, as a deployment's are, so the catalog's commit cost is in its
numbers.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orion_assets.serving.managed_server import free_port

PG_USER = "postgres"  # the superuser initdb creates, and the OS user that runs it when we are root
# The one role that must give a password (scram-sha-256); every other connection is trusted.
PASSWORD_ROLE = "orion_pw"


class ServiceError(RuntimeError):
    """A service that is not installed or did not start (the message says which and why)."""


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"the server exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise ServiceError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f}s")


def postgres_bin() -> Path | None:
    """The folder of ``initdb``/``pg_ctl``: the newest /usr/lib/postgresql/N/bin, else the PATH's."""
    folders = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    folders.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    for folder in folders:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    return None


@dataclass
class PgServer:
    """A running server; ``dsn(db)`` is a libpq string (no password: local connections are trusted)."""

    bin: Path
    port: int
    root: Path
    run_as: str | None
    durable: bool

    def dsn(self, database: str) -> str:
        return f"dbname={database} host=127.0.0.1 port={self.port} user={PG_USER}"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        kwargs: dict = {"user": self.run_as} if self.run_as else {}
        env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(self.port), "PGUSER": PG_USER}
        return subprocess.run(list(args), capture_output=True, text=True, check=check, env=env, cwd=self.root,
                              timeout=120, **kwargs)

    def new_database(self, prefix: str = "lake") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.run(str(self.bin / "createdb"), name)
        return name

    def sql(self, database: str, statement: str) -> str:
        return self.run(str(self.bin / "psql"), "-X", "-A", "-t", "-d", database, "-c", statement).stdout.strip()

    def version(self) -> str:
        return self.sql("postgres", "SHOW server_version")

    def password_database(self, password: str) -> tuple[str, str]:
        """A fresh database owned by :data:`PASSWORD_ROLE`, who must log in with ``password``:
        (database, the libpq string without the password)."""
        database = self.new_database("pw")
        quoted = password.replace("'", "''")
        self.sql(database, f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{PASSWORD_ROLE}') "
                           f"THEN CREATE ROLE {PASSWORD_ROLE} LOGIN; END IF; END$$")
        self.sql(database, f"ALTER ROLE {PASSWORD_ROLE} PASSWORD '{quoted}'")
        self.sql(database, f"ALTER DATABASE {database} OWNER TO {PASSWORD_ROLE}")
        return database, f"dbname={database} host=127.0.0.1 port={self.port} user={PASSWORD_ROLE}"


@contextlib.contextmanager
def postgres(durable: bool = True) -> Iterator[PgServer]:
    """``initdb`` in a temporary folder and ``pg_ctl start`` on a free loopback port; stopped and
    removed on exit. As root, the server runs as the ``postgres`` user (initdb refuses root)."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise ServiceError("Postgres is not installed (no initdb/pg_ctl in /usr/lib/postgresql/*/bin or on PATH): "
                           "apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="orion-pg-"))
    run_as = None
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam(PG_USER)
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            raise ServiceError(f"running as root and there is no '{PG_USER}' user to run initdb as") from None
        os.chown(root, account.pw_uid, account.pw_gid)
        run_as = PG_USER
    server = PgServer(bin=bin_dir, port=free_port(), root=root, run_as=run_as, durable=durable)
    data = root / "data"
    try:
        server.run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", PG_USER, "-E", "UTF8",
                   "--no-instructions", *([] if durable else ["--no-sync"]))
        hba = data / "pg_hba.conf"  # first match wins: the password role's line goes first
        hba.write_text(f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        options = f"-c listen_addresses=127.0.0.1 -p {server.port} -k {root} -c max_connections=200"
        if not durable:
            options += " -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        started = server.run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
                             "-o", options, "-w", "-t", "60", "start", check=False)
        if started.returncode != 0:
            log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
            raise ServiceError(f"pg_ctl start failed: {started.stdout}{started.stderr}{log[-2000:]}")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield server
    finally:
        server.run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class MotoS3:
    """A moto S3 endpoint with one bucket. The credentials are moto's fakes, not secrets."""

    port: int
    bucket: str
    key_id: str = "orion-test-key-id"
    secret: str = "orion-test-secret-key"
    region: str = "us-east-1"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=f"http://{self.endpoint}", aws_access_key_id=self.key_id,
                            aws_secret_access_key=self.secret, region_name=self.region)

    def new_prefix(self, name: str = "lake") -> str:
        return f"s3://{self.bucket}/{name}-{uuid.uuid4().hex[:10]}/"

    def key_env(self) -> dict[str, str]:
        """The environment a lake of :func:`lake_store_section` reads its S3 key from."""
        return {LAKE_KEY_ENV: self.key_id, LAKE_SECRET_ENV: self.secret}

    def keys(self, prefix: str) -> list[str]:
        path = prefix.removeprefix(f"s3://{self.bucket}/")
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=path)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def bytes_under(self, prefix: str) -> int:
        path = prefix.removeprefix(f"s3://{self.bucket}/")
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=path)
        return sum(item["Size"] for page in pages for item in page.get("Contents", []))

    def delete_under(self, prefix: str) -> None:
        client = self.client()
        path = prefix.removeprefix(f"s3://{self.bucket}/")
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=path):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})


@contextlib.contextmanager
def moto_s3() -> Iterator[MotoS3]:
    """``python -m moto.server`` on a free loopback port, with one bucket; terminated on exit."""
    port = free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, 60, proc)
        s3 = MotoS3(port=port, bucket="orion-lake")
        s3.client().create_bucket(Bucket=s3.bucket)
        yield s3
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# The variables a test lake's profile names for moto's (fake) S3 key; set them with ``MotoS3.key_env()``.
LAKE_KEY_ENV, LAKE_SECRET_ENV = "ORION_TEST_S3_KEY_ID", "ORION_TEST_S3_SECRET"


def lake_store_section(pg: PgServer, s3: MotoS3) -> str:
    """A profile's ``[store]`` section for a fresh DuckLake: its catalog in a new database of ``pg``,
    its Parquet under a new prefix of ``s3``, the key named by the two variables above."""
    return f"""
[store]
backend = "ducklake"
catalog = "postgres:{pg.dsn(pg.new_database("lake"))}"
data_path = "{s3.new_prefix()}"
s3_endpoint = "{s3.endpoint}"
s3_region = "{s3.region}"
s3_url_style = "path"
s3_use_ssl = false
s3_key_id_env = "{LAKE_KEY_ENV}"
s3_secret_env = "{LAKE_SECRET_ENV}"
"""


@pytest.fixture(scope="session")
def postgres_service() -> Iterator[PgServer]:
    """A Postgres server for the whole session (skipped only when Postgres is not installed)."""
    if postgres_bin() is None:
        pytest.skip("Postgres is not installed (no initdb/pg_ctl in /usr/lib/postgresql/*/bin or on PATH): "
                    "apt-get install postgresql (.ci/run does)")
    with postgres(durable=False) as server:
        yield server


@pytest.fixture(scope="session")
def s3_service() -> Iterator[MotoS3]:
    """A moto S3 server with one bucket, for the whole session."""
    with moto_s3() as s3:
        yield s3
