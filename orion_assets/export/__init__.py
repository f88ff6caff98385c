"""Exports of a run's results in the field's formats: the SFT data as a Hugging Face dataset, LLaMA-Factory
files or OpenAI chat JSONL, and the checkpoints (adapters, merged weights), each export with the cards and
provenance that say what it was made from (docs/export.md). No Dagster here: ``orion export`` and the
``export`` job both call :func:`export`."""

from __future__ import annotations

from orion_assets.export.core import PROVENANCE_FILE, ExportRequest, ExportResult, export, hub_token
from orion_assets.export.formats import FORMATS, ExportFormat
from orion_assets.export.read import ExportError, ExportUsageError

__all__ = ["FORMATS", "ExportFormat", "PROVENANCE_FILE", "ExportError", "ExportUsageError", "ExportRequest",
           "ExportResult", "export", "hub_token"]
