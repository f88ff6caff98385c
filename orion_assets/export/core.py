"""One export: choose the students and variants, refuse the ones the quality gate failed, write the dataset
format and (optionally) the checkpoints into a fresh folder, record what it was made from, then push.

The folder is written beside ``out`` and renamed into place at the end, so a failed export leaves nothing
half-written; ``out`` must be empty, absent, or an earlier export (which is replaced). docs/export.md
describes the layout.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from orion_assets.export import formats, read, weights
from orion_assets.export.cards import dataset_card, hub_base_model, model_card, source_licences
from orion_assets.export.read import ExportError, ExportUsageError
from orion_assets.method.variants import skipped_variants
from orion_assets.profiles import Profile
from orion_assets.store import BaseStore
from orion_assets.vocabulary import BASE_VARIANT, PARTITION_SEPARATOR, VARIANTS

PROVENANCE_FILE = "orion_export.json"
CARD_FILE = "README.md"
TOKEN_ENV = "HF_TOKEN"


@dataclass(frozen=True)
class ExportRequest:
    """What ``orion export`` (or the ``export`` job) was asked for."""

    out: Path
    format: str = "hf"
    students: tuple[str, ...] = ()
    variants: tuple[str, ...] = ()
    checkpoints: bool = False
    merged: bool = False
    push_to_hub: str | None = None
    command: str = "orion export"

    def __post_init__(self) -> None:
        """Refuse a request that cannot be right whatever the store holds (:class:`ExportUsageError`)."""
        if self.format not in formats.FORMATS:
            raise ExportUsageError(f"unknown export format {self.format!r} (known: {', '.join(formats.FORMATS)})")
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown:
            raise ExportUsageError(f"unknown variant(s) {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
        if self.merged and not self.checkpoints:
            raise ExportUsageError("--merged merges the exported checkpoints: add --checkpoints")
        if self.push_to_hub and self.format != "hf":
            raise ExportUsageError(f"--push-to-hub pushes the hf format, not {self.format}: add --format hf")
        self.target()

    def target(self) -> Path:
        """``out`` resolved: a new or empty folder, or an earlier export (which is replaced)."""
        out = Path(self.out).expanduser().resolve()
        if out.exists() and not out.is_dir():
            raise ExportUsageError(f"{out} is a file: --out names a folder")
        if out.exists() and any(out.iterdir()) and not (out / PROVENANCE_FILE).is_file():
            raise ExportUsageError(f"{out} is not empty and holds no earlier export ({PROVENANCE_FILE}): "
                                   "choose an empty folder")
        return out


@dataclass
class ExportResult:
    """What an export wrote, refused and left out, with why."""

    out: Path
    exported: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    pushed_to: str | None = None

    @property
    def provenance_path(self) -> Path:
        return self.out / PROVENANCE_FILE

    def summary(self) -> list[str]:
        lines = [f"exported {e['student']}/{e['variant']}: {e['rows']} examples" for e in self.exported]
        lines += [f"exported checkpoint {c['student']}/{c['variant']}/{c['seed']} ({', '.join(c['written'])})"
                  for c in self.checkpoints]
        lines += [f"refused {r['student']}/{r['variant']}: {r['reason']}" for r in self.refused]
        lines += [f"left out {s['student']}/{s['variant']}: {s['reason']}" for s in self.skipped]
        if self.pushed_to:
            lines.append(f"pushed to https://huggingface.co/datasets/{self.pushed_to}")
        return lines


def hub_token() -> str:
    """The Hub token from ``HF_TOKEN``; refused clearly without one (never read from a file, never logged)."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ExportUsageError(f"--push-to-hub needs a Hugging Face token with write access in ${TOKEN_ENV}; it is not set")
    return token


def _code_version() -> dict[str, str | None]:
    try:
        version = importlib.metadata.version("orion-assets")
    except importlib.metadata.PackageNotFoundError:
        version = None
    package = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(package), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"orion_assets": version, "git_commit": commit}


