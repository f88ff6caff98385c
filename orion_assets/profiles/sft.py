"""The profile's [sft] section: the project's own SFT keys, the ``trl.SFTConfig`` fields it passes through under
TRL's names, and the ones the SFT code sets itself (refused in [sft.training_args])."""

from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from orion_assets.profiles.k8s import K8sConfig
from orion_assets.profiles.section import Section
from orion_assets.vocabulary import REFERENCE_VARIANT, TRAINING_VARIANTS

#: What one SFT run's length is matched on across variants (docs/sft.md, "Budgets").
SFTBudget = Literal["epochs", "steps", "tokens"]

#: What a resume does when its checkpoint was trained with another effective batch size (docs/sft.md, "World size").
WorldSizeChange = Literal["refuse", "rescale"]


#: LoRA target modules for Qwen2 / Llama-style decoders (attention and MLP projections).
DEFAULT_LORA_TARGET_MODULES: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)

#: The [sft] keys that are ``trl.SFTConfig`` fields, named as TRL names them and passed through as they are.
SFT_TRAINER_FIELDS: tuple[str, ...] = (
    "num_train_epochs",
    "max_steps",
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "save_steps",
    "save_total_limit",
    "logging_steps",
    "seed",
)

#: Former short [sft] names of two of them: a profile that sets one is told the new name.
SFT_RENAMED_KEYS: dict[str, str] = {"epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size"}

#: ``trl.SFTConfig`` fields the SFT code sets itself (refused in [sft.training_args]), and why.
SFT_RESERVED_ARGS: dict[str, str] = {
    "output_dir": "the pipeline chooses the run's directory",
    "resume_from_checkpoint": "a rerun resumes from the latest complete checkpoint by itself",
    "max_length": "set [sft] max_length: longer examples are dropped, and TRL's max_length stays None so that "
    "nothing is ever truncated",
    "completion_only_loss": "the loss is on the completion and its end-of-turn token, always",
    "assistant_only_loss": "the loss is on the completion and its end-of-turn token, always",
    "packing": "examples are trained one per sequence, whole",
    "eos_token": "set [sft] eos_token",
    "chat_template_path": "the examples are tokenized with the base model's own chat template",
    "bf16": "set [sft] bf16",
    "gradient_checkpointing": "set [sft] gradient_checkpointing",
    "activation_checkpointing": "set [sft] gradient_checkpointing",
    "use_cpu": "set [sft] device",
    "include_num_input_tokens_seen": "tokens_seen (result, log and resume) is counted with it",
    "logging_strategy": "every logging_steps steps is what train_log.jsonl records",
    "save_strategy": "checkpoints every save_steps steps are what a rerun resumes from",
    "restore_callback_states_from_checkpoint": "a resumed run restores its completion-token counts itself",
    "report_to": "set [tracking] backend",
    **{name: f"set [sft] {name}" for name in SFT_TRAINER_FIELDS},
}


@functools.cache
def trl_sft_config_fields() -> frozenset[str]:
    """The field names of the installed ``trl.SFTConfig`` (TrainingArguments + TRL's own); imports TRL."""
    import trl  # deferred: heavy (torch); a profile without [sft.training_args] never imports it

    return frozenset(f.name for f in dataclasses.fields(trl.SFTConfig))


def check_training_args(args: dict[str, Any]) -> None:
    """Refuse, naming it, a [sft.training_args] key that is not a ``trl.SFTConfig`` field or that the SFT code
    sets itself.  Only a non-empty table imports TRL."""
    for key in sorted(args):
        if key in SFT_RESERVED_ARGS:
            raise PydanticCustomError(
                "sft_reserved_arg",
                "'sft.training_args.{key}' cannot be set here: {why}",
                {"key": key, "why": SFT_RESERVED_ARGS[key]},
            )
        fields = trl_sft_config_fields()
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields - set(SFT_RESERVED_ARGS)), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise PydanticCustomError(
                "sft_unknown_arg",
                "unknown key 'sft.training_args.{key}': not a trl.SFTConfig / TrainingArguments field{hint}",
                {"key": key, "hint": hint},
            )


