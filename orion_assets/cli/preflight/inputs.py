"""The preflight checks of what a run reads: the profile's values, the store, the student's weights
and the training data files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from orion_assets.cli.preflight.context import Context
from orion_assets.cli.preflight.net import http_get, why_unreachable
from orion_assets.profiles.schema import EndpointConfig, OrionConfig
from orion_assets.records import resolve_data_path
from orion_assets.training.gguf import GGUFError, locate_gguf


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _show(value: Any, limit: int = 70) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def profile_differences(config: OrionConfig) -> list[tuple[str, Any, Any]]:
    """(key, value, default) of every effective value that differs from ``OrionConfig()``'s."""
    actual = _flatten(config.model_dump(mode="json"))
    defaults = _flatten(OrionConfig().model_dump(mode="json"))
    endpoint_defaults = _flatten(EndpointConfig().model_dump(mode="json"))
    diffs = []
    for key, value in actual.items():
        if key in defaults:
            default = defaults[key]
        elif key.startswith("endpoints.judge."):  # no judge by default: compare with a bare endpoint
            default = endpoint_defaults.get(key.removeprefix("endpoints.judge."))
        else:
            default = None
        if value != default:
            diffs.append((key, value, default))
    return diffs


def check_profile(ctx: Context) -> None:
    diffs = profile_differences(ctx.cfg)
    section = ctx.report.section(
        f"profile {ctx.profile.name} ({ctx.profile.hash}): {len(diffs)} value(s) differ from the defaults"
    )
    for key, value, default in diffs:
        section.add("info", f"{key} = {_show(value)} (default {_show(default)})")


def check_store(ctx: Context) -> None:
    """Open the store the profile names: an unreachable lake catalog, a missing secret variable or
    an extension wheel of another DuckDB version is a problem found here, not in the first write."""
    store = ctx.store()
    section = ctx.report.section(f"store: {ctx.cfg.store.backend}, {store.location}")
    try:
        found = store.exists()
    except Exception as exc:  # noqa: BLE001 - whatever stops it opening is the finding
        ctx.store_ok = False
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        section.add("problem", f"cannot open it: {first[:300]}")
        return
    section.add("ok", "opened" if found else "nothing written yet: the first materialization creates it")


def check_gguf_student(ctx: Context, spec) -> None:
    """A GGUF student: the file is found (in its package, or at its path); student_base_model converts it."""
    where = spec.gguf_path or f"{spec.gguf_file} in package {spec.gguf_package}"
    section = ctx.report.section(f"student model {spec.name}: GGUF {where}")
    try:
        located = locate_gguf(package=spec.gguf_package, file=spec.gguf_file, path=spec.gguf_path)
    except GGUFError as exc:
        section.add("problem", str(exc))
        return
    origin = f"{located.package} {located.version}, " if located.package else ""
    section.add("ok", f"{located.path} ({origin}sha256 {located.sha256[:12]}): student_base_model converts it "
                      "to safetensors once")


def check_student_model(ctx: Context) -> None:
    """Every student's weights ([student_model] or [[students]])."""
    for spec in ctx.cfg.all_students:
        _check_one_student(ctx, spec)


def _check_one_student(ctx: Context, spec) -> None:
    """A student's weights: built, a GGUF file, a local directory, the Hugging Face cache, or the Hub (one GET)."""
    if spec.source == "build_tiny":
        ctx.report.section(f"student model {spec.name}: tiny random Qwen2, built by student_base_model (offline)")
        return
    if spec.source == "gguf":
        check_gguf_student(ctx, spec)
        return
    name = spec.name_or_path
    section = ctx.report.section(f"student model {spec.name}: {name}")
    if not name:
        section.add("problem", "set [student_model] name_or_path (source = 'pretrained' needs it)")
        return
    local = Path(name).expanduser()
    if local.is_dir():
        level = "ok" if (local / "config.json").is_file() else "problem"
        section.add(level, f"local directory {local.resolve()}" + ("" if level == "ok" else " has no config.json"))
        return
    if local.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        section.add("problem", f"no directory at {local} (and not a Hugging Face id)")
        return
    # Deferred: huggingface_hub is only needed for a pretrained student named by its Hub id.
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json", revision=spec.revision)
    if isinstance(cached, str):
        section.add("ok", f"in the Hugging Face cache ({Path(cached).parent})")
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        section.add("problem", f"{name} is not in the Hugging Face cache and HF_HUB_OFFLINE is "
                               f"set: download it first (hf download {name}) or set [student_model] "
                               "name_or_path to a local directory")
        return
    url = f"https://huggingface.co/api/models/{name}"
    try:
        status, _, _ = http_get(url, os.environ.get("HF_TOKEN"), ctx.timeout_s)
    except (OSError, ValueError) as exc:
        section.add("problem", f"{name} is not in the Hugging Face cache and huggingface.co cannot be reached: "
                               f"{why_unreachable(exc, ctx.timeout_s)}")
        return
    if status == 200:
        section.add("ok", "on the Hugging Face Hub: student_base_model downloads it")
    else:
        section.add("problem", f"the Hub answers HTTP {status} for {name} (a typo, or a gated model "
                               "that needs HF_TOKEN?)")


def check_train_sources(ctx: Context) -> None:
    for source in ctx.cfg.data.train_sources:
        if source.path is None:
            continue
        path = resolve_data_path(source.path)
        if not path.is_file():
            ctx.report.section(f"training data {source.name}").add("problem", f"no file at {path}")
