"""Reflection replies as models really write them, reasoning replies' thinking, and the prompt
budget that keeps reflect prompts inside a served model's context window."""

from __future__ import annotations

import polars as pl
import pytest

from orion_assets.llm import GenerationRequest, SamplingParams
from orion_assets.llm.context import ContextBudget
from orion_assets.llm.types import GenerationResult, split_thinking
from orion_assets.method import exposure, reflection
from orion_assets.method.grading import Verdict
from orion_assets.method.prompts import split_reflection
from orion_assets.profiles.schema import ReflectionConfig

NOTES = "I multiplied before adding, so I got \\boxed{14}."
SOLUTION = "First add 2 and 3 to get 5.\nThen multiply by 2: 10.\nSo the answer is \\boxed{10}."

# (name, reply) in the formats models write; each must split into NOTES and SOLUTION.
FORMATS = {
    "markers": f"REFLECTION: {NOTES}\nSOLUTION: {SOLUTION}",
    "markdown_headings": f"### Reflection\n{NOTES}\n\n### Solution\n{SOLUTION}",
    "bold": f"**Reflection:** {NOTES}\n\n**Solution:** {SOLUTION}",
    "bold_own_line": f"**Reflection:**\n{NOTES}\n\n**Solution:**\n{SOLUTION}",
    "bold_colon_outside": f"**Reflection**: {NOTES}\n\n**Solution**: {SOLUTION}",
    "numbered": f"1. Reflection: {NOTES}\n2. Solution: {SOLUTION}",
    "lower_case": f"reflection: {NOTES}\nsolution: {SOLUTION}",
    "refined_solution": f"Reflection: {NOTES}\n\nRefined Solution:\n{SOLUTION}",
    "heading_refined": f"## Reflection\n{NOTES}\n\n## Corrected Solution\n{SOLUTION}",
    "think_first": f"<think>\nLet me see. Solution: maybe \\boxed{{7}}?\n</think>\n\nREFLECTION: {NOTES}\nSOLUTION: {SOLUTION}",
}


@pytest.mark.parametrize("name", FORMATS)
def test_every_reply_format_splits_into_notes_and_solution(name):
    notes, solution = split_reflection(FORMATS[name])
    assert notes == NOTES and solution == SOLUTION, (notes, solution)


def test_the_first_solution_marker_after_the_reflection_wins():
    # A second "Solution:" inside the body stays in the solution; a "solution:" in the notes'
    # running text is no marker.
    body = "Solution: step 1 is to add.\n" + SOLUTION
    reply = f"REFLECTION: the intended solution: add first. {NOTES}\nSOLUTION: {body}"
    notes, solution = split_reflection(reply)
    assert solution == body and notes.startswith("the intended solution: add first.")


@pytest.mark.parametrize(
    "reply",
    [
        SOLUTION,  # no markers: the whole reply might be notes; it must never become SFT data
        f"REFLECTION: {NOTES}\n{SOLUTION}",
        f"REFLECTION: {NOTES}\nSOLUTION:",
        f"REFLECTION: {NOTES}\nSolution steps follow. {SOLUTION}",
        f"<think>\nREFLECTION: x\nSOLUTION: {SOLUTION}",  # cut off while thinking
    ],
)
def test_a_reply_that_cannot_be_split_gives_no_solution(reply):
    assert split_reflection(reply) == (None, None)


def _result(text: str | None, reasoning: str | None = None, finish: str = "stop") -> GenerationResult:
    return GenerationResult("c", text, reasoning, finish, None, None, None, 0, None, False)


def test_thinking_is_split_off_the_same_way_for_both_reasoning_styles():
    thinking = "Let me think. 2+3=5, wait, times 2 is 10. Maybe \\boxed{5}? No."
    answer = "The answer is \\boxed{10}."
    deepseek = _result(answer, reasoning=thinking)
    raw_r1 = _result(f"<think>\n{thinking}\n</think>\n\n{answer}")
    template_opened = _result(f"{thinking}\n</think>\n\n{answer}")  # "<think>" was in the prompt
    for result in (deepseek, raw_r1, template_opened):
        assert result.thinking == thinking and result.answer == answer
        assert result.cot == f"{thinking}\n\n{answer}"
    cut = _result(f"<think>\n{thinking}", finish="length")
    assert cut.thinking == thinking and cut.answer == "" and cut.cot == thinking
    plain = _result(answer)
    assert plain.thinking is None and plain.answer == answer
    assert split_thinking(None, None) == (None, "")


PROBLEM = {"problem_id": "p", "problem": "2+3, times 2?", "gold_answer": "10", "source": "gsm8k"}
TEACHER_COT = {"teacher_cot_id": "t", "cot": "...", "final_answer": "10", "finish_reason": "stop"}


