"""Real services for the DuckLake tests, started once per test session (per xdist worker that uses
them): a Postgres server (Debian's ``postgresql``: ``initdb`` and ``pg_ctl`` in a temporary folder,
on a free loopback port) and an S3 endpoint (``moto`` in server mode, on a free loopback port, with
one bucket). No mocks: DuckDB's postgres and httpfs extensions talk to them over TCP.

Postgres is skipped, with the reason, only when its binaries are not installed; ``.ci/run``
installs them.
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

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
PG_USER = "postgres"  # the superuser initdb creates (-U), and the OS user that runs it as root
# The one role that must give a password (scram-sha-256); every other connection is trusted.
PASSWORD_ROLE = "orion_pw"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f}s")


def postgres_bin() -> Path | None:
    """The folder of ``initdb``/``pg_ctl``: the newest /usr/lib/postgresql/N/bin, else the PATH's."""
    candidates = sorted(glob.glob(PG_BIN_GLOB), key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    for folder in reversed(candidates):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    return None


@dataclass
class Postgres:
    """A running server: ``dsn(db)`` is the libpq string of one of its databases."""

    bin: Path
    port: int
    root: Path
    run_as: str | None

    def dsn(self, database: str) -> str:
        return f"dbname={database} host=127.0.0.1 port={self.port} user={PG_USER}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        kwargs: dict = {"user": self.run_as} if self.run_as else {}
        env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(self.port), "PGUSER": PG_USER}
        return subprocess.run(list(args), capture_output=True, text=True, check=check, env=env, cwd=self.root,
                              timeout=120, **kwargs)

    def new_database(self, prefix: str = "lake") -> str:
        """A fresh, empty database (each test's lake gets its own)."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self._run(str(self.bin / "createdb"), name)
        return name

    def sql(self, database: str, statement: str) -> str:
        return self._run(str(self.bin / "psql"), "-X", "-A", "-t", "-d", database, "-c", statement).stdout

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


def _start_postgres() -> Iterator[Postgres]:
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("Postgres is not installed (no initdb/pg_ctl in /usr/lib/postgresql/*/bin or on PATH): "
                    "apt-get install postgresql (.ci/run does)")
    run_as = None
    root = Path(tempfile.mkdtemp(prefix="orion-pg-"))  # under /tmp: a pytest tmp folder is 0700 root's
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            account = pwd.getpwnam(PG_USER)
        except KeyError:
            pytest.skip(f"running as root and there is no '{PG_USER}' user to run initdb as")
        os.chown(root, account.pw_uid, account.pw_gid)
        run_as = PG_USER
    port = free_port()
    server = Postgres(bin=bin_dir, port=port, root=root, run_as=run_as)
    data = root / "data"
    server._run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", PG_USER, "-E", "UTF8",
                "--no-sync", "--no-instructions")
    hba = data / "pg_hba.conf"  # first match wins: the password role's line goes first
    hba.write_text(f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c full_page_writes=off " \
              "-c synchronous_commit=off -c max_connections=200"
    started = server._run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
                          "-o", options, "-w", "-t", "60", "start", check=False)
    if started.returncode != 0:
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"pg_ctl start failed: {started.stdout}{started.stderr}{log[-2000:]}")
    try:
        yield server
    finally:
        server._run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class S3:
    """A moto S3 endpoint with one bucket; ``key_id``/``secret`` are the (fake) credentials."""

    port: int
    bucket: str
    key_id: str = "orion-test-key-id"
    secret: str = "orion-test-secret-key"
    region: str = "us-east-1"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def new_prefix(self, name: str = "lake") -> str:
        return f"s3://{self.bucket}/{name}-{uuid.uuid4().hex[:10]}/"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=f"http://{self.endpoint}", aws_access_key_id=self.key_id,
                            aws_secret_access_key=self.secret, region_name=self.region)

    def keys(self, prefix: str) -> list[str]:
        path = prefix.removeprefix(f"s3://{self.bucket}/")
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=path)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _start_moto() -> Iterator[S3]:
    port = free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_port(port, 60, proc)
        s3 = S3(port=port, bucket="orion-lake")
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


@pytest.fixture(scope="session")
def postgres_service() -> Iterator[Postgres]:
    """A Postgres server for the whole session (skipped only when Postgres is not installed)."""
    yield from _start_postgres()


@pytest.fixture(scope="session")
def s3_service() -> Iterator[S3]:
    """A moto S3 server with one bucket, for the whole session."""
    yield from _start_moto()
