"""Reading input records (JSONL, JSON arrays, Parquet) with errors that name the file and the row."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

PACKAGE_DATA = Path(__file__).resolve().parent / "data"


class InputError(ValueError):
    """Bad input data; the message names the file, the row and the field."""


def resolve_data_path(path: str, subdir: str = "train") -> Path:
    """``package:<file>`` names a file shipped in ``orion_assets/data/<subdir>``."""
    if path.startswith("package:"):
        return PACKAGE_DATA / subdir / path.removeprefix("package:")
    return Path(path).expanduser().resolve()


def read_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(row_number, record)`` from JSONL, a JSON array, or Parquet (1-based rows).

    A malformed line fails with the file, the line number and the parser's reason.
    """
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        for number, record in enumerate(pl.read_parquet(path).iter_rows(named=True), start=1):
            yield number, record
        return
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: line {exc.lineno}: invalid JSON: {exc.msg}") from None
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
        for number, record in enumerate(data, start=1):
            if not isinstance(record, dict):
                raise InputError(f"{path}: item {number}: expected an object, got {type(record).__name__}")
            yield number, record
        return
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}: line {number}: invalid JSON: {exc.msg} (column {exc.colno})") from None
            if not isinstance(record, dict):
                raise InputError(f"{path}: line {number}: expected a JSON object, got {type(record).__name__}")
            yield number, record
