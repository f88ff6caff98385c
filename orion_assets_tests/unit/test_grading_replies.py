"""Grading whole replies of a real small instruct student (SmolLM2-135M-Instruct's styles) as a person would.

Sampled on GSM8K with the solve prompt, SmolLM2 almost never boxes its answer: it ends with "The answer is: 9",
"#### 555", "So the final answer is 24.", "Final Answer: 2 * 25 + 15 + 10 = 75", "The final answer is 20%." or
"The answer is 20. The correct answer is \\boxed{}.". The replies below are multi-line reasoning in its style,
then such a final line; golds are GSM8K-style integers. Rules: docs/grading.md.
"""

from __future__ import annotations

import pytest

from orion_assets.method.grading import answer_key, extract_answer, grade, grade_batch

# -- replies in the student's style ----------------------------------------------------------------------------

ANSWER_IS_COLON = (
    "To find out how many cookies each friend gets, we need to divide the total number of cookies by the number "
    "of friends.\n\nStep 1: Sarah baked 3 trays of cookies with 12 cookies on each tray.\n3 x 12 = 36 cookies\n\n"
    "Step 2: She shares them equally between 4 friends.\n36 / 4 = 9\n\nThe answer is: 9"
)
HASH = (
    "Let's break down the problem step by step:\n\n1. The store sells 5 boxes of pencils.\n2. Each box costs $111.\n"
    "3. To find the total cost, we multiply the number of boxes by the cost of each box:\n   5 x $111 = $555\n\n"
    "So, the total cost of the pencils is $555.\n\n#### 555"
)
SO_FINAL = (
    "Let's think step by step.\n\nJohn has 4 bags of marbles. Each bag has 6 marbles.\n\n"
    "To find the total number of marbles, we multiply 4 by 6.\n\n4 * 6 = 24\n\n"
    "So the final answer is 24."
)
PERCENT = (
    "The shirt originally cost $50 and it is now sold for $40.\n\nThe discount is $50 - $40 = $10.\n\n"
    "To find the percentage, we divide the discount by the original price and multiply by 100:\n"
    "10 / 50 x 100 = 20\n\nThe final answer is 20%."
)
EMPTY_BOX = (
    "First, we need to find how many apples Tom picked in total.\n\nTom picked 8 apples in the morning and 12 "
    "apples in the afternoon.\n\n8 + 12 = 20\n\nThe answer is 20. The correct answer is \\boxed{}."
)
EMPTY_BOX_OWN_LINE = (
    "Mia reads 6 pages a day for 3 days.\n6 * 3 = 18\nShe read 18 pages.\n\nThe correct answer is \\boxed{}."
)
EQUATION = (
    "To find the total cost, we need to add the cost of the shirts, the hat and the socks.\n\n"
    "Two shirts cost 2 * 25 = 50 dollars.\nThe hat costs 15 dollars.\nThe socks cost 10 dollars.\n\n"
    "Final Answer: 2 * 25 + 15 + 10 = 75"
)
EQUATION_WITH_UNIT = EQUATION + " dollars"
EXPRESSION_ONLY = (
    "Two shirts cost 25 dollars each and the hat costs 15 dollars.\n\nFinal Answer: 2 * 25 + 15"
)
BOLD = "We add the two numbers.\n\n30 + 12 = 42\n\n**Final Answer:** 42"
BOXED_MATH = "We add the two numbers.\n\n30 + 12 = 42\n\nThe answer is $\\boxed{42}$"


def test_the_styles_extract_what_a_person_reads():
    assert extract_answer(ANSWER_IS_COLON) == ("9", "answer_is")
    assert extract_answer(HASH) == ("555", "hash")
    assert extract_answer(SO_FINAL) == ("24", "answer_is")
    assert extract_answer(PERCENT) == ("20%", "answer_is")
    assert extract_answer(BOLD) == ("42", "answer_is")
    assert extract_answer(BOXED_MATH) == ("42", "boxed")


@pytest.mark.parametrize(
    "reply,gold",
    [(ANSWER_IS_COLON, "9"), (HASH, "555"), (SO_FINAL, "24"), (PERCENT, "20"), (BOLD, "42"), (BOXED_MATH, "42")],
)
def test_the_styles_grade_correct(reply, gold):
    v = grade(reply, gold)
    assert v.correct, v


