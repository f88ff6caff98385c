"""Which variants a profile makes, and why not the others: those it does not choose ([sft] variants), and
those it cannot make honestly."""

from __future__ import annotations

from typing import Any

from orion_assets.vocabulary import BASE_VARIANT, BASELINE_TABLE, MODE_TABLE, VARIANTS

NOT_CHOSEN = "not in [sft] variants"


def _thinking_free_teacher(config: Any) -> bool:
    """A replay teacher reading a dataset column: worked solutions, never a thinking part."""
    teacher = config.endpoints.teacher
    return teacher.backend == "replay" and not teacher.replay_file


def skipped_modes(config: Any) -> dict[str, str]:
    """Reflection modes this profile does not run, with the reason (an ``OrionConfig``)."""
    skipped = {m.name: NOT_CHOSEN for m in MODE_TABLE if m.variant not in config.sft.variants}
    if config.endpoints.teacher.backend == "replay":
        skipped["no_reflection"] = (
            "the replay teacher answers every prompt with its own dataset CoT, so orion_no_reflection "
            "would equal teacher_sft byte for byte; it needs an openai or hf teacher"
        )
    return skipped


def skipped_baselines(config: Any) -> dict[str, str]:
    """Baselines this profile does not make, with the reason."""
    skipped = {b.variant: NOT_CHOSEN for b in BASELINE_TABLE if b.variant not in config.sft.variants}
    if _thinking_free_teacher(config):
        skipped.update({
            b.variant: ("the replay teacher's CoTs are dataset solutions with no thinking to set apart, so "
                        f"{b.variant} would equal teacher_sft byte for byte; it needs a reasoning teacher")
            for b in BASELINE_TABLE if b.needs_thinking
        })
    return skipped


def skipped_variants(config: Any) -> dict[str, str]:
    """The trained variants this profile leaves out (:func:`skipped_modes`, :func:`skipped_baselines`), with
    the reason."""
    by_mode = {m.variant: skipped_modes(config)[m.name] for m in MODE_TABLE if m.name in skipped_modes(config)}
    return by_mode | skipped_baselines(config)


def made_variants(config: Any) -> list[str]:
    """The variants this profile makes, in the vocabulary's order: ``base`` (the untrained student, always) and
    each trained variant :func:`skipped_variants` does not leave out. Its partitions are these (io/partitions.py)."""
    skipped = skipped_variants(config)
    return [v for v in VARIANTS if v == BASE_VARIANT or v not in skipped]


def unused_endpoint_variants(config: Any) -> dict[str, str]:
    """The ``[endpoints.student.variants]`` entries this profile never asks, with the reason: ``base`` (the base
    weights are asked of ``[endpoints.student]`` itself) and a variant it does not make."""
    skipped = skipped_variants(config)
    unused = {}
    for variant in config.endpoints.student.variants:
        if variant == BASE_VARIANT:
            unused[variant] = "the untrained student is asked of [endpoints.student] itself"
        elif variant in skipped:
            unused[variant] = f"the profile does not make {variant} ({skipped[variant]})"
    return unused
