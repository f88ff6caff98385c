"""The cards an export writes: a dataset card per student (Hugging Face YAML header and the run's account:
teacher, student, profile, counts, drops, decontamination, licences) and a model card per checkpoint, with
its scores. Licences come from the tables in ``orion_assets/data/README.md``."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from orion_assets.profiles import Profile
from orion_assets.records import PACKAGE_DATA, resolve_data_path
from orion_assets.vocabulary import BASELINE_BY_VARIANT, BENCHMARKS, VARIANT_MODE

DATA_README = Path(__file__).resolve().parents[1] / "data" / "README.md"
PACKAGE_PREFIX = "package:"
# The Hub's ids of the licences the shipped data carries (an unknown one is "other").
HUB_LICENCES = {"mit": "mit", "apache-2.0": "apache-2.0", "cc-by-4.0": "cc-by-4.0", "cc-by-sa-4.0": "cc-by-sa-4.0"}


@dataclass(frozen=True)
class SourceLicence:
    """One training source: where its file came from and its licence (as the data README states it)."""

    source: str
    file: str | None
    licence: str
    hub_id: str


def shipped_licences(readme: Path = DATA_README) -> dict[str, str]:
    """``{file: licence cell}`` of every table in the data README (the column headed ``Licence``). A row's file is
    the first code span of its first cell, as written (``aime_1983_2023.json``, ``train/arithmetic_train.jsonl``)."""
    licences: dict[str, str] = {}
    column: int | None = None
    for number, line in enumerate(readme.read_text(encoding="utf-8").splitlines(), 1):
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            column = None
        elif cells[0] == "File":
            if "Licence" not in cells:
                raise ValueError(f"{readme}:{number}: a file table without a Licence column")
            column = cells.index("Licence")
        elif column is not None and (name := re.match(r"`([^`]+)`", cells[0])):
            licences[name.group(1)] = cells[column]
    return licences


def _shown(path: Path) -> str:
    return path.relative_to(PACKAGE_DATA.parents[1]).as_posix()  # orion_assets/data/README.md


def hub_licence(licence: str) -> str:
    """The Hub id of a licence cell's first word (``MIT. Problems © MAA.`` is ``mit``)."""
    match = re.match(r"[A-Za-z0-9.+-]+", licence)
    word = match.group(0).rstrip(".").lower() if match else ""
    return HUB_LICENCES.get(word, "other")


def source_licences(profile: Profile | None, sources: list[str]) -> list[SourceLicence]:
    """The licence of each train source the exported rows name, through the profile's ``[[data.train_sources]]``."""
    shipped = shipped_licences()
    declared = {s.name: s for s in profile.config.data.train_sources} if profile is not None else {}
    out = []
    for name in sources:
        spec = declared.get(name)
        where = None if spec is None else spec.path or f"hf:{spec.hf_dataset}"
        if where is not None and where.startswith(PACKAGE_PREFIX):
            file = where.removeprefix(PACKAGE_PREFIX)
            # the README names a file with its folder under data/ (train/...) or, in the train table, without
            in_data = resolve_data_path(where).relative_to(PACKAGE_DATA).as_posix()
            licence = shipped.get(in_data) or shipped.get(file) or f"not listed in {_shown(DATA_README)}"
        else:
            file = where
            licence = ("unknown: the source is not shipped with orion-assets; check its own licence"
                       if where else "unknown: the active profile does not declare this source")
        out.append(SourceLicence(name, file, licence, hub_licence(licence)))
    return out


