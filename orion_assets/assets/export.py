"""The ``export`` job: ``orion export`` from the UI (Launchpad config: out, format, checkpoints, merged).
Thin: :func:`orion_assets.export.export` does the work; what it wrote, refused and left out is the op's metadata."""

import dagster as dg

from orion_assets.export import ExportFormat, ExportRequest, export
from orion_assets.io.resource import OrionResource


class ExportConfig(dg.Config):
    out: str  # the export folder: empty, new, or an earlier export
    format: ExportFormat = "hf"
    checkpoints: bool = False
    merged: bool = False


@dg.op(out=dg.Out(dg.Nothing))
def export_op(context: dg.OpExecutionContext, config: ExportConfig, orion: OrionResource) -> dg.Output:
    """Export the store's SFT data (and checkpoints); fails when the quality gate refused a variant."""
    request = ExportRequest(out=config.out, format=config.format, checkpoints=config.checkpoints,
                            merged=config.merged, command=f"dagster job export (run {context.run_id})")
    result = export(orion.store, request, orion.active)
    for line in result.summary():
        context.log.info(line)
    metadata = {
        "out": dg.MetadataValue.path(str(result.out)),
        "provenance": dg.MetadataValue.path(str(result.provenance_path)),
        "exported": [f"{e['student']}/{e['variant']}" for e in result.exported],
        "rows": {f"{e['student']}/{e['variant']}": e["rows"] for e in result.exported},
        "checkpoints": [c["path"] for c in result.checkpoints],
        "refused": {f"{r['student']}/{r['variant']}": r["reason"] for r in result.refused},
    }
    if result.refused:
        raise dg.Failure(f"export refused {', '.join(metadata['refused'])}: " + "; ".join(metadata["refused"].values()),
                         metadata=metadata)
    return dg.Output(None, metadata=metadata)


@dg.job(name="export", description="Export the SFT data (hf, llamafactory or jsonl) and optionally the checkpoints (orion export)")
def export_job() -> None:
    export_op()