def test_a_percent_answer_to_a_percentage_question_is_right_and_a_wrong_one_wrong():
    assert grade(PERCENT, "20").correct
    assert not grade(PERCENT, "40").correct


# -- an empty box hides nothing -------------------------------------------------------------------------------


def test_an_empty_box_does_not_hide_the_stated_answer():
    assert extract_answer(EMPTY_BOX) == ("20", "answer_is")
    assert grade(EMPTY_BOX, "20").reason == "match:string"
    assert not grade(EMPTY_BOX, "21").correct


def test_an_empty_box_alone_is_not_an_answer_the_last_number_is():
    assert extract_answer(EMPTY_BOX_OWN_LINE) == ("18", "last_number")
    assert grade(EMPTY_BOX_OWN_LINE, "18").correct
    assert extract_answer("The answer is $\\boxed{ }$.") == (None, None)


# -- an answer line that is an equation: its result -----------------------------------------------------------


def test_the_result_after_the_last_equals_sign_of_an_answer_line_is_the_answer():
    assert extract_answer(EQUATION) == ("75", "answer_is")
    v = grade(EQUATION, "75")
    assert v.correct and v.reason == "match:string", v  # decided in process, no math_verify
    assert extract_answer(EQUATION_WITH_UNIT) == ("75 dollars", "answer_is")
    assert grade(EQUATION_WITH_UNIT, "75").correct
    assert grade("So the answer is 5 + 13 = 18.", "18").reason == "match:string"
    assert grade("#### 9 * 2 = $18", "18").correct
    assert grade("Final Answer: $2 \\times 25 + 15 + 10 = 75$", "75").correct
    # the stated result counts, even when the arithmetic before it is wrong
    assert not grade("Final Answer: 2 * 25 + 15 + 10 = 80", "75").correct
    assert answer_key(extract_answer(EQUATION)[0]) == answer_key("75")


def test_an_equation_that_is_the_answer_itself_is_kept_whole():
    # letters on the left: an equation of a line, an assignment: not arithmetic with a result
    assert extract_answer("The answer is 2x + 3y = 6.") == ("2x + 3y = 6", "answer_is")
    assert extract_answer("Final Answer: x = 7.") == ("x = 7", "answer_is")
    assert extract_answer("\\boxed{a = 2, b = 3}") == ("a = 2, b = 3", "boxed")
    assert extract_answer("The answer is x <= 5.") == ("x <= 5", "answer_is")


def test_an_expression_without_a_result_is_compared_by_its_value():
    """No "=": math_verify evaluates the expression (2 * 25 + 15 is 65), as a lenient person would."""
    assert extract_answer(EXPRESSION_ONLY) == ("2 * 25 + 15", "answer_is")
    v = grade(EXPRESSION_ONLY, "65")
    assert v.correct and v.reason == "match:math_verify", v
    assert not grade(EXPRESSION_ONLY, "75").correct


# -- units and currency ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "final_line",
    ["Answer: 18 dollars", "Answer: $18", "The answer is 18 apples.", "The answer is: $18.00",
     "So Janet has 18 apples left.", "The answer is \\$18."],
)
def test_units_and_currency_around_the_number(final_line):
    reply = f"Janet had 24 apples and gave away 6.\n24 - 6 = 18\n\n{final_line}"
    assert grade(reply, "18").correct, grade(reply, "18")


# -- loops cut at max_tokens are never correct ----------------------------------------------------------------

LOOP_LINE = "So, the total number of apples is 18 apples.\n"
LOOPED_CUT = (
    "Janet had 24 apples and gave away 6.\n24 - 6 = 18\n" + LOOP_LINE * 30 + "So, the total number of apples is 1"
)


def test_a_loop_cut_at_max_tokens_is_not_correct_even_when_its_last_number_is_the_gold():
    assert not grade(LOOPED_CUT, "18", truncated=True).correct
    assert grade(LOOPED_CUT, "18", truncated=True).reason == "truncated"
    cut_on_the_gold = LOOPED_CUT.rsplit("\n", 1)[0]  # ends on "... is 18 apples."
    assert grade(cut_on_the_gold, "18", truncated=False).correct  # what truncated=True must prevent
    assert [v.correct for v in grade_batch([(cut_on_the_gold, "18")] * 2, truncated=[True, False])] == [False, True]