def _choose(store: BaseStore, request: ExportRequest, result: ExportResult,
            profile: Profile | None = None) -> dict[str, list[str]]:
    """``{student: [variant, ...]}`` to export: what the store has, narrowed by the request, less the variants
    whose gate failed (in ``result.refused``) and those with no SFT data (``result.skipped``: with ``profile``'s
    reason when it does not make the variant)."""
    left_out = skipped_variants(profile.config) if profile is not None else {}
    pairs = read.sft_partitions(store)
    have = sorted({s for s, _ in pairs})
    students = list(request.students) or have
    unknown = [s for s in students if s not in have]
    if unknown:
        raise ExportUsageError(f"no SFT data for student(s) {', '.join(unknown)} in {store.location} "
                          f"(students with SFT data: {', '.join(have) or 'none'})")
    chosen: dict[str, list[str]] = {}
    for student in students:
        stored = [v for v in VARIANTS if (student, v) in set(pairs)]
        for variant in request.variants or stored:
            if variant == BASE_VARIANT:
                result.skipped.append({"student": student, "variant": variant,
                                       "reason": "base is the untrained student: it has no SFT data or checkpoint"})
            elif variant not in stored:
                why = (f"profile {profile.name} does not make it ({left_out[variant]})" if variant in left_out
                       else "no SFT examples in the store (sft_dataset not materialized)")
                result.skipped.append({"student": student, "variant": variant, "reason": why})
            else:
                gate = read.gate_of(store, student, variant)
                if gate.passed:
                    chosen.setdefault(student, []).append(variant)
                else:
                    result.refused.append({"student": student, "variant": variant, "reason": gate.reason})
    return chosen


