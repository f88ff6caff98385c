"""The Dagster side of SFT: launch :mod:`orion_assets.training.sft_main` through Dagster Pipes.

Usage in an asset::

    @dg.asset
    def student_checkpoint(context: dg.AssetExecutionContext, pipes_subprocess_client: dg.PipesSubprocessClient):
        params = TrainParams.from_sft_config(profile.sft, base_model_path=..., dataset_path=..., output_dir=...)
        outcome = run_sft_with_pipes(context, pipes_subprocess_client, params, profile.sft.launcher)
        ...  # outcome.result["final_path"], outcome.result["config_hash"], ...
        return dg.MaterializeResult(metadata={**outcome.metadata, "row_count": 1})

The training log streams into the run's event log as it happens (one ``sft step {...}`` line per step).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from orion_assets.training.sft import RESULT_FILE, TrainParams, launch_command

LAUNCH_PARAMS_FILE = "launch_params.json"


class SFTPipesOutcome(NamedTuple):
    """``result``: the :class:`~orion_assets.training.sft.TrainResult` as a dict; ``metadata``: the
    materialization metadata the SFT process reported (``dagster.MetadataValue`` values), ready for
    ``dg.MaterializeResult(metadata=...)``."""

    result: dict[str, Any]
    metadata: dict[str, Any]


def sft_command(
    launcher: Sequence[str], params_path: str | os.PathLike, python: str | None = None
) -> list[str]:
    """The launcher with ``{python}`` expanded and ``--params PATH`` appended."""
    return [*launch_command(launcher, python), "--params", str(params_path)]


def run_sft_with_pipes(
    context: Any,
    pipes_client: Any,
    params: TrainParams,
    launcher: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    python: str | None = None,
    cwd: str | None = None,
    log_interval_s: float = 0.0,
) -> SFTPipesOutcome:
    """Run one SFT process under Pipes and return what it reported.

    The parameters travel both as the Pipes extra ``train_params`` and as ``output_dir/launch_params.json``
    (``--params``), so every rank of an ``accelerate launch`` finds them.  Each training-log entry is streamed to
    the run's event log as it happens; ``log_interval_s`` > 0 streams at most one per that many seconds (for very
    fast steps; ``train_log.jsonl`` and the metadata keep them all).  ``env`` is added to this process's
    environment for the subprocess.  Raises when the process fails (``DagsterPipesExecutionError``); a rerun
    resumes from the latest checkpoint in ``params.output_dir``.
    """
    from dagster import MaterializeResult

    output_dir = Path(params.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    params_path = output_dir / LAUNCH_PARAMS_FILE
    params_path.write_text(json.dumps(params.to_json(), indent=2) + "\n", encoding="utf-8")
    command = sft_command(launcher, params_path, python)
    context.log.info(f"launching SFT: {' '.join(command)}")

    run_env = {"TOKENIZERS_PARALLELISM": "false", **(env or {})}
    invocation = pipes_client.run(
        command=command,
        context=context,
        extras={"train_params": params.to_json(), "log_interval_s": float(log_interval_s)},
        env=run_env,
        cwd=cwd,
    )

    result: dict[str, Any] | None = None
    for message in reversed(list(invocation.get_custom_messages())):
        if isinstance(message, dict) and isinstance(message.get("train_result"), dict):
            result = message["train_result"]
            break
    if result is None:  # e.g. a launcher that swallowed the Pipes channel: fall back to the file
        result_file = output_dir / RESULT_FILE
        if not result_file.is_file():
            raise RuntimeError(f"the SFT process reported no result and wrote no {result_file}")
        result = json.loads(result_file.read_text(encoding="utf-8"))

    metadata: dict[str, Any] = {}
    for item in invocation.get_results(implicit_materializations=False):
        if isinstance(item, MaterializeResult) and item.metadata:
            metadata.update(item.metadata)
    if not metadata:  # not an asset step (an op), or nothing reported: the plain result
        metadata = {k: v for k, v in result.items() if v is not None}
    return SFTPipesOutcome(result=result, metadata=metadata)
