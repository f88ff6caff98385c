"""Profiles: TOML files that hold every knob of a pipeline run.

A profile is a shipped name (``tiny``, ``paper``) or a path. ``extends`` names a parent (a shipped
name or a path relative to the extending file); tables merge key by key, everything else is
replaced. The merged document is validated against :class:`OrionConfig`, which refuses unknown
keys, backends and benchmarks with a message that names them.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from orion_assets.profiles.schema import OrionConfig

SHIPPED_DIR = Path(__file__).resolve().parent
DEFAULT_PROFILE = "arithmetic"  # a real model learns a real task; `tiny` is the fast profile of the tests


class ProfileError(ValueError):
    """A profile that cannot be loaded; the message names the file and the offending key."""


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    config: OrionConfig

    @property
    def hash(self) -> str:
        """Content hash of the resolved configuration (not of the file text), less ``[store]`` and
        ``[tracking]``: where the tables and the curves go changes no result, so moving them keeps the hash."""
        canonical = json.dumps(self.config.model_dump(mode="json", exclude={"store", "tracking"}), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def shipped_profiles() -> list[str]:
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.toml"))


def _resolve(ref: str, relative_to: Path | None) -> Path:
    if (SHIPPED_DIR / f"{ref}.toml").is_file() and "/" not in ref and not ref.endswith(".toml"):
        return SHIPPED_DIR / f"{ref}.toml"
    path = Path(ref).expanduser()
    if not path.is_absolute() and relative_to is not None:
        path = relative_to.parent / path
    if not path.is_file():
        raise ProfileError(
            f"profile {ref!r} not found: not a shipped profile ({', '.join(shipped_profiles())}) "
            f"and no file at {path}"
        )
    return path.resolve()


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_document(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ProfileError(f"profile extends itself: {cycle}")
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile {path}: invalid TOML: {exc}") from exc
    parent_ref = document.pop("extends", None)
    if parent_ref is None:
        return document
    if not isinstance(parent_ref, str):
        raise ProfileError(f"profile {path}: 'extends' must be a profile name or path")
    parent = _read_document(_resolve(parent_ref, path), (*chain, path))
    return _merge(parent, document)


def _section_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the schema allows where ``loc`` points (its last part is the offending key)."""
    model: Any = OrionConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue  # a list item: the list's element model was taken already
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = _model_of(field.annotation)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _model_of(annotation: Any) -> Any:
    """The pydantic model inside ``X``, ``X | None`` or ``list[X]`` (None when there is none)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        return f"unknown key '{where}'" + _did_you_mean(str(error["loc"][-1]), _section_keys(tuple(error["loc"])))
    if kind in {"literal_error", "enum"}:
        expected = error.get("ctx", {}).get("expected", "")
        hint = _did_you_mean(str(value), re.findall(r"'([^']*)'", expected)) if isinstance(value, str) else ""
        return f"unknown value {value!r} for '{where}' (expected {expected}){hint}"
    if not error["loc"] and kind == "value_error":  # a rule across sections: its message names the keys
        return str(error.get("ctx", {}).get("error", error["msg"]))
    if kind == "secret_in_setting":  # never echo the value: it holds a secret
        return f"'{where}': {error['msg']}"
    return f"'{where}': {error['msg']} (got {value!r})"


def validate(document: dict[str, Any], source: str) -> OrionConfig:
    try:
        return OrionConfig.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ProfileError(f"profile {source}: {problems}") from None


def load_profile(ref: str | None = None) -> Profile:
    """Load ``ref`` (a shipped name or a path); ``None`` reads ``ORION_PROFILE`` (default tiny)."""
    ref = ref or os.environ.get("ORION_PROFILE") or DEFAULT_PROFILE
    path = _resolve(ref, None)
    config = validate(_read_document(path), str(path))
    name = path.stem if path.parent == SHIPPED_DIR else str(path)
    return Profile(name=name, path=path, config=config)
