"""Partition definitions shared by the assets, built from what a profile makes.

Dagster's multi-partitions have two dimensions, and a comparison has four axes (benchmark, student, variant,
seed). The benchmark stays a dimension of its own, so per-benchmark backfills work from the UI; the other three
are joined with ``/`` into one key: ``student`` (``tiny``), ``student/variant`` (``tiny/orion``, the SFT data)
and ``student/variant/seed`` (``tiny/orion/0``, a checkpoint). The keys come from the profile the definitions
are built for (``orion_assets.definitions.build_definitions``), and hold only what it makes: its
``[data] benchmarks``, its students, ``base`` and the trained variants it makes (``made_variants``), each
with its seeds (``orion_assets.method.partition_keys``). :func:`partitions_of` builds them from any profile's
config.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import dagster as dg

from orion_assets.method.partition_keys import SEPARATOR, benchmarks_of, model_keys, sft_keys, students_of
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
    # A (benchmark, model) pair reads its benchmark's problems and its model's checkpoint.
    benchmark_of_pair: dg.PartitionMapping = dg.MultiToSingleDimensionPartitionMapping("benchmark")
    model_of_pair: dg.PartitionMapping = dg.MultiToSingleDimensionPartitionMapping("model")


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
