"""Partition definitions shared by the assets, built from the active profile's students and seeds.

Dagster's multi-partitions have two dimensions, and a comparison has four axes (benchmark, student, variant,
seed). The benchmark stays a dimension of its own, so per-benchmark backfills work from the UI; the other three
are joined with ``/`` into one key: ``student`` (``tiny``), ``student/variant`` (``tiny/orion``, the SFT data)
and ``student/variant/seed`` (``tiny/orion/0``, a checkpoint). The keys come from the profile in
``ORION_PROFILE`` when the definitions load (README, "Partitions").
"""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

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


def model_keys(config: OrionConfig) -> list[str]:
    return [
        model_key(student.name, variant, seed)
        for student in config.all_students
        for variant in VARIANTS
        for seed in variant_seeds(config, variant)
    ]


def _by_upstream(pairs: Iterable[tuple[str, str]]) -> dg.StaticPartitionMapping:
    mapping: dict[str, list[str]] = {}
    for upstream, downstream in pairs:
        mapping.setdefault(upstream, []).append(downstream)
    return dg.StaticPartitionMapping(mapping)


_config = load_profile().config
STUDENTS: tuple[str, ...] = tuple(s.name for s in _config.all_students)
MODEL_KEYS: tuple[str, ...] = tuple(model_keys(_config))
SFT_KEYS: tuple[str, ...] = tuple(sft_key(s, v) for s in STUDENTS for v in VARIANTS)

benchmark_partitions = dg.StaticPartitionsDefinition(list(BENCHMARKS))
student_partitions = dg.StaticPartitionsDefinition(list(STUDENTS))
sft_partitions = dg.StaticPartitionsDefinition(list(SFT_KEYS))
model_partitions = dg.StaticPartitionsDefinition(list(MODEL_KEYS))
benchmark_model_partitions = dg.MultiPartitionsDefinition({"benchmark": benchmark_partitions, "model": model_partitions})

# What each downstream key reads upstream: a student's tables, a variant's SFT data, a checkpoint.
student_to_sft = _by_upstream((key.split(SEPARATOR)[0], key) for key in SFT_KEYS)
student_to_model = _by_upstream((key.split(SEPARATOR)[0], key) for key in MODEL_KEYS)
sft_to_model = _by_upstream((SEPARATOR.join(key.split(SEPARATOR)[:2]), key) for key in MODEL_KEYS)
benchmark_of_pair = dg.MultiToSingleDimensionPartitionMapping("benchmark")
model_of_pair = dg.MultiToSingleDimensionPartitionMapping("model")