class SFTSettings(Section):
    """What one SFT run trains with: the profile's [sft] keys but ``launcher`` (``TrainParams`` extends it).

    The project's own keys (LoRA, ``max_length``, device, precision, ``eos_token``), the common ``trl.SFTConfig``
    fields under TRL's names (:data:`SFT_TRAINER_FIELDS`), and [sft.training_args]: any other ``trl.SFTConfig``
    field, checked against the installed TRL when the profile loads (:data:`SFT_RESERVED_ARGS` refused).
    """

    lora: bool = True
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = 32
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lora_target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_LORA_TARGET_MODULES))
    max_length: int = Field(4096, ge=16)
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N
    bf16: bool | None = None  # None: bf16 mixed precision on CUDA with bf16 support, fp32 elsewhere
    gradient_checkpointing: bool | None = None  # None: on CUDA only (TRL turns it on everywhere)
    eos_token: str | None = None
    # trl.SFTConfig fields (SFT_TRAINER_FIELDS)
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = -1  # -1: run num_train_epochs epochs
    learning_rate: float = Field(2e-4, gt=0)
    per_device_train_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    save_steps: int = Field(50, ge=1)
    save_total_limit: int | None = Field(2, ge=1)  # checkpoints kept (None: all)
    logging_steps: int = Field(1, ge=1)
    seed: int = 0
    # Every trained variant is trained (and evaluated) once per seed; None: [seed] alone. The leaderboard gives
    # mean +- sd over seeds and the paired intervals pooled over them.
    seeds: list[int] | None = Field(None, min_length=1)
    training_args: dict[str, Any] = Field(default_factory=dict)
    # epochs: num_train_epochs over the variant's data (or max_steps when > 0); steps: exactly max_steps optimizer
    # steps; tokens: until budget_tokens completion (loss) tokens are trained on. Declared after the keys it checks.
    budget_tokens: int | None = None
    budget: SFTBudget = Field("epochs", validate_default=True)
    # A resume under another world size (GPU count) than its checkpoint's would change the effective batch size
    # (per_device_train_batch_size x gradient_accumulation_steps x world size): refuse it, or rescale
    # gradient_accumulation_steps to keep it when it divides evenly. Not in the config hash.
    on_world_size_change: WorldSizeChange = "refuse"
    # Train every variant of a student only on the problems all its trained variants kept (sft_dataset; docs/quality.md,
    # "Common problems"), so that they are compared on the same problems. Not in the config hash: the data is.
    common_problems: bool = False
    # SFT_RENAMED_KEYS: never set (refused with the new name), never dumped
    epochs: None = Field(None, exclude=True, repr=False)
    batch_size: None = Field(None, exclude=True, repr=False)

    @field_validator("training_args")
    @classmethod
    def _known_training_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_training_args(value)
        return value

    @field_validator("budget")
    @classmethod
    def _budget_has_its_value(cls, value: str, info: ValidationInfo) -> str:
        max_steps, tokens = info.data.get("max_steps", -1), info.data.get("budget_tokens")
        if value == "steps" and max_steps <= 0:
            problem = "needs [sft] max_steps > 0 (the optimizer steps every variant trains)"
        elif value == "tokens" and (tokens is None or tokens <= 0):
            problem = "needs [sft] budget_tokens > 0 (the completion tokens every variant trains on)"
        elif value == "tokens" and max_steps > 0:
            problem = f"stops at [sft] budget_tokens, so [sft] max_steps = {max_steps} cannot apply: set max_steps = -1"
        elif value != "tokens" and tokens is not None:
            problem = "does not use [sft] budget_tokens: set budget = \"tokens\" or leave budget_tokens unset"
        else:
            return value
        raise PydanticCustomError("sft_budget", '[sft] budget = "{budget}" {problem}', {"budget": value, "problem": problem})

    @field_validator(*SFT_RENAMED_KEYS, mode="before")
    @classmethod
    def _renamed(cls, value: Any, info: ValidationInfo) -> Any:
        raise PydanticCustomError(
            "sft_renamed_key",
            "renamed: set 'sft.{new}' (trl.SFTConfig's name)",
            {"new": SFT_RENAMED_KEYS[info.field_name]},
        )

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"[sft] seeds repeats a seed: {value}")
        return value

    @property
    def all_seeds(self) -> list[int]:
        return list(self.seeds) if self.seeds is not None else [self.seed]

    def trainer_args(self) -> dict[str, Any]:
        """The ``trl.SFTConfig`` keyword arguments these settings give (the SFT code adds the reserved ones)."""
        return {name: getattr(self, name) for name in SFT_TRAINER_FIELDS} | self.training_args


class SFTSection(SFTSettings):
    """The profile's [sft] table: the run's settings, the variants it trains and the command that launches the
    SFT process."""

    launcher: list[str] = Field(default_factory=lambda: ["{python}", "-m", "orion_assets.training.main"])
    # The dagster-k8s/config tag of the student_checkpoint asset (its pod on Kubernetes); None: no tag.
    k8s: K8sConfig | None = None
    # The trained variants this profile makes (teacher_sft always: every delta is taken over it); the others are
    # skipped, with their reflection modes and baselines. Not in the config hash: which runs, not how.
    variants: list[str] = Field(default_factory=lambda: list(TRAINING_VARIANTS))

    @field_validator("variants")
    @classmethod
    def _known_variants(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in TRAINING_VARIANTS]
        if unknown or REFERENCE_VARIANT not in value or len(set(value)) < len(value):
            raise ValueError(f"[sft] variants = {value}: name each at most once, among {', '.join(TRAINING_VARIANTS)}, "
                             f"and include {REFERENCE_VARIANT} (every delta is taken over it)")
        return value