def export(store: BaseStore, request: ExportRequest, profile: Profile | None = None) -> ExportResult:
    """Write ``request``'s export of ``store`` (docs/export.md); ``profile`` describes the run in the cards."""
    token = hub_token() if request.push_to_hub else None
    out = request.target()  # again: the folder may have changed since the request was made
    read.require_tables(store, ("sft_dataset", "train_problems", "cot_quality", "materializations"))
    result = ExportResult(out)
    chosen = _choose(store, request, result, profile)
    if not chosen:
        why = "; ".join(f"{r['student']}/{r['variant']}: {r['reason']}" for r in result.refused + result.skipped)
        raise ExportError(f"nothing to export from {store.location}: {why or 'no SFT data'}")
    if request.push_to_hub and len(chosen) > 1:
        raise ExportUsageError(f"--push-to-hub pushes one student's dataset; choose one of {', '.join(chosen)} with --student")
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    sources: list[dict[str, Any]] = [m for m in [read.latest_materialization(store, "train_problems", None)] if m]
    try:
        _write_datasets(store, request, profile, chosen, staging, result, sources)
        if request.checkpoints:
            _write_checkpoints(store, request, profile, chosen, staging, result, sources)
        _write_provenance(staging, store, request, profile, result, sources)
        if out.exists():
            shutil.rmtree(out)
        staging.replace(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if token is not None:
        _push(out / next(iter(chosen)), request.push_to_hub, token, out / PROVENANCE_FILE)
        result.pushed_to = request.push_to_hub
    return result


def _write_datasets(store: BaseStore, request: ExportRequest, profile: Profile | None, chosen: dict[str, list[str]],
                    staging: Path, result: ExportResult, sources: list[dict[str, Any]]) -> None:
    """The chosen variants' rows in ``request.format`` under ``staging``, and the cards (hf)."""
    frames: dict[tuple[str, str], pl.DataFrame] = {}
    for student, variants in chosen.items():
        gate = read.gate_of(store, student, variants[0])
        sources += [gate.cot_quality] if gate.cot_quality else []
        for variant in variants:
            frame = read.sft_rows(store, student, variant)
            frames[(student, variant)] = frame
            mat = read.latest_materialization(store, "sft_dataset", f"{student}{PARTITION_SEPARATOR}{variant}")
            sources += [mat] if mat else []
            result.exported.append({"student": student, "variant": variant, "rows": frame.height,
                                    "cot_sources": dict(frame["cot_source"].value_counts(sort=True).iter_rows()),
                                    "sft_materialization_id": mat and mat["materialization_id"],
                                    "quality": read.quality_summary(store, student, variant)})
    if request.format == "llamafactory":
        files = formats.write_llamafactory(frames, staging)
    elif request.format == "jsonl":
        files = {key: formats.write_jsonl(frame, staging / key[0] / f"{key[1]}.jsonl") for key, frame in frames.items()}
    else:
        files = {}
        for student, variants in chosen.items():
            folder = formats.write_hf({v: frames[(student, v)] for v in variants}, staging / student)
            files.update({(student, v): folder for v in variants})
            _write_card(folder, student, variants, frames, result, profile, sources)
    for entry in result.exported:
        entry["path"] = files[(entry["student"], entry["variant"])].relative_to(staging).as_posix()


def _write_card(folder: Path, student: str, variants: list[str], frames: dict[tuple[str, str], pl.DataFrame],
                result: ExportResult, profile: Profile | None, sources: list[dict[str, Any]]) -> None:
    splits = {e["variant"]: e for e in result.exported if e["student"] == student}
    names = sorted({s for v in variants for s in frames[(student, v)]["source"].drop_nulls().to_list()})
    hashes = sorted({m["profile_hash"] for m in sources if m.get("asset_key") == "sft_dataset"
                     and str(m.get("partition_key", "")).startswith(student + PARTITION_SEPARATOR)
                     and m.get("profile_hash")})
    card = dataset_card(student=student, splits=splits, columns=frames[(student, variants[0])].columns,
                        profile=profile, profile_hashes=hashes, licences=source_licences(profile, names))
    (folder / CARD_FILE).write_text(card, encoding="utf-8")


def _write_checkpoints(store: BaseStore, request: ExportRequest, profile: Profile | None,
                       chosen: dict[str, list[str]], staging: Path, result: ExportResult,
                       sources: list[dict[str, Any]]) -> None:
    for student, variants in chosen.items():
        for variant in variants:
            rows = read.checkpoints(store, student, variant)
            if rows.height == 0:
                result.skipped.append({"student": student, "variant": variant,
                                       "reason": "no student_checkpoint in the store (not trained yet)"})
                continue
            for row in rows.iter_rows(named=True):
                result.checkpoints.append(_export_checkpoint(store, request, profile, row, staging, sources))


def _export_checkpoint(store: BaseStore, request: ExportRequest, profile: Profile | None, row: dict[str, Any],
                       staging: Path, sources: list[dict[str, Any]]) -> dict[str, Any]:
    """One checkpoint's adapter (and merged weights) or full weights, each with its model card."""
    student, variant, seed = row["student"], row["variant"], int(row["seed"])
    key = PARTITION_SEPARATOR.join((student, variant, str(seed)))
    sources += [m for m in [read.latest_materialization(store, "student_checkpoint", key),
                            read.latest_materialization(store, "student_base_model", student)] if m]
    sources += read.score_materializations(store, key)
    folder = staging / "checkpoints" / student / variant / f"seed{seed}"
    path = Path(row["path"])
    if not path.is_dir():
        raise ExportError(f"student_checkpoint {key}: its path {path} does not exist (the data folder moved, or the "
                          "checkpoint was deleted): rematerialize student_checkpoint")
    scores = read.scores(store, student, variant, seed)
    written: dict[str, str] = {}
    if row["kind"] == "full":
        weights.copy_full(path, folder / "full")
        written["full"] = "full"
    else:
        weights.copy_adapter(path, folder / "adapter")
        written["adapter"] = "adapter"
        if request.merged:
            weights.merge_adapter(row["base_path"] or _adapter_base(path), path, folder / "merged")
            written["merged"] = "merged"
    weights.readable_by_all(folder)
    for name in written:
        card = model_card(student=student, variant=variant, seed=seed, kind=row["kind"], scores=scores,
                          base_model=hub_base_model(profile, student), merged=name == "merged")
        (folder / name / CARD_FILE).write_text(card, encoding="utf-8")
    return {"student": student, "variant": variant, "seed": seed, "checkpoint_id": row["checkpoint_id"],
            "kind": row["kind"], "path": folder.relative_to(staging).as_posix(), "written": list(written),
            "scores": {r["benchmark"]: r["pass_at_1"] for r in scores.iter_rows(named=True)}}


def _adapter_base(adapter: Path) -> str:
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    return config["base_model_name_or_path"]


def _write_provenance(staging: Path, store: BaseStore, request: ExportRequest, profile: Profile | None,
                      result: ExportResult, sources: list[dict[str, Any]]) -> None:
    unique = {m["materialization_id"]: m for m in sources}
    recorded = sorted({m["profile_hash"] for m in unique.values() if m.get("profile_hash")})
    document = {
        "command": request.command,
        "exported_at": datetime.now(UTC).isoformat(),
        "format": request.format,
        "store": store.location,
        "code_version": _code_version(),
        "profile_hashes": recorded,
        "active_profile": {"name": profile.name, "hash": profile.hash} if profile is not None else None,
        "materializations": sorted(unique.values(), key=lambda m: (m["asset_key"], str(m["partition_key"]))),
        "exported": result.exported,
        "checkpoints": result.checkpoints,
        "refused": result.refused,
        "skipped": result.skipped,
    }
    (staging / PROVENANCE_FILE).write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")


def _push(folder: Path, repo: str, token: str, provenance: Path) -> None:
    """The card first (``datasets`` merges its split metadata into an existing README), then the splits and
    the provenance file. Untested here: no Hub-compatible server runs offline."""
    from datasets import load_from_disk  # deferred: heavy
    from huggingface_hub import DatasetCard, HfApi

    api = HfApi(token=token)
    api.create_repo(repo, repo_type="dataset", exist_ok=True)
    DatasetCard.load(folder / CARD_FILE).push_to_hub(repo, token=token, repo_type="dataset")
    load_from_disk(str(folder)).push_to_hub(repo, token=token)
    api.upload_file(path_or_fileobj=str(provenance), path_in_repo=PROVENANCE_FILE, repo_id=repo, repo_type="dataset")
