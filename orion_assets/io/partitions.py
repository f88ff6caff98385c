"""Partition definitions shared by the assets, built from what the active profile makes.

Dagster's multi-partitions have two dimensions, and a comparison has four axes (benchmark, student, variant,
seed). The benchmark stays a dimension of its own, so per-benchmark backfills work from the UI; the other three
are joined with ``/`` into one key: ``student`` (``tiny``), ``student/variant`` (``tiny/orion``, the SFT data)
and ``student/variant/seed`` (``tiny/orion/0``, a checkpoint). The keys come from the profile in
``ORION_PROFILE`` when the definitions load (README, "Partitions"), and hold only what it makes: its
``[data] benchmarks``, its students, ``base`` and the trained variants it makes (``made_variants``), each
with its seeds. :func:`partitions_of` builds them from any profile's config; :func:`why_not_made` says why a
key is missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import dagster as dg

from orion_assets.method.variants import made_variants, skipped_variants
from orion_assets.profiles import load_profile
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


def _by_upstream(pairs: Iterable[tuple[str, str]]) -> dg.StaticPartitionMapping:
    mapping: dict[str, list[str]] = {}
    for upstream, downstream in pairs:
        mapping.setdefault(upstream, []).append(downstream)
    return dg.StaticPartitionMapping(mapping)


@dataclass(frozen=True)
class Partitions:
    """A profile's partition definitions, and what each downstream key reads upstream: a student's tables, a
    variant's SFT data, a checkpoint."""

    benchmark: dg.StaticPartitionsDefinition
    student: dg.StaticPartitionsDefinition
    sft: dg.StaticPartitionsDefinition
    model: dg.StaticPartitionsDefinition
    benchmark_model: dg.MultiPartitionsDefinition
    student_to_sft: dg.StaticPartitionMapping
    student_to_model: dg.StaticPartitionMapping
    sft_to_model: dg.StaticPartitionMapping


def partitions_of(config: OrionConfig) -> Partitions:
    """The partitions of what ``config`` makes: its benchmarks, students, and variants (:func:`sft_keys`,
    :func:`model_keys`); no key it can never make."""
    sft, models = sft_keys(config), model_keys(config)
    benchmark = dg.StaticPartitionsDefinition(benchmarks_of(config))
    model = dg.StaticPartitionsDefinition(models)
    return Partitions(
        benchmark=benchmark,
        student=dg.StaticPartitionsDefinition(students_of(config)),
        sft=dg.StaticPartitionsDefinition(sft),
        model=model,
        benchmark_model=dg.MultiPartitionsDefinition({"benchmark": benchmark, "model": model}),
        student_to_sft=_by_upstream((key.split(SEPARATOR)[0], key) for key in sft),
        student_to_model=_by_upstream((key.split(SEPARATOR)[0], key) for key in models),
        sft_to_model=_by_upstream((SEPARATOR.join(key.split(SEPARATOR)[:2]), key) for key in models),
    )


# The active profile's, which the assets are declared with.
ACTIVE = partitions_of(load_profile().config)
benchmark_partitions = ACTIVE.benchmark
student_partitions = ACTIVE.student
sft_partitions = ACTIVE.sft
model_partitions = ACTIVE.model
benchmark_model_partitions = ACTIVE.benchmark_model
student_to_sft = ACTIVE.student_to_sft
student_to_model = ACTIVE.student_to_model
sft_to_model = ACTIVE.sft_to_model
benchmark_of_pair = dg.MultiToSingleDimensionPartitionMapping("benchmark")
model_of_pair = dg.MultiToSingleDimensionPartitionMapping("model")
