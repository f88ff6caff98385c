"""Checkpoints and the per-step training log in a run's ``output_dir``: what a rerun resumes from.

Checkpoints are listed by transformers' own ``sort_checkpoints`` (the Trainer rotates them with it); one without
a parseable ``trainer_state.json`` (written last) was cut short by a kill and is never resumed from.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orion_assets.training.budget import checkpoint_budget_state
from orion_assets.training.config import TRAIN_LOG_FILE

logger = logging.getLogger(__name__)


def _checkpoint_complete(path: Path) -> bool:
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and "global_step" in state


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoint-N`` directories in ``output_dir``, oldest first (transformers' ``sort_checkpoints``)."""
    from transformers.trainer_utils import sort_checkpoints  # deferred: heavy

    return [Path(p) for p in sort_checkpoints(str(output_dir))]


def find_resume_checkpoint(output_dir: str | os.PathLike, remove_incomplete: bool = False) -> Path | None:
    """The latest complete ``checkpoint-N`` in ``output_dir`` (as ``get_last_checkpoint`` finds it, less the ones
    cut short); optionally remove the incomplete ones."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    complete: list[Path] = []
    for path in checkpoint_dirs(root):
        if _checkpoint_complete(path):
            complete.append(path)
        elif remove_incomplete:
            logger.warning("removing incomplete checkpoint %s", path)
            shutil.rmtree(path, ignore_errors=True)
    return complete[-1] if complete else None


def finished_checkpoint_state(path: Path | None) -> dict[str, Any] | None:
    """The checkpoint's trainer state when it is at the run's last step (``global_step >= max_steps``, or the
    step that reached a token budget)."""
    if path is None:
        return None
    state = json.loads((path / "trainer_state.json").read_text())
    max_steps = int(state.get("max_steps") or 0)
    if checkpoint_budget_state(path).get("budget_reached"):
        return state
    return state if max_steps > 0 and int(state["global_step"]) >= max_steps else None


def checkpoint_step(path: Path) -> int:
    """N of ``checkpoint-N``."""
    return int(path.name.rsplit("-", 1)[1])


def read_train_log(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(output_dir) / TRAIN_LOG_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except ValueError:  # a line cut by a kill
            continue
    return out


def rewrite_train_log(output_dir: Path, keep_until_step: int) -> None:
    """On resume: keep the log entries up to the checkpoint's step (later ones are re-run)."""
    entries = [e for e in read_train_log(output_dir) if int(e.get("step", 0)) <= keep_until_step]
    tmp = output_dir / (TRAIN_LOG_FILE + ".tmp")
    tmp.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
    os.replace(tmp, output_dir / TRAIN_LOG_FILE)


def last_logged_loss(output_dir: Path) -> float | None:
    losses = [e["loss"] for e in read_train_log(output_dir) if e.get("loss") is not None]
    return losses[-1] if losses else None


#: The fields of one loss-curve point (a ``student_checkpoint.loss_curve`` struct): the Trainer's own names for
#: them in ``state.log_history`` but ``tokens_seen`` (its ``num_input_tokens_seen``).
CURVE_FIELDS: dict[str, type] = {"step": int, "epoch": float, "loss": float, "learning_rate": float,
                                 "grad_norm": float, "tokens_seen": int, "mean_token_accuracy": float}


@dataclass(frozen=True)
class ResultColumn:
    """A ``student_checkpoint`` column one SFT run's result fills: the ``TrainResult`` field it takes, whose type is
    the column's (``points``: the fields of each point of a list field), and what the column holds."""

    field: str
    description: str
    points: Mapping[str, type] | None = None


