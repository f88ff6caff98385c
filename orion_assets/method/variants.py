"""Which variants a profile can make honestly, and why not the others."""

from __future__ import annotations

from typing import Any

from orion_assets.vocabulary import MODE_VARIANT


def skipped_modes(config: Any) -> dict[str, str]:
    """Modes this profile cannot run honestly, with the reason (an ``OrionConfig``)."""
    if config.endpoints.teacher.backend == "replay":
        return {
            "no_reflection": (
                "the replay teacher answers every prompt with its own dataset CoT, so orion_no_reflection "
                "would equal teacher_sft byte for byte; it needs an openai or hf teacher"
            )
        }
    return {}


def skipped_variants(config: Any) -> dict[str, str]:
    """The model variants this profile leaves out (see :func:`skipped_modes`), with the reason."""
    return {MODE_VARIANT[mode]: why for mode, why in skipped_modes(config).items()}
