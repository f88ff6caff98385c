"""Content ids: row ids, config hashes and model fingerprints, the same across runs and machines."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

_FINGERPRINT_CHUNK = 1 << 20


def content_id(*parts: object, length: int = 16) -> str:
    """A stable content hash for row ids: same content, same id, across runs and machines."""
    payload = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:length]


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes, read in blocks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def sha256_json(obj: Any) -> str:
    """sha256 (hex) of ``obj`` as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def model_fingerprint(path: str | os.PathLike) -> str:
    """A cheap content fingerprint of a model directory (16 hex chars): every top-level file's name and size,
    small files whole and large ones (weights) by their first and last MiB.  A retrained checkpoint at the same
    path, even with weight files of the same size, gets a new fingerprint.  Only top-level files count (what
    ``from_pretrained`` reads, not ``checkpoint-*/`` folders written later).  A path that is not a directory (a
    Hub id) is fingerprinted by its name."""
    root = Path(path)
    digest = hashlib.sha256()
    if not root.is_dir():
        digest.update(f"not-a-directory\0{path}".encode())
        return digest.hexdigest()[:16]
    for file in sorted(p for p in root.iterdir() if p.is_file()):
        size = file.stat().st_size
        digest.update(f"{file.name}\0{size}\0".encode())
        with file.open("rb") as handle:
            if size <= 2 * _FINGERPRINT_CHUNK:
                digest.update(handle.read())
            else:
                digest.update(handle.read(_FINGERPRINT_CHUNK))
                handle.seek(size - _FINGERPRINT_CHUNK)
                digest.update(handle.read(_FINGERPRINT_CHUNK))
    return digest.hexdigest()[:16]
