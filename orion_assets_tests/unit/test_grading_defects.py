"""Six answer-grading defects a reviewer found, one test each, under every grading rule they concern.

Each reply is graded as a person reads it; the deliberate rules stay (the last box wins for a single answer,
a cut reply is never right, GSM-Hard's precision rule). Rules: docs/grading.md.
"""

from __future__ import annotations

import pytest

from orion_assets.method.grading import answer_key, extract_answer, grade

# the two rules that read the reply with this project's extractor; lighteval reads it with math_verify's own
EXTRACTOR_RULES = ("strict", "qwen_math")
ALL_RULES = ("strict", "qwen_math", "lighteval")

FINAL_ANSWER_SENTENCE = (
    "Tom has 3 bags of 15 marbles each.\n3 * 15 = 45\n\nFinal Answer: The total number of marbles is 45."
)
ROOT_IN_LATEX = "x^2 - x - 1 = 0 has roots (1 +- sqrt 5)/2.\nThe positive root is $\\frac{1+\\sqrt{5}}{2}$."
BOX_THEN_FINAL_LINE = (
    "First I thought the sum was $\\boxed{255}$, but I forgot the other terms.\n"
    "Adding them all: 255 + 10,200 = 10,455.\n\nFinal Answer: The final answer is $10,455$."
)
TWO_BOXES = "Checking each case, the solutions are $\\boxed{(2, 2)}$ and $\\boxed{(6, 2)}$."


@pytest.mark.parametrize("rule", ALL_RULES)
def test_a_final_answer_sentence_is_read_for_its_number(rule):
    v = grade(FINAL_ANSWER_SENTENCE, "45", rule=rule)
    assert v.correct, v
    assert not grade(FINAL_ANSWER_SENTENCE, "46", rule=rule).correct
    if rule in EXTRACTOR_RULES:
        assert v.extracted == "45", v


@pytest.mark.parametrize("rule", ALL_RULES)
def test_a_comma_and_a_space_separate_two_numbers_not_thousands(rule):
    v = grade("\\boxed{12, 345}", "12345", rule=rule)
    assert not v.correct, v
    assert grade("\\boxed{12,345}", "12345", rule=rule).correct  # a thousands separator: no space after it
    assert grade("\\boxed{12, 345}", "12, 345", rule=rule).correct
    if rule == "strict":
        assert answer_key("12, 345") != answer_key("12345") == answer_key("12,345")


@pytest.mark.parametrize("rule", ALL_RULES)
def test_a_leading_zero_group_is_not_a_thousands_group(rule):
    """Gold ``0,111`` is a list of two numbers (0 and 111), never 111."""
    v = grade("\\boxed{111}", "0,111", rule=rule)
    assert not v.correct, v
    if rule in EXTRACTOR_RULES:
        assert grade("\\boxed{0, 111}", "0,111", rule=rule).correct
        assert grade("\\boxed{111, 0}", "0,111", rule=rule).correct  # a list of numbers, order-free
        assert not grade("\\boxed{0.111}", "0,111", rule=rule).correct  # not a decimal comma
        assert answer_key("0,111") != answer_key("111")


@pytest.mark.parametrize("rule", ALL_RULES)
def test_the_last_number_fallback_reads_a_latex_expression_whole_not_a_digit_inside_it(rule):
    v = grade(ROOT_IN_LATEX, "2", rule=rule)
    assert not v.correct, v
    assert not grade(ROOT_IN_LATEX, "5", rule=rule).correct
    assert grade(ROOT_IN_LATEX, "\\frac{1+\\sqrt{5}}{2}", rule=rule).correct
    if rule in EXTRACTOR_RULES:
        assert v.extracted == "\\frac{1+\\sqrt{5}}{2}", v
        # the same without $: a digit inside a bare LaTeX command is no answer either
        bare = "The positive root is \\frac{1+\\sqrt{5}}{2}."
        assert extract_answer(bare) == ("\\frac{1+\\sqrt{5}}{2}", "last_number")
        assert not grade(bare, "2", rule=rule).correct
        # a number after the LaTeX is still the last number; plain numbers in $...$ are numbers
        assert extract_answer("Since $\\sqrt{4} = 2$, we get 7 apples.") == ("7", "last_number")
        assert extract_answer("So she pays $5 \\times 3 = 15$ dollars.") == ("15", "last_number")
        assert extract_answer("Thus $a+b = 121+909 = 1030$.") == ("1030", "last_number")  # an equation's result


@pytest.mark.parametrize("rule", EXTRACTOR_RULES)
def test_a_final_answer_line_after_the_last_box_wins(rule):
    v = grade(BOX_THEN_FINAL_LINE, "10455", rule=rule)
    assert v.correct and v.method == "answer_is", v
    assert not grade(BOX_THEN_FINAL_LINE, "255", rule=rule).correct
    # only a final answer after the last box counts; other prose after it does not displace the box
    assert grade("So the answer is $\\boxed{5}$. Therefore the answer is correct.", "5", rule=rule).correct
    assert grade("Final Answer: 3. Hmm, no: \\boxed{5}", "5", rule=rule).correct


@pytest.mark.parametrize("rule", ALL_RULES)
def test_several_boxes_are_read_together_against_a_gold_of_several_items(rule):
    v = grade(TWO_BOXES, "(2, 2), (6, 2)", rule=rule)
    assert v.correct, v
    assert grade(TWO_BOXES, "(6, 2), (2, 2)", rule=rule).correct  # as a set: order-free
    assert not grade(TWO_BOXES, "(2, 2), (6, 2), (1, 1)", rule=rule).correct
    if rule in EXTRACTOR_RULES:
        # a single-item gold: the last box wins, as always
        assert grade(TWO_BOXES, "(6, 2)", rule=rule).correct
        assert not grade(TWO_BOXES, "(2, 2)", rule=rule).correct
        # boxes of plain numbers, and one last box that holds the whole list
        assert grade("$\\boxed{3}$ or $\\boxed{-1}$", "-1, 3", rule=rule).correct
        assert not grade("$\\boxed{3}$ or $\\boxed{-2}$", "-1, 3", rule=rule).correct
        assert grade("\\boxed{3}, and so both: \\boxed{-1, 3}", "-1, 3", rule=rule).correct
    if rule == "strict":  # a cut reply is never right
        assert not grade(TWO_BOXES, "(2, 2), (6, 2)", rule=rule, truncated=True).correct
