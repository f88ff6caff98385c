"""SFT of the student (DESIGN.md section 2 step 6), run as its own process through Dagster Pipes.

Plain functions here (docs/sft.md), none of which imports Dagster; the Dagster side is
:mod:`orion_assets.io.sft_pipes`, in the Dagster layer.
"""

from __future__ import annotations

from orion_assets.profiles.sft import DEFAULT_LORA_TARGET_MODULES
from orion_assets.training.checkpoints import find_resume_checkpoint, read_train_log
from orion_assets.training.config import (
    FINAL_DIR,
    PARAMS_FILE,
    RESULT_FILE,
    TRAIN_LOG_FILE,
    TrainParams,
    config_hash,
    launch_command,
)
from orion_assets.training.data import SFTDataStats, tokenize_dataset, tokenize_example, write_sft_parquet
from orion_assets.training.trainer import PreparedSFT, TrainResult, build_trainer, load_trained_model, train

__all__ = [
    "DEFAULT_LORA_TARGET_MODULES",
    "FINAL_DIR",
    "PARAMS_FILE",
    "RESULT_FILE",
    "TRAIN_LOG_FILE",
    "PreparedSFT",
    "SFTDataStats",
    "TrainParams",
    "TrainResult",
    "build_trainer",
    "config_hash",
    "find_resume_checkpoint",
    "launch_command",
    "load_trained_model",
    "read_train_log",
    "tokenize_dataset",
    "tokenize_example",
    "train",
    "write_sft_parquet",
]