def _verified(mode: str, thinking: str | None) -> reflection.Outcome:
    """A verified refinement of PROBLEM in ``mode`` whose reply thought ``thinking``."""
    result = _result(SOLUTION, reasoning=thinking)
    return reflection.Outcome(reflection.Task(PROBLEM, TEACHER_COT, (), mode), tries=1, result=result, notes=NOTES,
                              solution=SOLUTION, verdict=Verdict(True, "10", "boxed", "match"), thinking=result.thinking)


@pytest.mark.parametrize("keep_student_thinking", [True, False])
def test_a_teacher_rewrite_trains_on_its_solution_and_keeps_its_thinking_apart(keep_student_thinking):
    # Its thinking reasons about the student's attempt, which the SFT prompt (plain solve) never shows.
    row = reflection.refined_row(_verified("no_reflection", "I should address the student's slip."), "teacher",
                                 student="tiny", keep_student_thinking=keep_student_thinking)
    assert row["cot"] == SOLUTION and row["rewrite_thinking"] == "I should address the student's slip."
    assert row["reflection_notes"] == NOTES and row["source"] == "refined"


def test_a_reasoning_students_refinement_is_its_thinking_then_its_solution_when_kept():
    thinking = "Let me redo it: 2+3=5, times 2 is 10."
    for mode in ("orion", "no_error"):
        kept = reflection.refined_row(_verified(mode, thinking), "teacher", student="tiny", keep_student_thinking=True)
        assert kept["cot"] == f"{thinking}\n\n{SOLUTION}"  # the shape of teacher_sft's CoTs
        dropped = reflection.refined_row(_verified(mode, thinking), "teacher", student="tiny", keep_student_thinking=False)
        assert dropped["cot"] == SOLUTION and dropped["rewrite_thinking"] == kept["rewrite_thinking"] == thinking
        assert kept["refined_cot_id"] != dropped["refined_cot_id"]
    plain = reflection.refined_row(_verified("orion", None), "teacher", student="tiny", keep_student_thinking=True)
    assert plain["cot"] == SOLUTION and plain["rewrite_thinking"] is None  # a student that does not think
    assert ReflectionConfig().keep_student_thinking is True  # docs/reflection.md: same shape as teacher_sft
    fallback = reflection.refined_row(reflection.Outcome(reflection.Task(PROBLEM, TEACHER_COT, (), "orion"),
                                                         tries=2, failures=["unsplittable"] * 2),
                                      "teacher", student="tiny", keep_student_thinking=True)
    assert fallback["source"] == "teacher_fallback" and fallback["cot"] == "..." and fallback["rewrite_thinking"] is None


def test_two_samples_rewritten_alike_keep_two_rows():
    first = reflection.refined_row(_verified("orion", None), "teacher", student="tiny", keep_student_thinking=True)
    second_task = reflection.Task(PROBLEM, {**TEACHER_COT, "teacher_cot_id": "t2"}, (), "orion")
    second = reflection.refined_row(reflection.Outcome(second_task, 1, _result(SOLUTION), NOTES, SOLUTION,
                                                       Verdict(True, "10", "boxed", "match")),
                                    "teacher", student="tiny", keep_student_thinking=True)
    assert first["cot"] == second["cot"] and first["refined_cot_id"] != second["refined_cot_id"]


TEACHER_COTS = pl.DataFrame({
    "teacher_cot_id": ["b1", "a1", "a0", "c0", "d1"],
    "problem_id": ["b", "a", "a", "c", "d"],
    "sample_index": [1, 1, 0, 0, 1],  # d's sample 0 did not verify
})


def test_the_teacher_samples_refinement_draws_on():
    first = reflection.teacher_cots_to_refine(TEACHER_COTS, "first")
    assert first["teacher_cot_id"].to_list() == ["a0", "b1", "c0", "d1"]
    assert reflection.teacher_cots_to_refine(TEACHER_COTS, "all")["teacher_cot_id"].to_list() == [
        "a0", "a1", "b1", "c0", "d1"]
    assert ReflectionConfig().teacher_samples == "first"
    with pytest.raises(ValueError, match="teacher_samples"):
        reflection.teacher_cots_to_refine(TEACHER_COTS, "best")


def test_a_problem_whose_every_exposure_call_failed_is_not_never_wrong():
    attempts = pl.DataFrame({"problem_id": ["a", "a", "b", "b", "c"],
                             "finish_reason": ["error", "stop", "error", "error", "length"]})
    # b: every call failed; d: no attempt at all; a (one answered call) and c (cut off) reached the student
    assert reflection.exposure_failed_problems(["a", "b", "c", "d"], attempts) == ["b", "d"]


def test_the_most_useful_error_is_shown():
    errors = [
        {"attempt_id": "a0", "error_type": "truncated", "sample_index": 0},
        {"attempt_id": "a1", "error_type": "no_answer", "sample_index": 1},
        {"attempt_id": "a2", "error_type": "wrong_answer", "sample_index": 3},
        {"attempt_id": "a3", "error_type": "wrong_answer", "sample_index": 2},
    ]
    assert exposure.most_useful_error(errors)["attempt_id"] == "a3"
    assert exposure.most_useful_error(errors[:2])["attempt_id"] == "a1"
    assert exposure.most_useful_error([]) is None


