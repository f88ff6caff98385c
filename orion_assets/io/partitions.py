"""Partition definitions shared by the assets: benchmarks, model variants, and their product."""

import dagster as dg

from orion_assets.vocabulary import BENCHMARKS, VARIANTS

benchmark_partitions = dg.StaticPartitionsDefinition(list(BENCHMARKS))
variant_partitions = dg.StaticPartitionsDefinition(list(VARIANTS))
benchmark_variant_partitions = dg.MultiPartitionsDefinition(
    {"benchmark": benchmark_partitions, "variant": variant_partitions}
)
