"""One SFT run's parameters (:class:`TrainParams`), their hash and the files a run writes.

:class:`TrainParams` is the profile's [sft] section (:class:`~orion_assets.profiles.sft.SFTSettings`) plus
paths and run options; :func:`config_hash` names what decides the trained weights.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, field_validator

from orion_assets.ids import content_id, file_sha256, model_fingerprint, sha256_json
from orion_assets.profiles.sft import SFTSettings

TRAIN_LOG_FILE = "train_log.jsonl"
RESULT_FILE = "result.json"
PARAMS_FILE = "train_params.json"
DATA_CACHE_DIR = "data_cache"  # the tokenized examples (Arrow), reused on resume
FINAL_DIR = "final"
FINAL_INFO_FILE = "orion_sft.json"

#: Fields that do not change the trained weights (bookkeeping, where things are written, how often they are saved).
#: ``base_model_path`` and ``dataset_path`` are replaced by fingerprints of what they point at.
_HASH_EXCLUDED = frozenset(
    {
        "base_model_path",
        "dataset_path",
        "output_dir",
        "resume",
        "save_steps",
        "save_total_limit",
        "logging_steps",
        "gradient_checkpointing",
        "base_model_hash",
        "on_world_size_change",  # what a resume under another world size does (it refuses, or keeps the batch)
        "report_to",  # where the curves are logged ([tracking])
        "common_problems",  # which rows sft_dataset writes: the dataset file's bytes carry it
    }
)


class TrainParams(SFTSettings):
    """Everything one SFT run needs: the profile's [sft] settings (but ``launcher`` and ``k8s``, which stay with
    the asset) plus where things are and run options.  JSON-serializable; validated like the profile."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_model_path: str
    dataset_path: str
    output_dir: str
    resume: bool = True  # continue from the latest complete checkpoint in output_dir
    base_model_hash: str | None = None  # e.g. BuiltModel.config_hash; None: fingerprint the files
    # TRL's report_to: the trackers the curves go to ([tracking], training/tracking.py); empty: none
    report_to: list[str] = Field(default_factory=list)

    @field_validator("base_model_path", "dataset_path", "output_dir", mode="before")
    @classmethod
    def _path_str(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> TrainParams:
        if isinstance(data, str):
            data = json.loads(data)
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            raise ValueError(f"unknown TrainParams keys: {unknown}")
        return cls.model_validate(dict(data))

    @classmethod
    def from_sft_config(
        cls,
        sft: Any,
        *,
        base_model_path: str | os.PathLike,
        dataset_path: str | os.PathLike,
        output_dir: str | os.PathLike,
        **overrides: Any,
    ) -> TrainParams:
        """Build from a profile's [sft] section (pydantic model or mapping); ``launcher``, ``k8s`` and ``variants``
        (where the process runs and which variants run, not what one trains) are left out."""
        values = sft.model_dump() if hasattr(sft, "model_dump") else dict(sft)
        for not_training in ("launcher", "k8s", "variants"):
            values.pop(not_training, None)
        values.update(overrides)
        return cls(base_model_path=base_model_path, dataset_path=dataset_path, output_dir=output_dir, **values)


def launch_command(launcher: Sequence[str], python: str | None = None) -> list[str]:
    """Expand ``{python}`` (default ``sys.executable``) in the profile's launcher command.

    ``["{python}", "-m", "orion_assets.training.main"]`` -> ``["/path/python", "-m", ...]``;
    ``["accelerate", "launch", "-m", "orion_assets.training.main"]`` is returned as is.
    """
    if not launcher:
        raise ValueError("empty SFT launcher command")
    py = python or sys.executable
    return [str(part).replace("{python}", py) for part in launcher]


def config_hash(params: TrainParams) -> str:
    """A hash of what determines the trained weights (16 hex chars).

    Included: every hyperparameter and [sft.training_args] key, the budget (``budget``, ``budget_tokens``), device
    and bf16 as given (they change numerics),
    the dataset file's bytes and the base model (``base_model_hash``, else a fingerprint of its directory).
    Excluded: :data:`_HASH_EXCLUDED` (where and how often things are written, or the memory/speed trade-off).
    """
    values = {k: v for k, v in params.to_json().items() if k not in _HASH_EXCLUDED}
    dataset = Path(params.dataset_path)
    values["dataset_sha256"] = file_sha256(dataset) if dataset.is_file() else f"missing:{dataset}"
    values["base_model"] = params.base_model_hash or model_fingerprint(params.base_model_path)
    values["lora_target_modules"] = sorted(values["lora_target_modules"])
    if not values["training_args"]:  # an empty table leaves the hash as if the key did not exist
        values.pop("training_args")
    if values["budget"] == "epochs":  # the default budget (and no budget_tokens) leaves the hash as before the keys
        values.pop("budget")
    if values["budget_tokens"] is None:
        values.pop("budget_tokens")
    if not params.lora:  # LoRA settings do not matter for full fine-tuning
        for k in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"):
            values.pop(k)
    return sha256_json(values)[:16]


@dataclass(frozen=True)
class PlannedRun:
    """Where and as what one SFT run of a variant lands: the same base, data and settings give the same directory
    (so a killed run resumes from its checkpoint) and the same checkpoint id."""

    data_hash: str
    run_hash: str
    config_hash: str
    checkpoint_id: str
    output_dir: Path


def plan_run(sft: SFTSettings, *, base_model_path: str, base_model_hash: str, dataset_path: str | os.PathLike,
             example_ids: Sequence[str], checkpoints_dir: Path, student: str, variant: str) -> PlannedRun:
    """The :class:`PlannedRun` of training ``variant`` of ``student`` on ``example_ids`` with ``sft``."""
    probe = TrainParams.from_sft_config(sft, base_model_path=base_model_path, dataset_path=dataset_path,
                                        output_dir="-", base_model_hash=base_model_hash)
    data_hash, weights = content_id(sorted(example_ids)), config_hash(probe)
    run_hash = content_id(weights, data_hash)
    return PlannedRun(data_hash, run_hash, weights, content_id("checkpoint", student, variant, run_hash),
                      checkpoints_dir / student / variant / run_hash)
