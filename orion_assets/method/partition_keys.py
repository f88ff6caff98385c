"""The partition keys of what a profile makes, as plain functions of its config (no Dagster):
``student``, ``student/variant`` and ``student/variant/seed``, its benchmarks, and why a key is not made
(docs/design.md, "Partitions"). ``orion_assets.io.partitions`` turns them into Dagster's definitions."""

from __future__ import annotations

from orion_assets.method.variants import made_variants, skipped_variants
from orion_assets.profiles.schema import OrionConfig
from orion_assets.vocabulary import BASE_VARIANT, BENCHMARKS, PARTITION_SEPARATOR, VARIANTS

SEPARATOR = PARTITION_SEPARATOR


def sft_key(student: str, variant: str) -> str:
    return f"{student}{SEPARATOR}{variant}"


def model_key(student: str, variant: str, seed: int) -> str:
    return f"{student}{SEPARATOR}{variant}{SEPARATOR}{seed}"


def parse_model_key(key: str) -> tuple[str, str, int]:
    """``(student, variant, seed)`` of a ``student/variant/seed`` key."""
    student, variant, seed = str(key).split(SEPARATOR)
    return student, variant, int(seed)


def variant_seeds(config: OrionConfig, variant: str) -> list[int]:
    """The seeds a variant is trained with: every [sft] seed, or the first alone for the untrained ``base``."""
    seeds = config.sft.all_seeds
    return seeds[:1] if variant == BASE_VARIANT else seeds


def benchmarks_of(config: OrionConfig) -> list[str]:
    """The benchmarks a profile evaluates (``[data] benchmarks``), in the vocabulary's order."""
    return [b for b in BENCHMARKS if b in config.data.benchmarks]


def students_of(config: OrionConfig) -> list[str]:
    return [s.name for s in config.all_students]


def sft_keys(config: OrionConfig) -> list[str]:
    """``student/variant`` of each student and each variant the profile makes (:func:`made_variants`)."""
    return [sft_key(student, variant) for student in students_of(config) for variant in made_variants(config)]


def model_keys(config: OrionConfig) -> list[str]:
    """``student/variant/seed`` of each checkpoint the profile makes."""
    return [
        model_key(student, variant, seed)
        for student in students_of(config)
        for variant in made_variants(config)
        for seed in variant_seeds(config, variant)
    ]


def why_not_made(config: OrionConfig, key: str) -> str | None:
    """Why a profile makes no partition ``key`` (a benchmark, ``student[/variant[/seed]]``, or
    ``benchmark|student/variant/seed``), in words naming the setting; None when it makes it."""
    parts = str(key).split("|")
    if len(parts) > 2:
        return f"{key} is not a partition key"
    if len(parts) == 2 or parts[0] in BENCHMARKS:
        benchmark = parts.pop(0)
        if benchmark not in BENCHMARKS:
            return f"no benchmark {benchmark} (known: {', '.join(BENCHMARKS)})"
        if benchmark not in benchmarks_of(config):
            return f"{benchmark} is not among its [data] benchmarks ({', '.join(config.data.benchmarks)})"
    if not parts:
        return None
    fields = parts[0].split(SEPARATOR)
    if len(fields) > 3 or "" in fields:
        return f"{key} is not a partition key"
    student, variant, seed = [*fields, None, None][:3]
    if student not in students_of(config):
        return f"it has no student {student} (its students: {', '.join(students_of(config))})"
    if variant is None:
        return None
    if variant not in VARIANTS:
        return f"no variant {variant} (known: {', '.join(VARIANTS)})"
    if (why := skipped_variants(config).get(variant)) is not None:
        return f"it leaves out {variant}: {why}"
    seeds = variant_seeds(config, variant)
    if seed is None or (seed.isdigit() and int(seed) in seeds):
        return None
    if variant == BASE_VARIANT:
        return f"it makes base with seed {seeds[0]} only (the untrained student: the first of [sft] seeds)"
    return f"it trains {variant} with seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))} ([sft] seeds)"
