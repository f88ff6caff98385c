"""The Dagster side of SFT: launch :mod:`orion_assets.training.main` through Dagster Pipes.

Usage in an asset::

    @dg.asset
    def student_checkpoint(context: dg.AssetExecutionContext, pipes_subprocess_client: dg.PipesSubprocessClient):
        params = TrainParams.from_sft_config(profile.sft, base_model_path=..., dataset_path=..., output_dir=...)
        outcome = run_sft_with_pipes(context, pipes_subprocess_client, params, profile.sft.launcher)
        ...  # outcome.result["final_path"], outcome.result["config_hash"], ...
        return dg.MaterializeResult(metadata={**outcome.metadata, "row_count": 1})

The training log streams into the run's event log as it happens (one ``sft step {...}`` line per step),
and as progress records (:func:`orion_assets.cli.console.report_progress`: step, loss) that ``orion run`` draws.
With ``$ORION_LOG_FILE`` set (``orion run`` sets it) the process's own output (model-loading bars, library
warnings) is appended to that file instead of this process's terminal.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from orion_assets.training.config import RESULT_FILE, TRAIN_LOG_FILE, TrainParams, launch_command

LAUNCH_PARAMS_FILE = "launch_params.json"
RUN_LOG_ENV = "ORION_LOG_FILE"
# Runs the rest of argv with stdout and stderr appended to argv[1]; exec keeps the pid, so the
# signal Dagster forwards on termination reaches the training process itself.
_EXEC_INTO_LOG = (
    "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644); "
    "os.dup2(fd, 1); os.dup2(fd, 2); os.execvp(sys.argv[2], sys.argv[2:])"
)


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
    log_file = os.environ.get(RUN_LOG_ENV)
    if log_file:
        context.log.info(f"the SFT process's output goes to {log_file}")
        command = [sys.executable, "-c", _EXEC_INTO_LOG, log_file, *command]

    run_env = {"TOKENIZERS_PARALLELISM": "false", **(env or {})}
    watcher = _StepWatcher(output_dir, _progress_label(context), planned_steps(params))
    watcher.start()
    try:
        invocation = pipes_client.run(
            command=command,
            context=context,
            extras={"train_params": params.to_json(), "log_interval_s": float(log_interval_s)},
            env=run_env,
            cwd=cwd,
        )
    finally:
        watcher.stop()

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


def planned_steps(params: TrainParams) -> int | None:
    """Optimizer steps the run will take (``max_steps``, else epochs of the dataset's rows on one
    device: an estimate, as over-long examples are dropped); None when the dataset cannot be read."""
    if params.max_steps > 0:
        return params.max_steps
    try:
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(params.dataset_path).metadata.num_rows
    except Exception:  # noqa: BLE001 - only a progress total
        return None
    per_epoch = math.ceil(rows / (params.batch_size * params.gradient_accumulation_steps))
    return max(1, math.ceil(per_epoch * params.epochs))


def _progress_label(context: Any) -> str:
    try:
        return f"sft[{context.partition_key}]" if context.has_partition_key else "sft"
    except Exception:  # noqa: BLE001 - an op context without partitions
        return "sft"


class _StepWatcher:
    """Reports the training log's newest step and loss (``train_log.jsonl``, appended once per
    step by the SFT process) as progress while the process runs."""

    def __init__(self, output_dir: Path, label: str, total: int | None, interval_s: float = 0.5):
        self.path = Path(output_dir) / TRAIN_LOG_FILE
        self.label, self.total, self.interval_s = label, total, interval_s
        self._size = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="orion-sft-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.poll()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        from orion_assets.progress import report_progress

        try:
            size = self.path.stat().st_size
            if size == self._size:
                return
            self._size = size
            lines = [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
            entry = json.loads(lines[-1]) if lines else None
        except (OSError, ValueError):
            return
        if entry and "step" in entry:
            step = int(entry["step"])
            total = max(self.total, step) if self.total else None
            report_progress(self.label, step, total, unit="steps", loss=entry.get("loss"))