def _size_category(n: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return label
    return "n>1M"


def _endpoint(profile: Profile | None, role: str) -> str:
    if profile is None:
        return "not recorded (no profile loaded)"
    endpoint = getattr(profile.config.endpoints, role)
    if endpoint.backend == "replay":
        return f"replayed from the training problems' `{endpoint.replay_field}` column (backend `replay`)"
    return f"`{endpoint.model}` (backend `{endpoint.backend}`{f', {endpoint.base_url}' if endpoint.base_url else ''})"


def _student(profile: Profile | None, student: str) -> str:
    if profile is None:
        return f"`{student}`"
    try:
        spec = profile.config.for_student(student).student_model
    except KeyError:
        return f"`{student}` (not in the active profile)"
    origin = {"build_tiny": "a tiny random Qwen2 built by orion-assets", "pretrained": f"`{spec.name_or_path}`",
              "gguf": f"the GGUF `{spec.gguf_file or spec.gguf_path}`"}[spec.source]
    return f"`{student}`: {origin}"


def hub_base_model(profile: Profile | None, student: str) -> str | None:
    """The Hub id a pretrained student came from (a model card's ``base_model``); None for a local or built one."""
    try:
        spec = profile.config.for_student(student).student_model if profile is not None else None
    except KeyError:
        return None
    if spec is None or spec.source != "pretrained" or Path(spec.name_or_path).expanduser().exists():
        return None
    return spec.name_or_path


def _refined(variant: str, split: dict[str, Any]) -> str:
    """The split's refined and teacher-fallback counts as two cells; none for the teacher's own CoTs."""
    if not VARIANT_MODE.get(variant):
        return "— | —"
    sources = split.get("cot_sources") or {}
    return f"{sources.get('refined', 0)} | {sources.get('teacher_fallback', 0)}"


def _made_from(variant: str) -> str:
    """The reflection mode of a variant's CoTs, what a baseline's are (docs/baselines.md), or the teacher's CoT."""
    if variant in BASELINE_BY_VARIANT:
        return f"baseline: {BASELINE_BY_VARIANT[variant].trains_on}"
    return VARIANT_MODE.get(variant) or "teacher CoT"


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counts.items()) or "none"


