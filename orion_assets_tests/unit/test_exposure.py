"""Typing the student's attempts: wrong answer, no answer, truncated, repetition loop; which error is shown.

The looped replies are in the style of SmolLM2-135M-Instruct sampled on GSM8K at 320 new tokens: a few lines of
reasoning, then one sentence or line repeated until the token limit. The long replies that are no loops are
worked solutions written by people (GSM8K, AIME), cut where a token limit would cut them.
"""

from __future__ import annotations

import json
import re

import pytest

from orion_assets.llm import GenerationResult
from orion_assets.method import exposure
from orion_assets.method.exposure import ERROR_PRIORITY, error_type, is_repetition_loop, most_useful_error
from orion_assets.method.grading import Verdict, grade
from orion_assets.records import PACKAGE_DATA
from orion_assets.vocabulary import ERROR_TYPES


def _result(text: str, finish_reason: str = "stop", reasoning: str | None = None) -> GenerationResult:
    return GenerationResult(call_id="c", text=text, reasoning=reasoning, finish_reason=finish_reason,
                            prompt_tokens=80, completion_tokens=320, latency_s=1.0, retries=0, error=None,
                            cached=False)


def _cut(text: str, n_words: int) -> str:
    """``text`` cut after ``n_words`` words, mid-sentence, the way max_tokens cuts it."""
    return " ".join(text.split()[:n_words])


PREAMBLE = (
    "To find the total number of apples, we need to add the apples Janet picked on Monday and on Tuesday.\n\n"
    "Step 1: Janet picked 12 apples on Monday.\nStep 2: She picked 6 more apples on Tuesday.\n"
)
SENTENCE_LOOP = PREAMBLE + "The answer is 18. " * 60
LINE_LOOP = PREAMBLE + "Step 3: 12 + 6 = 18 apples\n" * 60
PARAGRAPH_LOOP = PREAMBLE + (
    "So, Janet has 12 + 6 = 18 apples. But we need to remember that she gave 4 apples to her friend, so we "
    "need to subtract 4 from 18. Let's go back and add the apples again.\n"
) * 10
LOOP_AFTER_ANSWER = PREAMBLE + "12 + 6 = 18\n\nThe answer is: 18\n\n" + (
    "The answer is 18 apples because Janet picked 12 apples and 6 apples.\n"
) * 30


@pytest.mark.parametrize(
    "reply,n_words",
    [(SENTENCE_LOOP, 110), (SENTENCE_LOOP, 240), (LINE_LOOP, 110), (LINE_LOOP, 240), (LOOP_AFTER_ANSWER, 110),
     (LOOP_AFTER_ANSWER, 240), (PARAGRAPH_LOOP, 240)],  # at 110 words the 37-word paragraph shows just twice
)
def test_a_reply_cut_in_a_loop_is_a_repetition_loop(reply, n_words):
    cut = _cut(reply, n_words)
    verdict = grade(cut, "18", truncated=True)
    assert not verdict.correct  # cut off: never solved, even with the gold as its last number
    assert is_repetition_loop(cut)
    assert error_type(_result(cut, "length"), verdict) == "repetition_loop"


def test_a_loop_in_the_thinking_counts():
    thinking = "Okay, let's see. " + "Wait, let me recompute that. 12 + 6 = 18. So we add 6 again. " * 20
    result = _result("", "length", reasoning=thinking)
    assert error_type(result, Verdict(False, None, None, "truncated")) == "repetition_loop"


def test_a_reply_that_stopped_but_is_mostly_a_loop():
    looped = PREAMBLE + "So the answer is 20. " * 25 + "\nThe answer is 20."
    wrong = grade(looped, "18")
    assert not wrong.correct and error_type(_result(looped), wrong) == "repetition_loop"
    assert error_type(_result(looped.replace("20", "18")), grade(looped.replace("20", "18"), "18")) is None  # solved


def test_short_replies_and_a_few_repeats_are_no_loop():
    assert not is_repetition_loop("The answer is 5. The answer is 5. The answer is 5.")
    assert not is_repetition_loop("")
    assert not is_repetition_loop(None)
    repeated_end = PREAMBLE + "12 + 6 = 18\nSo Janet has 18 apples.\nThe answer is 18.\nThe answer is 18.\n"
    assert not is_repetition_loop(repeated_end)
    v = grade(repeated_end, "17")
    assert error_type(_result(repeated_end), v) == "wrong_answer"


# -- long worked solutions cut at max_tokens are truncated, not loops -----------------------------------------


def _gsm8k_long_solutions(k: int) -> list[str]:
    rows = [json.loads(line) for line in open(PACKAGE_DATA / "train" / "gsm8k_train.jsonl", encoding="utf-8")]
    answers = sorted((r["answer"] for r in rows), key=len, reverse=True)[:k]
    return [re.sub(r"<<[^>]*>>", "", a.split("####")[0]) for a in answers]  # as a model writes them


def test_a_long_worked_solution_cut_at_max_tokens_stays_truncated():
    for solution in _gsm8k_long_solutions(50):
        cut = _cut(solution, len(solution.split()) - 5)
        result = _result(cut, "length")
        assert error_type(result, grade(cut, "1", truncated=True)) == "truncated", cut


def test_no_reference_solution_is_a_loop():
    """Every GSM8K training answer and AIME solution (people's worked solutions) passes the loop rule."""
    gsm8k = [json.loads(line)["answer"] for line in open(PACKAGE_DATA / "train" / "gsm8k_train.jsonl", encoding="utf-8")]
    with open(PACKAGE_DATA / "train" / "aime_1983_2023.json", encoding="utf-8") as fh:
        aime = [r["solution"] for r in json.load(fh)]
    assert not [t for t in gsm8k + aime if is_repetition_loop(t)]
    assert not [t for t in aime if is_repetition_loop(_cut(t, 240))]


# -- the other types and the priority -------------------------------------------------------------------------


def test_the_other_error_types():
    assert error_type(_result("x", "error"), Verdict(False, None, None, "no_answer")) == "endpoint_error"
    assert error_type(_result("So 12 + 6 = 18.\nThe answer is 18."), grade("The answer is 18.", "18")) is None
    assert error_type(_result("I am not sure."), grade("I am not sure.", "18")) == "no_answer"
    assert error_type(_result("The answer is 17."), grade("The answer is 17.", "18")) == "wrong_answer"


def test_every_error_type_is_declared_once_and_a_loop_is_shown_last():
    assert set(ERROR_PRIORITY) == set(ERROR_TYPES)
    assert "repetition_loop" in ERROR_TYPES
    assert max(ERROR_PRIORITY, key=ERROR_PRIORITY.get) == "repetition_loop"
    errors = [
        {"attempt_id": "loop", "error_type": "repetition_loop", "sample_index": 0},
        {"attempt_id": "cut", "error_type": "truncated", "sample_index": 1},
    ]
    assert most_useful_error(errors)["attempt_id"] == "cut"
    assert most_useful_error(errors[:1])["attempt_id"] == "loop"  # the only error is still shown


def test_the_rule_is_documented_with_its_thresholds():
    doc = (PACKAGE_DATA.parent.parent / "docs" / "exposure.md").read_text(encoding="utf-8")
    for value in (exposure.LOOP_N, *exposure.LOOP_WINDOWS_WORDS, exposure.LOOP_RATIO, exposure.LOOP_MIN_WORDS):
        assert str(value) in doc
