"""Assets declared once and built for a profile.

A profile decides which partitions exist (:mod:`orion_assets.io.partitions`) and where the SFT step's pod
runs (its op tags), so an asset's Dagster definition depends on the profile. Each asset module declares a
:class:`Blueprint` naming what it needs (``partitions="student"``, an input's mapping ``"student_to_sft"``,
op tags read off the config); :func:`orion_assets.definitions.build_definitions` builds every blueprint
for the profile it is given. No module reads a profile to declare an asset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import dagster as dg

from orion_assets.io.partitions import Partitions
from orion_assets.profiles.schema import OrionConfig

#: A :class:`Partitions` field holding a partitions definition.
PartitionsName = Literal["benchmark", "student", "sft", "model", "benchmark_model"]
#: A :class:`Partitions` field holding the mapping an input reads its upstream partitions by.
MappingName = Literal["student_to_sft", "student_to_model", "sft_to_model", "benchmark_of_pair", "model_of_pair"]


@dataclass(frozen=True)
class Blueprint:
    """``decorator(**kwargs)(fn)`` (``dg.asset`` or ``dg.asset_check``) once the profile's parts are known:
    ``partitions`` and the mappings ``ins`` name are fields of its :class:`Partitions`, ``op_tags`` is read
    off its config."""

    decorator: Callable[..., Callable[[Callable[..., Any]], Any]]
    fn: Callable[..., Any]
    kwargs: Mapping[str, Any]
    partitions: PartitionsName | None = None
    ins: Mapping[str, MappingName | dg.AssetIn] = field(default_factory=dict)
    op_tags: Callable[[OrionConfig], Mapping[str, Any]] | None = None

    @property
    def name(self) -> str:
        return self.kwargs.get("name") or self.fn.__name__

    def build(self, parts: Partitions | None = None,
              config: OrionConfig | None = None) -> dg.AssetsDefinition | dg.AssetChecksDefinition:
        """The definition for a profile's ``parts`` and ``config``; one that names neither builds without them."""
        if parts is None and (self.partitions or any(isinstance(m, str) for m in self.ins.values())):
            raise ValueError(f"{self.name} has partitions: build it for a profile's Partitions")
        if config is None and self.op_tags is not None:
            raise ValueError(f"{self.name} has op tags from the profile: build it with its config")
        kwargs = dict(self.kwargs)
        if self.partitions is not None:
            kwargs["partitions_def"] = getattr(parts, self.partitions)
        if self.ins:
            kwargs["ins"] = {
                name: mapping if isinstance(mapping, dg.AssetIn) else dg.AssetIn(partition_mapping=getattr(parts, mapping))
                for name, mapping in self.ins.items()
            }
        if self.op_tags is not None:
            kwargs["op_tags"] = dict(self.op_tags(config))
        return self.decorator(**kwargs)(self.fn)


def blueprint(
    decorator: Callable[..., Callable[[Callable[..., Any]], Any]],
    *,
    partitions: PartitionsName | None = None,
    ins: Mapping[str, MappingName | dg.AssetIn] | None = None,
    op_tags: Callable[[OrionConfig], Mapping[str, Any]] | None = None,
    **kwargs: Any,
) -> Callable[[Callable[..., Any]], Blueprint]:
    """Declare ``fn`` as a :class:`Blueprint` of ``decorator``: ``@blueprint(dg.asset_check, asset=...,
    partitions="student")`` where ``@dg.asset_check(asset=..., partitions_def=...)`` would need the profile."""

    def declare(fn: Callable[..., Any]) -> Blueprint:
        return Blueprint(decorator, fn, kwargs, partitions, dict(ins or {}), op_tags)

    return declare
