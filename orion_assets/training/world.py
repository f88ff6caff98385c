"""The world size an SFT run trains with: recorded in each checkpoint, compared on resume ([sft]
``on_world_size_change``; docs/sft.md, "World size").

The run's directory hash leaves out the launcher, so a rerun under another GPU count resumes the same
checkpoints; the effective batch size (per_device_train_batch_size x gradient_accumulation_steps x world size)
would change mid-run without this check.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: The record's name in a checkpoint's ``trainer_state.json`` (``stateful_callbacks``).
LAUNCH_STATE_KEY = "SFTLaunchState"


@dataclass(frozen=True)
class BatchShape:
    """How many examples one optimizer step takes, and from how many processes."""

    world_size: int
    per_device_train_batch_size: int
    gradient_accumulation_steps: int

    @property
    def effective_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.world_size

    def describe(self) -> str:
        return (
            f"world size {self.world_size} (per_device_train_batch_size {self.per_device_train_batch_size} x "
            f"gradient_accumulation_steps {self.gradient_accumulation_steps} x world size {self.world_size} = "
            f"effective batch size {self.effective_batch_size})"
        )


def batch_shape_of(args: Any) -> BatchShape:
    """The shape a ``TrainingArguments`` trains with; ``world_size`` is accelerate's ``num_processes`` as this
    process sees it (``WORLD_SIZE`` under ``accelerate launch`` / torchrun, else 1)."""
    return BatchShape(
        int(args.world_size), int(args.per_device_train_batch_size), int(args.gradient_accumulation_steps)
    )


def checkpoint_batch_shape(checkpoint: Path) -> BatchShape | None:
    """The shape ``checkpoint`` was trained with (None for a checkpoint saved before it was recorded)."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    saved = (state.get("stateful_callbacks") or {}).get(LAUNCH_STATE_KEY)
    if isinstance(saved, list):
        saved = saved[-1] if saved else None
    if not saved or not saved.get("args"):
        return None
    return BatchShape(**{k: int(saved["args"][k]) for k in BatchShape.__dataclass_fields__})


def resume_accumulation(saved: BatchShape | None, now: BatchShape, policy: str, checkpoint: Path) -> int:
    """The ``gradient_accumulation_steps`` a run resumed from ``checkpoint`` (trained as ``saved``) continues
    with: ``now``'s when the effective batch size is the same (or nothing was recorded); under ``"rescale"`` the
    one that keeps the checkpoint's effective batch size when it divides evenly; else refused (ValueError)."""
    if saved is None or saved.effective_batch_size == now.effective_batch_size:
        return now.gradient_accumulation_steps
    per_step = now.per_device_train_batch_size * now.world_size
    if policy == "rescale":
        if saved.effective_batch_size % per_step == 0:
            return saved.effective_batch_size // per_step
        why = (
            f'[sft] on_world_size_change = "rescale" cannot keep it: {saved.effective_batch_size} is not a multiple '
            f"of per_device_train_batch_size x world size = {per_step}"
        )
    else:
        why = (
            f'[sft] on_world_size_change = "{policy}"; set it to "rescale" to rescale gradient_accumulation_steps '
            f"and keep the effective batch size"
        )
    raise ValueError(
        f"{checkpoint} was trained at {saved.describe()}; this run has {now.describe()}: resuming would change the "
        f"effective batch size mid-run ({why}). Launch it with {saved.world_size} process(es) ([sft] launcher), or "
        f"start over (another output_dir, or resume=False)"
    )


def make_launch_state(shape: BatchShape):
    """A callback that saves ``shape`` in every checkpoint's ``trainer_state.json`` (read back by
    :func:`checkpoint_batch_shape`)."""
    from transformers import TrainerCallback  # deferred: heavy
    from transformers.trainer_callback import ExportableState

    class SFTLaunchState(TrainerCallback, ExportableState):
        def __init__(self, **shape: int) -> None:
            self.shape = BatchShape(**shape)

        def state(self) -> dict[str, Any]:
            return {"args": asdict(self.shape), "attributes": {}}

        def on_train_begin(self, args, state, control, **kwargs):
            # A state resumed from a checkpoint saved before this record lacks its key, and the Trainer's save
            # updates the keys it finds (a KeyError otherwise).
            state.stateful_callbacks.setdefault(LAUNCH_STATE_KEY, self.state())
            return control

    assert SFTLaunchState.__name__ == LAUNCH_STATE_KEY
    return SFTLaunchState(**asdict(shape))