#: The ``student_checkpoint`` columns one SFT run's result (``TrainResult``, its ``result.json``) fills, declared
#: once: the checkpoint row is read off the result (:func:`result_columns`), never copied by hand, and the table
#: spec takes each column's type (its field's) and description from here. In the table's order, in two groups
#: (``params``, which the result does not hold, stands between): what the run is and reached, then what its length
#: was matched on ([sft] budget), what it trained on (docs/sft.md, "Budgets") and its loss curve.
RUN_COLUMNS: dict[str, ResultColumn] = {
    "config_hash": ResultColumn("config_hash", "a hash of what determines the weights: hyperparameters, data file "
                                               "and base model (docs/sft.md); base: the base model's"),
    "path": ResultColumn("final_path", "the trained weights' directory (base: the base model's)"),
    "kind": ResultColumn("final_kind", "lora_adapter, full, or base"),
    "steps": ResultColumn("steps", "optimizer steps reached over the whole run (steps before a resume too)"),
    "train_loss": ResultColumn("train_loss", "the mean loss over the steps run in the call that finished"),
    "final_loss": ResultColumn("final_loss", "the last logged step's loss"),
    "tokens_seen": ResultColumn("tokens_seen", "input tokens trained on over the whole run (prompt and completion, "
                                               "no padding)"),
    "train_tokens_per_second": ResultColumn("train_tokens_per_second",
                                            "the last call's tokens per second of its training loop"),
    "truncated_examples": ResultColumn("truncated_examples", "always 0: no example is cut"),
    "resumed_from_step": ResultColumn("resumed_from_step", "the step the last call resumed from (0: a fresh run)"),
}
TRAINED_COLUMNS: dict[str, ResultColumn] = {
    "budget": ResultColumn("budget", "what the run's length was set by ([sft] budget): epochs, steps or tokens"),
    "trained_examples": ResultColumn("trained_examples", "examples trained on over the whole run (one trained twice "
                                                         "counts twice)"),
    "completion_tokens": ResultColumn("completion_tokens", "completion tokens trained on (the loss's), over the "
                                                           "whole run"),
    "epochs": ResultColumn("epochs", "passes over the examples (the Trainer's state.epoch)"),
    # every logged step of the whole run (the steps before a resume too): the Trainer's log_history (docs/sft.md)
    "loss_curve": ResultColumn("loss_curve", "one point per logged step of the whole run: step, epoch, loss, "
                                             "learning_rate, grad_norm, tokens_seen, mean_token_accuracy",
                               points=CURVE_FIELDS),
}
RESULT_COLUMNS: dict[str, ResultColumn] = {**RUN_COLUMNS, **TRAINED_COLUMNS}


def result_columns(result: dict[str, Any]) -> dict[str, Any]:
    """The ``student_checkpoint`` values of one run's result (:data:`RESULT_COLUMNS`); a field a trainer older
    than it did not write is null."""
    return {column: result.get(spec.field) for column, spec in RESULT_COLUMNS.items()}


def loss_curve(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per logged training step of the Trainer's ``state.log_history``, oldest first.

    The history is saved with every checkpoint and restored on resume, so a resumed run's curve holds the steps
    before the resume too (the end-of-training summary, which has no ``loss``, is left out).
    """
    points: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        if "loss" not in entry or "step" not in entry:
            continue
        values = {**entry, "tokens_seen": entry.get("num_input_tokens_seen")}
        point = {name: finite(values.get(name)) for name in CURVE_FIELDS}
        point["step"] = int(entry["step"])
        point["tokens_seen"] = int(point["tokens_seen"]) if point["tokens_seen"] is not None else None
        points[point["step"]] = point  # a step logged twice keeps its last entry
    return [points[step] for step in sorted(points)]


def finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def make_log_callback(output_dir: Path, on_log: Callable[[dict], None] | None, counter: Any = None):
    from transformers import TrainerCallback  # deferred: heavy

    class _StepLog(TrainerCallback):
        """One entry per logging step -> train_log.jsonl and ``on_log``; times the training loop.  ``counter``
        (:func:`~orion_assets.training.budget.make_budget_counter`) gives each entry its completion tokens."""

        def __init__(self) -> None:
            self.t_begin: float | None = None
            self.t_end: float | None = None
            self.cpu_begin = 0.0
            self.cpu_end = 0.0
            self.tokens_begin = 0
            self.tokens_end = 0
            self.summary: dict[str, Any] = {}
            self.last_loss: float | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.t_begin = time.perf_counter()
            self.cpu_begin = time.process_time()
            self.tokens_begin = int(state.num_input_tokens_seen or 0)

        def on_train_end(self, args, state, control, **kwargs):
            self.t_end = time.perf_counter()
            self.cpu_end = time.process_time()
            self.tokens_end = int(state.num_input_tokens_seen or 0)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            if "loss" not in logs:  # the end-of-training summary (train_runtime, train_loss, ...)
                self.summary = dict(logs)
                return
            elapsed = time.perf_counter() - (self.t_begin or time.perf_counter())
            tokens = int(state.num_input_tokens_seen or 0)
            entry = {
                "step": int(state.global_step),
                "epoch": finite(state.epoch),
                "loss": finite(logs.get("loss")),
                "learning_rate": finite(logs.get("learning_rate")),
                "grad_norm": finite(logs.get("grad_norm")),
                "num_tokens": tokens,
                "completion_tokens": counter.completion_tokens if counter is not None else None,
                "mean_token_accuracy": finite(logs.get("mean_token_accuracy")),
                "entropy": finite(logs.get("entropy")),
                "elapsed_s": round(elapsed, 4),
                "tokens_per_second": round((tokens - self.tokens_begin) / elapsed, 2) if elapsed > 0 else None,
                "world_size": int(args.world_size),
                "effective_batch_size": int(
                    args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
                ),
            }
            self.last_loss = entry["loss"]
            with (output_dir / TRAIN_LOG_FILE).open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
            if on_log is not None:
                on_log(dict(entry))

    return _StepLog()

