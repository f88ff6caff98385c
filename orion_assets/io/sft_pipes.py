"""The Dagster side of SFT: launch :mod:`orion_assets.training.main` through Dagster Pipes.

Usage in an asset::

    outcome = run_sft_with_pipes(context, pipes_subprocess_client, params, profile.sft.launcher)
    return dg.MaterializeResult(metadata={**outcome.metadata, "row_count": 1})

Each ``sft step {...}`` Pipes log message reaches the run's event log and, as it arrives, ``report_progress``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import dagster as dg
import pyarrow.parquet as pq

from orion_assets.progress import report_progress
from orion_assets.training.config import RESULT_FILE, TrainParams, launch_command
from orion_assets.training.main import LOG_INTERVAL_EXTRA, PARAMS_EXTRA, RESULT_MESSAGE_KEY, STEP_LOG_PREFIX

LAUNCH_PARAMS_FILE = "launch_params.json"
RUN_LOG_ENV = "ORION_LOG_FILE"
# Runs the rest of argv with stdout and stderr appended to argv[1]; exec keeps the pid, so the
# signal Dagster forwards on termination reaches the training process itself.
_EXEC_INTO_LOG = (
    "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644); "
    "os.dup2(fd, 1); os.dup2(fd, 2); os.execvp(sys.argv[2], sys.argv[2:])"
)


class SFTPipesOutcome(NamedTuple):
    """``result``: the :class:`~orion_assets.training.trainer.TrainResult` as a dict; ``metadata``: the
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

    ``log_interval_s`` > 0 streams at most one training-log entry per that many seconds (``train_log.jsonl`` and
    the metadata keep them all); ``env`` is added to this process's environment for the subprocess.  Raises when
    the process fails (``DagsterPipesExecutionError``); a rerun resumes from the latest checkpoint.
    """
    output_dir = Path(params.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    params_path = output_dir / LAUNCH_PARAMS_FILE
    params_path.write_text(json.dumps(params.to_json(), indent=2) + "\n", encoding="utf-8")
    command = sft_command(launcher, params_path, python)
    context.log.info(f"launching SFT: {' '.join(command)}")
    log_file = os.environ.get(RUN_LOG_ENV)
    if log_file:
        context.log.info(f"the SFT process's output goes to {log_file}")
        command = [sys.executable, "-c", _EXEC_INTO_LOG, log_file, *command]

    run_env = {"TOKENIZERS_PARALLELISM": "false", **(env or {})}
    progress = _StepProgress(_progress_label(context), planned_steps(params))
    with progress.listening(context.log):
        invocation = pipes_client.run(
            command=command,
            context=context,
            extras={PARAMS_EXTRA: params.to_json(), LOG_INTERVAL_EXTRA: float(log_interval_s)},
            env=run_env,
            cwd=cwd,
        )

    result: dict[str, Any] | None = None
    for message in reversed(list(invocation.get_custom_messages())):
        if isinstance(message, dict) and isinstance(message.get(RESULT_MESSAGE_KEY), dict):
            result = message[RESULT_MESSAGE_KEY]
            break
    if result is None:  # e.g. a launcher that swallowed the Pipes channel: fall back to the file
        result_file = output_dir / RESULT_FILE
        if not result_file.is_file():
            raise RuntimeError(f"the SFT process reported no result and wrote no {result_file}")
        result = json.loads(result_file.read_text(encoding="utf-8"))
    progress.finish(result)

    metadata: dict[str, Any] = {}
    for item in invocation.get_results(implicit_materializations=False):
        if isinstance(item, dg.MaterializeResult) and item.metadata:
            metadata.update(item.metadata)
    if not metadata:  # not an asset step (an op), or nothing reported: the plain result
        metadata = {k: v for k, v in result.items() if v is not None}
    return SFTPipesOutcome(result=result, metadata=metadata)


def planned_steps(params: TrainParams) -> int | None:
    """Optimizer steps the run will take (``max_steps``, else epochs of the dataset's rows on one
    device: an estimate, as over-long examples are dropped); None when the dataset cannot be read or a token
    budget decides (the run stops where the budget is reached)."""
    if params.budget == "tokens":
        return None
    if params.max_steps > 0:
        return params.max_steps
    try:
        rows = pq.ParquetFile(params.dataset_path).metadata.num_rows
    except Exception:  # noqa: BLE001 - only a progress total
        return None
    per_epoch = math.ceil(rows / (params.per_device_train_batch_size * params.gradient_accumulation_steps))
    return max(1, math.ceil(per_epoch * params.num_train_epochs))


def _progress_label(context: Any) -> str:
    try:
        return f"sft[{context.partition_key}]" if context.has_partition_key else "sft"
    except Exception:  # noqa: BLE001 - an op context without partitions
        return "sft"


class _StepProgress(logging.Filter):
    """Sees every record on ``context.log``, where Pipes puts the SFT process's log messages as they arrive, and
    turns each ``sft step {...}`` one into a progress record (step, loss); drops nothing.  A filter, not a
    handler: Dagster's own handler rewrites the message it formats."""

    def __init__(self, label: str, total: int | None):
        super().__init__()
        self.label, self.total = label, total
        self.step = 0

    @contextmanager
    def listening(self, log: logging.Logger):
        log.addFilter(self)
        try:
            yield self
        finally:
            log.removeFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(STEP_LOG_PREFIX):
            try:
                entry = json.loads(message[len(STEP_LOG_PREFIX):])
                step = int(entry["step"])
            except (ValueError, KeyError, TypeError):
                return True
            self._report(step, entry.get("loss"))
        return True

    def finish(self, result: Mapping[str, Any]) -> None:
        """The last step, when ``log_interval_s`` held its message back."""
        step = result.get("steps")
        if isinstance(step, int) and step > self.step:
            self._report(step, result.get("final_loss"))

    def _report(self, step: int, loss: Any) -> None:
        self.step = step
        total = max(self.total, step) if self.total else None
        report_progress(self.label, step, total, unit="steps", loss=loss)
