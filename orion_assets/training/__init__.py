"""SFT of the student (DESIGN.md section 2 step 6), run as its own process through Dagster Pipes.

* :mod:`orion_assets.training.sft` -- plain typed functions: :class:`TrainParams` (the profile's [sft] settings,
  declared once in :class:`orion_assets.profiles.schema.SFTSettings`, plus paths), :func:`train`,
  :func:`config_hash`, :func:`launch_command`, the streamed tokenization that decides the loss mask and which
  examples are too long (dropped, never truncated).
* :mod:`orion_assets.training.main` -- the process entry point (``python -m orion_assets.training.main``,
  or ``accelerate launch -m orion_assets.training.main``).
* :mod:`orion_assets.training.pipes` -- :func:`run_sft_with_pipes`, which the ``student_checkpoint`` asset calls.

The heavy imports (torch, transformers, TRL, PEFT, Dagster) happen inside the functions that need them, so
importing this package is cheap.
"""

from __future__ import annotations

from orion_assets.training.sft import (
    DEFAULT_LORA_TARGET_MODULES,
    TrainParams,
    TrainResult,
    config_hash,
    launch_command,
    load_trained_model,
    train,
    write_sft_parquet,
)

__all__ = [
    "DEFAULT_LORA_TARGET_MODULES",
    "TrainParams",
    "TrainResult",
    "config_hash",
    "launch_command",
    "load_trained_model",
    "run_sft_with_pipes",
    "train",
    "write_sft_parquet",
]


def __getattr__(name: str):  # lazy: pipes.py imports dagster
    if name == "run_sft_with_pipes":
        from orion_assets.training.pipes import run_sft_with_pipes

        return run_sft_with_pipes
    raise AttributeError(name)