def test_a_long_attempt_is_clipped_in_the_middle(tiny_student_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_student_model.path)
    loop = "Step 1: add the apples. " + "Then I add them again and again. " * 400 + "So the answer is \\boxed{12}."
    clipped = reflection.clip_middle(loop, 120, tokenizer)
    n = len(tokenizer(clipped, add_special_tokens=False)["input_ids"])
    assert clipped.startswith("Step 1: add the apples.") and clipped.endswith("\\boxed{12}.")
    assert "tokens of this attempt omitted" in clipped and n <= 124  # the seams may re-tokenize a little differently
    short = "So the answer is \\boxed{12}."
    assert reflection.clip_middle(short, 120, tokenizer) == short


def test_the_context_budget_cuts_max_tokens_and_refuses_what_cannot_fit(tiny_student_model):
    budget = ContextBudget(512, str(tiny_student_model.path))
    short = GenerationRequest((({"role": "user", "content": "What is 2+3?"}),), SamplingParams(4096, 0.7))
    used = budget.prompt_tokens(short.messages)
    assert 5 < used < 40  # the chat template's tokens are counted too
    fitted = budget.fit(short)
    assert isinstance(fitted, GenerationRequest) and fitted.params.max_tokens == 512 - used
    small = GenerationRequest(short.messages, SamplingParams(64, 0.7))
    assert budget.fit(small) is small
    long = GenerationRequest(({"role": "user", "content": "apples and pears " * 400},), SamplingParams(64, 0.7),
                             min_reply_tokens=32)
    why = budget.fit(long)
    assert isinstance(why, str) and why.startswith("context_overflow: the prompt has") and "512-token" in why
    roomy = GenerationRequest(({"role": "user", "content": "apples " * 100},), SamplingParams(4096, 0.7),
                              min_reply_tokens=400)
    assert isinstance(budget.fit(roomy), str)  # fits, but leaves less room than the reply needs


def test_the_report_counts_fallbacks_overflows_and_unsplittable_replies_per_mode():
    import polars as pl

    from orion_assets.method.evaluation.report.sections import (
        _reflection_section,
        reflection_frame,
    )

    teacher = pl.DataFrame({"problem_id": ["a", "b", "c", "d"]})
    refined = pl.DataFrame({
        "mode": ["orion"] * 4 + ["no_error"] * 2,
        "source": ["refined", "teacher_fallback", "teacher_fallback", "teacher_fallback", "refined", "refined"],
        "failure_reasons": [[], ["context_overflow"], ["unsplittable", "truncated"], ["mismatch:numeric"] * 2, [], []],
    })
    frame = reflection_frame(teacher, refined)
    orion = frame.row(0, named=True)
    assert frame["mode"].to_list() == ["orion", "no_error"]
    assert (orion["refined"], orion["teacher_fallback"], orion["dropped"], orion["context_overflow"],
            orion["unsplittable"], orion["truncated"]) == (1, 3, 0, 1, 1, 1)
    assert frame.row(1, named=True)["dropped"] == 2  # on_failure = "drop" left no row for two problems
    text = "\n".join(_reflection_section(frame))
    assert "**Warning:** 75.0% of `orion`'s SFT data is the teacher's own CoT" in text
    assert "Not run: `no_reflection`" in text and "`no_error`'s SFT" not in text


# Real reflect_orion replies of SmolLM2-135M-Instruct (the smol profile's student, T=0.7): like 29 of
# the 32 in one smol run, they ignore the REFLECTION/SOLUTION format the prompt asks for.
SMOL_UNMARKED = (
    "Ajax weighs 80 x 2.2 = 176 in pounds.\n"
    "He will lose 1.5 x 2 = 3 pounds per day, which means he will lose 3 x 2 = 6 pounds.\n"
    "Therefore, the final answer is 176 - 6 = 172 pounds."
)
SMOL_MARKED = (
    "The answer to this puzzle is: \nA total of 50 words have been taken from the book in 2 years.\n\n"
    "SOLUTION:\nIn 2 years, Tim has increased the number of words he knows by 50%\n"
)


def test_an_unmarked_reply_is_all_solution_only_when_the_profile_says_so():
    assert split_reflection(SMOL_UNMARKED) == (None, None)  # the default: it might be notes
    assert split_reflection(SMOL_UNMARKED, unmarked_is_solution=True) == (None, SMOL_UNMARKED)
    # A marked reply splits the same either way; notes without a solution marker stay unsplittable.
    assert split_reflection(SMOL_MARKED, unmarked_is_solution=True) == split_reflection(SMOL_MARKED)
    assert split_reflection(SMOL_MARKED)[1].startswith("In 2 years")
    assert split_reflection(f"REFLECTION: {NOTES}\n{SOLUTION}", unmarked_is_solution=True) == (None, None)
    assert split_reflection(f"<think>\nstill thinking {SOLUTION}", unmarked_is_solution=True) == (None, None)
