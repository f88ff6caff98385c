"""How a DuckLake is reached: its ``[store] catalog`` setting parsed, its DuckDB extensions found in
their PyPI wheels (pinned to the installed DuckDB; nothing is downloaded), and its secrets (catalog
password, S3 key) created from the environment variables the profile names, never from the profile.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb

from orion_assets.store.base import sql_quote

#: The extension each wheel ships (``<module>/extensions/v<duckdb version>/<name>.duckdb_extension``).
EXTENSION_WHEELS: dict[str, str] = {
    "ducklake": "duckdb-extension-ducklake",
    # The -scanner wheels: "duckdb-extension-postgres" ships the binary as postgres.duckdb_extension,
    # whose entry point (postgres_scanner) does not match the file name, so LOAD fails.
    "postgres_scanner": "duckdb-extension-postgres-scanner",
    "sqlite_scanner": "duckdb-extension-sqlite-scanner",
    "httpfs": "duckdb-extension-httpfs",
}


class StoreError(RuntimeError):
    """A DuckLake store that cannot be opened as configured (the message says what to change)."""


@dataclass(frozen=True)
class S3Settings:
    """Where the S3 data path's endpoint is and which environment variables hold its key."""

    endpoint: str | None = None
    region: str | None = None
    url_style: str | None = None
    use_ssl: bool = True
    key_id_env: str | None = None
    secret_env: str | None = None


def extension_path(name: str) -> Path:
    """The file of DuckDB extension ``name`` in its PyPI wheel, checked against DuckDB's version."""
    dist = EXTENSION_WHEELS[name]
    wanted = duckdb.__version__
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        raise StoreError(f"the DuckDB extension {name} is not installed: pip install {dist}=={wanted}") from None
    if version != wanted:
        raise StoreError(
            f"{dist} {version} does not match duckdb {wanted}: a DuckDB extension loads only into the version "
            f"it was built for; pip install {dist}=={wanted} (or duckdb=={version})"
        )
    spec = importlib.util.find_spec(dist.replace("-", "_"))
    base = Path(spec.origin).parent if spec is not None and spec.origin else None
    path = base / "extensions" / f"v{wanted}" / f"{name}.duckdb_extension" if base else None
    if path is None or not path.is_file():
        raise StoreError(f"{dist} {version} has no {name}.duckdb_extension for DuckDB v{wanted} (looked at {path})")
    return path


def parse_catalog(catalog: str, base: Path | None = None) -> tuple[str, str]:
    """(kind, location) of a catalog setting: ("postgres", libpq string), ("sqlite", file) or
    ("duckdb", file); a relative file is relative to ``base`` (default: the working directory)."""
    text = catalog.strip()
    if text.startswith("ducklake:"):
        text = text[len("ducklake:"):]
    if not text:
        raise StoreError("[store] catalog is empty: a postgres: connection string or a catalog file")
    if text.startswith(("postgres:", "postgresql:")):
        dsn = text.split(":", 1)[1]
        if re.search(r"(?i)\bpassword\s*=", dsn) or re.search(r"//[^/@\s]*:[^/@\s]*@", dsn):
            raise StoreError(
                "[store] catalog holds a password: put it in an environment variable and name that "
                "variable in [store] catalog_password_env"
            )
        return "postgres", f"postgres:{dsn}"
    kind = "sqlite" if text.startswith("sqlite:") else "duckdb"
    text = text.removeprefix("sqlite:").removeprefix("duckdb:")
    return kind, str(((base or Path.cwd()) / Path(text).expanduser()).resolve())


def create_secrets(con: duckdb.DuckDBPyConnection, *, catalog_password_env: str | None,
                   s3_data_path: str | None, s3: S3Settings | None) -> None:
    """The catalog password and (for an ``s3_data_path``) the S3 key, from the environment, as
    TEMPORARY secrets of ``con``'s instance. A failure names the variables, never the values (a
    parser error would quote them)."""
    if catalog_password_env:
        password = _env(catalog_password_env, "the catalog password ([store] catalog_password_env)")
        _secret(con, f"CREATE TEMPORARY SECRET (TYPE postgres, PASSWORD '{sql_quote(password)}')",
                f"the Postgres catalog password from ${catalog_password_env}")
    if s3_data_path is None:
        return
    s3 = s3 or S3Settings()
    parts = ["TYPE s3", f"SCOPE '{sql_quote(s3_data_path)}'"]
    if (s3.key_id_env is None) != (s3.secret_env is None):
        raise StoreError("[store] s3_key_id_env and s3_secret_env go together: name both variables or neither")
    if s3.key_id_env and s3.secret_env:
        key_id = _env(s3.key_id_env, "the S3 key id ([store] s3_key_id_env)")
        secret = _env(s3.secret_env, "the S3 secret key ([store] s3_secret_env)")
        parts += [f"KEY_ID '{sql_quote(key_id)}'", f"SECRET '{sql_quote(secret)}'"]
    if s3.region:
        parts.append(f"REGION '{sql_quote(s3.region)}'")
    if s3.endpoint:
        parts.append(f"ENDPOINT '{sql_quote(s3.endpoint)}'")
    if s3.url_style:
        parts.append(f"URL_STYLE '{sql_quote(s3.url_style)}'")
    parts.append(f"USE_SSL {'true' if s3.use_ssl else 'false'}")
    names = " and ".join(f"${n}" for n in (s3.key_id_env, s3.secret_env) if n) or "no key (anonymous)"
    _secret(con, f"CREATE TEMPORARY SECRET orion_s3 ({', '.join(parts)})", f"the S3 secret from {names}")


def _env(name: str, what: str) -> str:
    value = os.environ.get(name)
    if value is None:
        raise StoreError(f"{what}: the environment variable {name} is not set")
    return value


def _secret(con: duckdb.DuckDBPyConnection, statement: str, what: str) -> None:
    try:
        con.execute(statement)
    except duckdb.Error as exc:
        raise StoreError(f"could not create {what} ({type(exc).__name__})") from None