def dataset_card(*, student: str, splits: dict[str, dict[str, Any]], columns: list[str], profile: Profile | None,
                 profile_hashes: list[str], licences: list[SourceLicence]) -> str:
    """README.md of one student's exported dataset: YAML header (``DatasetCardData``) and the run's account.

    ``splits``: per variant its ``rows``, ``cot_sources`` (rows per CoT source) and the ``quality`` summary
    (candidates, kept, drops per reason)."""
    from huggingface_hub import DatasetCard, DatasetCardData  # deferred: heavy

    total = sum(s["rows"] for s in splits.values())
    hub_ids = sorted({lic.hub_id for lic in licences}) or ["other"]
    data = DatasetCardData(
        language=["en"], license=hub_ids[0] if len(hub_ids) == 1 else hub_ids, task_categories=["text-generation"],
        size_categories=_size_category(total), pretty_name=f"ORION refined CoT SFT data ({student})",
        tags=["orion", "chain-of-thought", "distillation", "math", "synthetic"],
    )
    name = profile.name if profile is not None else "not loaded"
    hashes = ", ".join(f"`{h}`" for h in profile_hashes) or "not recorded"
    lines = [
        f"# ORION refined chain-of-thought SFT data: student `{student}`", "",
        "Made by orion-assets (ORION, Wu et al., Findings of ACL 2026, arXiv 2505.22131): "
        "the student's errors on training problems, the teacher's chain of thought rewritten in light of them, "
        "filtered by the quality gate. One split per variant; `orion_export.json` beside the files names the "
        "materializations they were read from.", "",
        "## Run", "",
        f"- Teacher: {_endpoint(profile, 'teacher')}",
        f"- Student: {_student(profile, student)}",
        f"- Profile: `{name}`, hash {hashes} (the hash recorded with the exported SFT data)", "",
        "## Splits", "",
        "| split (variant) | reflection mode or baseline | examples | refined | teacher fallback | candidates | kept | "
        "dropped by reason |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, split in splits.items():
        quality = split.get("quality") or {}
        lines.append(f"| `{variant}` | {_made_from(variant)} | {split['rows']} | "
                     f"{_refined(variant, split)} | {quality.get('candidates', '—')} | {quality.get('kept', '—')} | "
                     f"{_reasons(quality.get('dropped_by_reason', {}))} |")
    lines += ["", "`refined`: CoTs the reflection rewrote; `teacher fallback`: the teacher's own CoT, kept where no "
              "refinement passed (`teacher_sft` is all teacher CoTs)."]
    for variant, split in splits.items():
        if VARIANT_MODE.get(variant) and split["rows"] and not (split.get("cot_sources") or {}).get("refined"):
            lines += ["", f"`{variant}` holds no refined CoT: each of its {split['rows']} CoTs is the teacher's own "
                          "(teacher fallback), as in `teacher_sft`."]
    ngram = profile.config.data.decontamination_ngram if profile is not None else None
    lines += [
        "", "## Columns", "", ", ".join(f"`{c}`" for c in columns), "",
        "`messages` is the chat prompt followed by the completion (the CoT) as one list of `{role, content}`, "
        "and `prompt` and `completion` are the two apart (TRL trains on the completion only); "
        "`answer` the problem's gold answer, `source` its training source, `cot_source` where the CoT came from "
        "(`teacher`, `refined`, `teacher_fallback`); the numbers after it are the CoT's quality metrics.", "",
        "## Decontamination", "",
        f"Training problems sharing a {ngram or 'configured'}-gram with any problem of {', '.join(BENCHMARKS)} were "
        "removed before any CoT was made, and the quality gate drops a CoT that overlaps a benchmark problem "
        "(`contaminated` in the drop reasons above).", "",
        "## Source data and licences", "",
        "| train source | file | licence |", "|---|---|---|",
        *(f"| `{lic.source}` | {f'`{lic.file}`' if lic.file else '—'} | {lic.licence} |" for lic in licences),
        "", "The CoTs are model outputs on these problems; the problems' licences apply to them.",
    ]
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"))


def model_card(*, student: str, variant: str, seed: int, kind: str, scores: pl.DataFrame, base_model: str | None,
               merged: bool) -> str:
    """README.md of one exported checkpoint: its scores per benchmark, also as ``model-index`` results."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData  # deferred: heavy

    results, rows = [], []
    for row in scores.iter_rows(named=True):
        value = row.get("pass_at_1")
        if value is None or not math.isfinite(value):
            continue
        results.append(EvalResult(task_type="text-generation", dataset_type=row["benchmark"],
                                  dataset_name=row["benchmark"], metric_type="pass@1", metric_value=round(value, 4)))
        rows.append(f"| {row['benchmark']} | {100 * value:.1f} ± {100 * (row.get('pass_at_1_se') or 0):.1f} | "
                    f"{100 * (row.get('maj_at_k') or 0):.1f} | {100 * (row.get('pass_at_k') or 0):.1f} | "
                    f"{row.get('k')} | {row.get('n_problems')} | {row.get('grading_rule') or '—'} |")
    name = f"orion-{student}-{variant}-seed{seed}"
    data = ModelCardData(model_name=name, library_name="transformers" if merged or kind == "full" else "peft",
                         tags=["orion", "distillation", "chain-of-thought", variant], eval_results=results or None,
                         base_model=base_model)
    what = ("the base weights merged with the LoRA adapter (PEFT `merge_and_unload`)" if merged else
            "a full fine-tune" if kind == "full" else "a LoRA adapter")
    lines = [
        f"# {name}", "",
        f"Student `{student}` fine-tuned on the `{variant}` SFT data with seed {seed} by orion-assets: {what}.",
        "`orion_export.json` in the export folder names the materializations behind it.", "",
        "## Scores", "",
    ]
    if rows:
        lines += ["| benchmark | pass@1 (%) ± SE | maj@k | pass@k | k | problems | grading rule |",
                  "|---|---|---|---|---|---|---|", *rows]
    else:
        lines.append("No benchmark scores were recorded for this checkpoint.")
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"))
