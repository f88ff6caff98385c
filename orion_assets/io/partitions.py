"""Partition definitions shared by the assets, built from what the active profile makes.

Dagster's multi-partitions have two dimensions, and a comparison has four axes (benchmark, student, variant,
seed). The benchmark stays a dimension of its own, so per-benchmark backfills work from the UI; the other three
are joined with ``/`` into one key: ``student`` (``tiny``), ``student/variant`` (``tiny/orion``, the SFT data)
and ``student/variant/seed`` (``tiny/orion/0``, a checkpoint). The keys come from the profile in
``ORION_PROFILE`` when the definitions load (README, "Partitions"), and hold only what it makes: its
``[data] benchmarks``, its students, ``base`` and the trained variants it makes (``made_variants``), each
with its seeds (``orion_assets.method.partition_keys``). :func:`partitions_of` builds them from any profile's
config.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import dagster as dg

from orion_assets.method.partition_keys import SEPARATOR, benchmarks_of, model_keys, sft_keys, students_of
from orion_assets.profiles import load_profile
from orion_assets.profiles.schema import OrionConfig


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
