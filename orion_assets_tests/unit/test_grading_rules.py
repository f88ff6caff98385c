"""The grading rules of GRADING_RULES on one table of held-out cases: each reply graded under every rule.

Every rule gives another verdict than the others on at least one case (asserted), so a rule that silently
fell back to another one fails here. The rules and their sources: docs/grading.md.
"""

from __future__ import annotations

import pytest

from orion_assets.method.grading import grade, grade_batch
from orion_assets.vocabulary import GRADING_RULES

CUT_AFTER_A_BOX = r"Half of 84 is \boxed{42}. Let me double-check: 4"
CUT_INSIDE_A_LATER_BOX = r"So far \boxed{42}. Wait, maybe it is \boxed{4"

# (reply, gold, benchmark, truncated) -> {rule: correct}
CASES = [
    # a truncated reply with a closed box before the cut: strict never counts it, the others read the box
    ((CUT_AFTER_A_BOX, "42", "gsm8k", True), {"strict": False, "qwen_math": True, "lighteval": True}),
    # cut inside a later box: Qwen's parser reads that box up to the cut, math_verify the closed one before it
    ((CUT_INSIDE_A_LATER_BOX, "42", "gsm8k", True), {"strict": False, "qwen_math": False, "lighteval": True}),
    ((CUT_INSIDE_A_LATER_BOX, "4", "gsm8k", True), {"strict": False, "qwen_math": True, "lighteval": False}),
    # the same replies, not cut: every rule reads the last closed box
    ((CUT_AFTER_A_BOX, "42", "gsm8k", False), {"strict": True, "qwen_math": True, "lighteval": True}),
    # GSM-Hard float golds: precision shown (strict), relative 1e-4 (qwen_math), 5 decimals (lighteval)
    ((r"\boxed{1234.568}", 1234.5678, "gsm_hard", False), {"strict": True, "qwen_math": True, "lighteval": False}),
    ((r"\boxed{5.33}", 5.3333333333, "gsm_hard", False), {"strict": True, "qwen_math": False, "lighteval": False}),
    ((r"\boxed{-9867000}", -9867630.0, "gsm_hard", False), {"strict": False, "qwen_math": True, "lighteval": False}),
    ((r"\boxed{1234.5678}", 1234.5678, "gsm_hard", False), {"strict": True, "qwen_math": True, "lighteval": True}),
    # \frac vs decimal
    ((r"\boxed{0.33333}", r"\frac{1}{3}", "math500", False), {"strict": False, "qwen_math": True, "lighteval": True}),
    ((r"\boxed{0.333}", r"\frac{1}{3}", "math500", False), {"strict": False, "qwen_math": False, "lighteval": False}),
    ((r"\boxed{\frac{1}{2}}", "0.5", "math500", False), {"strict": True, "qwen_math": True, "lighteval": True}),
    # Qwen's include_percentage: the gold x100 counts, without a percent sign
    ((r"\boxed{50}", "0.5", "gsm8k", False), {"strict": False, "qwen_math": True, "lighteval": False}),
    # replies without a box
    (("So she has 18 dollars left.", "18", "gsm8k", False), {"strict": True, "qwen_math": True, "lighteval": True}),
    (("The answer is 7.", "8", "gsm8k", False), {"strict": False, "qwen_math": False, "lighteval": False}),
    # thinking: strict and lighteval read after </think>, Qwen's parser the whole text
    ((r"<think>maybe \boxed{3}</think> The answer is 5.", "5", "math500", False),
     {"strict": True, "qwen_math": False, "lighteval": True}),
]


@pytest.mark.parametrize("rule", GRADING_RULES)
def test_each_rule_grades_the_table(rule):
    got = [grade(reply, gold, bench, rule=rule, truncated=cut).correct for (reply, gold, bench, cut), _ in CASES]
    assert got == [expected[rule] for _, expected in CASES]


def test_grade_batch_gives_grade_s_verdicts_under_every_rule():
    pairs = [(reply, gold) for (reply, gold, _, _), _ in CASES]
    benches = [bench for (_, _, bench, _), _ in CASES]
    cuts = [cut for (_, _, _, cut), _ in CASES]
    for rule in GRADING_RULES:
        assert grade_batch(pairs, benches, rule=rule, truncated=cuts) == [
            grade(reply, gold, bench, rule=rule, truncated=cut) for (reply, gold, bench, cut), _ in CASES]


def test_every_rule_differs_from_the_others_on_some_case():
    for rule in GRADING_RULES:
        others = [r for r in GRADING_RULES if r != rule]
        assert any(all(expected[rule] != expected[o] for o in others) for _, expected in CASES), rule


def test_what_each_rule_reads_from_a_cut_reply():
    assert grade(CUT_INSIDE_A_LATER_BOX, "42", "gsm8k", truncated=True).reason == "truncated"
    assert grade(CUT_INSIDE_A_LATER_BOX, "42", "gsm8k", rule="qwen_math", truncated=True).extracted == "4"
    assert grade(CUT_INSIDE_A_LATER_BOX, "42", "gsm8k", rule="lighteval", truncated=True).extracted == "42"
    # cut while thinking: nothing after </think> for lighteval; Qwen's parser reads the box inside
    assert grade(r"<think>maybe \boxed{3}", "3", rule="lighteval", truncated=True).reason == "no_answer"
    assert grade(r"<think>maybe \boxed{3}", "3", rule="qwen_math", truncated=True).correct
    for rule in GRADING_RULES:
        assert not grade("", "3", rule=rule).correct
