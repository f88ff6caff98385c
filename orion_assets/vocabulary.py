"""The method's vocabulary, declared once: benchmarks, roles, variants, reflection modes and grading rules.

Every other module (profiles, partitions, assets, report, ``orion check``) reads its names from
here. It sits at the bottom of the package so that the profile schema and the LLM layer can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BENCHMARKS: tuple[str, ...] = ("gsm_hard", "math500", "aime24", "amc23", "gsm8k", "arithmetic")
# The paper's four; GSM8K test and the generated arithmetic word problems (data/README.md) are two a profile
# may add: a 135M student scores above zero on both, and learns the second in minutes.
DEFAULT_BENCHMARKS: tuple[str, ...] = BENCHMARKS[:4]
ROLES: tuple[str, ...] = ("teacher", "student", "judge")
# The student's errors (docs/exposure.md), in the order a reflection prefers to show them: a wrong answer says most,
# a repetition loop nothing.
ERROR_TYPES: tuple[str, ...] = ("wrong_answer", "no_answer", "truncated", "repetition_loop")
# How a reply is graded (docs/grading.md): this project's own rule, and two that published numbers used.
GRADING_RULES: tuple[str, ...] = ("strict", "qwen_math", "lighteval")


@dataclass(frozen=True)
class Mode:
    """A reflection mode: the rows of ``refined_cots`` it makes, who rewrites, what it trains."""

    name: str  # refined_cots.mode
    variant: str  # the SFT variant trained on its refinements
    rewriter: str  # the role that rewrites the teacher's CoT
    shows_error: bool  # whether the rewrite prompt shows the student's wrong attempt
    template: str  # the prompt (orion_assets.method.prompts) when an error is shown


MODE_TABLE: tuple[Mode, ...] = (
    Mode("orion", "orion", "student", True, "reflect_orion"),
    Mode("no_error", "orion_no_error", "student", False, "reflect_no_error"),
    Mode("no_reflection", "orion_no_reflection", "teacher", True, "reflect_no_reflection"),
)
MODES: tuple[str, ...] = tuple(m.name for m in MODE_TABLE)
# The named prompt templates (orion_assets.method.prompts.TEMPLATES), each replaceable under a profile's [prompts].
PROMPTS: tuple[str, ...] = ("solve", *(m.template for m in MODE_TABLE), "judge")
MODE_BY_NAME: dict[str, Mode] = {m.name: m for m in MODE_TABLE}
MODE_ROLE: dict[str, str] = {m.name: m.rewriter for m in MODE_TABLE}
MODE_VARIANT: dict[str, str] = {m.name: m.variant for m in MODE_TABLE}

# Joins student, variant and seed in one partition key: ``tiny/orion/0`` (orion_assets.io.partitions).
PARTITION_SEPARATOR = "/"


@dataclass(frozen=True)
class Baseline:
    """A baseline from the distillation literature, built from artefacts the graph already makes
    (``baseline_cots``; docs/baselines.md)."""

    variant: str  # the SFT variant, and baseline_cots.variant
    trains_on: str  # what its SFT data is
    needs_thinking: bool  # made from the teacher's thinking and solution apart: a teacher without thinking
    # (dataset solutions) would make it equal teacher_sft byte for byte
    own_problems: bool  # trains on the problems the student already solves: outside [sft] common_problems, which
    # would otherwise hold every variant to those (docs/baselines.md)
    reference: str  # where the method comes from


BASELINE_TABLE: tuple[Baseline, ...] = (
    Baseline("rft", "the student's own verified exposure solutions", False, True,
             "rejection-sampling fine-tuning, Yuan et al. 2023, arXiv:2308.01825"),
    Baseline("short_cot", "the teacher's solution without its thinking", True, False,
             "short CoT, Li et al. 2025, arXiv:2502.12143"),
    Baseline("mix_long", "long (teacher_sft's) and short CoTs mixed, 1:4 by default", True, False,
             "Mix-Long, Mix Distillation of Li et al. 2025, arXiv:2502.12143"),
)
BASELINES: tuple[str, ...] = tuple(b.variant for b in BASELINE_TABLE)
BASELINE_BY_VARIANT: dict[str, Baseline] = {b.variant: b for b in BASELINE_TABLE}
OWN_PROBLEMS_VARIANTS: tuple[str, ...] = tuple(b.variant for b in BASELINE_TABLE if b.own_problems)

BASE_VARIANT = "base"  # the untrained student
REFERENCE_VARIANT = "teacher_sft"  # plain distillation: every delta is taken against it
VARIANTS: tuple[str, ...] = (BASE_VARIANT, REFERENCE_VARIANT, *(m.variant for m in MODE_TABLE), *BASELINES)
TRAINING_VARIANTS: tuple[str, ...] = VARIANTS[1:]
# The refined_cots mode each trained variant's data comes from (None: the teacher's own CoTs or a baseline's).
VARIANT_MODE: dict[str, str | None] = {REFERENCE_VARIANT: None, **{m.variant: m.name for m in MODE_TABLE},
                                       **dict.fromkeys(BASELINES)}

Benchmark = Literal[BENCHMARKS]  # type: ignore[valid-type]
Variant = Literal[VARIANTS]  # type: ignore[valid-type]
Role = Literal[ROLES]  # type: ignore[valid-type]
GradingRule = Literal[GRADING_RULES]  # type: ignore[valid-type]
