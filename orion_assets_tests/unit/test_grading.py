"""Tests for ``orion_assets.method.grading`` on the real benchmark files (no mocks).

Data: the copies the package ships (``orion_assets/data``, byte-identical to their upstream files),
so these tests run wherever the package is installed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from orion_assets.method.grading import (
    Verdict,
    extract_answer,
    grade,
    grade_batch,
    normalize_gold,
)
from orion_assets.method.grading import pool as grading_pool
from orion_assets.records import PACKAGE_DATA as PACKAGE_DATA_DIR

MIN_PASS_RATE = 0.99


PACKAGE_DATA = PACKAGE_DATA_DIR
BENCHMARKS = PACKAGE_DATA / "benchmarks"
TRAIN = PACKAGE_DATA / "train"


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _check_pass_rate(name: str, pairs, benchmark, capsys=None) -> None:
    verdicts = grade_batch(pairs, benchmark=benchmark)
    assert len(verdicts) == len(pairs)
    n_ok = sum(v.correct for v in verdicts)
    rate = n_ok / len(pairs)
    failures = [
        f"  gold={g!r} extracted={v.extracted!r} method={v.method} reason={v.reason}"
        for (_, g), v in zip(pairs, verdicts)
        if not v.correct
    ]
    reasons = Counter(v.reason for v in verdicts)
    summary = f"{name}: {n_ok}/{len(pairs)} = {rate:.2%} correct; reasons {dict(reasons)}"
    report = "\n" + summary + ("\n" + "\n".join(failures[:50]) if failures else "")
    if capsys is not None:
        with capsys.disabled():  # shown with or without -s
            print(report)
    else:
        print(report)
    assert rate >= MIN_PASS_RATE, summary + "\nfailures:\n" + "\n".join(failures[:50])


# --------------------------------------------------------------------------
# Real data: every worked solution graded against its own gold answer
# --------------------------------------------------------------------------


def test_math500_solutions_match_answers(capsys):
    rows = _jsonl(BENCHMARKS / "math500.jsonl")
    assert len(rows) == 500
    _check_pass_rate("math500", [(r["solution"], r["answer"]) for r in rows], "math500", capsys)


def test_aime24_solutions_match_answers(capsys):
    rows = _jsonl(BENCHMARKS / "aime24.jsonl")
    assert len(rows) == 30
    _check_pass_rate("aime24", [(r["solution"], r["answer"]) for r in rows], "aime24", capsys)


def test_gsm8k_answers_match_hash_numbers(capsys):
    rows = _jsonl(TRAIN / "gsm8k_train.jsonl")
    assert len(rows) == 7473
    pairs = [(r["answer"], r["answer"].rsplit("####", 1)[1].strip()) for r in rows]
    _check_pass_rate("gsm8k", pairs, "gsm8k", capsys)


def test_aime_1983_2023_training_solutions_match_answers(capsys):
    with open(TRAIN / "aime_1983_2023.json", encoding="utf-8") as fh:
        rows = json.load(fh)
    assert len(rows) == 975
    _check_pass_rate("aime 1983-2023", [(r["solution"], r["answer"]) for r in rows], "aime", capsys)


def test_math500_solutions_against_other_golds_are_wrong(capsys):
    """False positives on real data: solution i vs the gold of row i+1."""
    rows = _jsonl(BENCHMARKS / "math500.jsonl")
    others = [rows[(i + 1) % len(rows)]["answer"] for i in range(len(rows))]
    verdicts = grade_batch([(r["solution"], o) for r, o in zip(rows, others)], "math500")
    assert not any(v.reason == "timeout" or v.reason.startswith("error") for v in verdicts)
    # a "correct" verdict is only a false positive when the two golds differ
    wrong = [
        (r["answer"], o, v)
        for r, o, v in zip(rows, others, verdicts)
        if v.correct and not grade(f"\\boxed{{{r['answer']}}}", o).correct
    ]
    n_same = sum(v.correct for v in verdicts) - len(wrong)
    rate = 1 - len(wrong) / (len(rows) - n_same)
    summary = f"math500 shifted golds: {rate:.2%} of {len(rows) - n_same} judged wrong"
    with capsys.disabled():
        print("\n" + summary)
    assert rate >= MIN_PASS_RATE, summary + "\n" + "\n".join(f"  {a!r} vs {o!r}: {v}" for a, o, v in wrong)


def _gsm_hard_forms(t: float) -> list[str]:
    forms = [f"The answer is {t}.", f"\\boxed{{{t!r}}}", f"Final answer: ${normalize_gold(t)}$"]
    if float(t).is_integer():
        i = int(t)
        forms += [f"#### {i:,}", f"\\boxed{{{i:,}}}", f"So she makes ${i:,} in total.",
                  f"\\boxed{{{i}.00}}"]
    elif abs(t) >= 1:  # "precision": a non-integer gold matches when rounded to the decimals shown
        forms += [f"\\boxed{{{t:,.2f}}}", f"#### {t:.4f}", f"so about {t:,.3f} dollars",
                  f"\\boxed{{{t:.1f}}}"]
    else:
        forms += [f"\\boxed{{{t:.6g}}}", f"#### {t:.8g}"]
    return forms


def test_gsm_hard_targets_in_several_formats(capsys):
    rows = _jsonl(BENCHMARKS / "gsm_hard.jsonl")
    assert len(rows) == 1319
    pairs = [(form, r["target"]) for r in rows for form in _gsm_hard_forms(r["target"])]
    _check_pass_rate("gsm_hard", pairs, "gsm_hard", capsys)


def test_amc23_float_golds_normalize():
    rows = _jsonl(BENCHMARKS / "amc23.jsonl")
    for r in rows:
        g = normalize_gold(r["answer"], "amc23")
        assert "." not in g or not float(r["answer"]).is_integer(), g
        assert grade(f"so the answer is $\\boxed{{{g}}}$", r["answer"], "amc23").correct
        assert grade(f"The answer is {g}.", r["answer"], "amc23").correct


# --------------------------------------------------------------------------
# Equivalent and non-equivalent forms
# --------------------------------------------------------------------------

EQUIVALENT = [
    # fractions / decimals
    (r"\boxed{\frac{1}{2}}", "0.5", None),
    (r"\boxed{0.5}", r"\frac{1}{2}", None),
    (r"\boxed{1/2}", r"\frac{1}{2}", None),
    (r"\boxed{\dfrac{3}{4}}", r"\frac34", None),
    (r"\boxed{\tfrac{3}{4}}", "0.75", None),
    (r"\boxed{-\frac{1}{3}}", "-1/3", None),
    (r"\boxed{\frac{9}{19}}", r"\frac9{19}", None),
    (r"\boxed{\dfrac{5}{2}}", r"2\frac{1}{2}", None),
    # units
    (r"\boxed{5\text{ cm}}", "5", None),
    (r"\boxed{12 \text{ inches}}", "12", None),
    (r"\boxed{10\mbox{ cm}^2}", "10", None),
    (r"The answer is 7 days.", "7", None),
    (r"\boxed{90^\circ}", "90", None),
    (r"\boxed{145^{\circ}}", r"145^\circ", None),
    (r"\boxed{\$18.00}", "18", None),
    # percentages
    (r"\boxed{50\%}", "50", None),
    ("The answer is 50%.", "50", None),
    (r"\boxed{50\%}", "0.5", None),
    # leading zeros (AIME)
    (r"\boxed{025}", "25", "aime24"),
    (r"\boxed{25}", "025", "aime24"),
    (r"\boxed{\textbf{(073)}}", "073", "aime24"),
    (r"$\boxed{\mathbf{127} }$", "127", "aime"),
    # thousands separators
    (r"\boxed{1,000}", "1000", None),
    ("#### 1,000", "1000", "gsm8k"),
    (r"\boxed{1{,}000}", "1000", None),
    (r"\boxed{1\,000}", "1000", None),
    (r"\boxed{10000}", "10,000", None),
    # assignments
    (r"\boxed{x = 5}", "5", None),
    (r"\boxed{5}", "x=5", None),
    (r"\boxed{y=-2}", "-2", None),
    # tuples / intervals / sets
    (r"\boxed{(1, 2)}", "(1,2)", None),
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)", None),
    (r"\boxed{(3,\frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)", None),
    (r"\boxed{[1,2)}", "[1, 2)", None),
    (r"\boxed{(-\infty, 2) \cup (3, \infty)}", r"(-\infty,2)\cup(3,\infty)", None),
    (r"\boxed{-2, 1}", "1,-2", None),
    # radicals / expressions (math_verify)
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", None),
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}", None),
    (r"\boxed{3x+2}", "2+3x", None),
    (r"\boxed{\pi/2}", r"\frac{\pi}{2}", None),
    (r"\boxed{120}", "5!", None),
    # text answers
    (r"\boxed{\text{(E)}}", r"\text{(E)}", None),
    (r"\boxed{E}", r"\text{(E)}", None),
    (r"\boxed{\text{even}}", "even", None),
    (r"The answer is four.", r"\mbox{four}", None),
    # GSM-Hard tolerance
    (r"\boxed{3244047.1}", 3244047.0999999996, "gsm_hard"),
    (r"\boxed{14,053,029.67}", 14053029.666666666, "gsm_hard"),
    (r"\boxed{-9867630}", -9867630.0, "gsm_hard"),
]

NOT_EQUIVALENT = [
    (r"\boxed{[1,2)}", "[1,2]", None),
    (r"\boxed{(1,2)}", "[1,2]", None),
    (r"\boxed{(1,2)}", "(2,1)", None),
    (r"\boxed{1/3}", "0.33", None),
    (r"\boxed{0.33}", r"\frac{1}{3}", None),
    (r"\boxed{5}", "-5", None),
    (r"\boxed{-5}", "5", None),
    (r"\boxed{2\sqrt{3}}", r"\sqrt{8}", None),
    (r"\boxed{25.5}", "25", "aime24"),
    (r"\boxed{26}", "025", "aime24"),
    (r"\boxed{1000}", "100", None),
    (r"\boxed{1,2}", "12", None),
    (r"\boxed{12,000}", "12", None),
    (r"\boxed{x = 6}", "5", None),
    (r"\boxed{50\%}", "5", None),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{3}", None),
    (r"\boxed{2x}", "x", None),
    (r"\boxed{\text{odd}}", r"\text{even}", None),
    (r"\boxed{5.34}", 5.3333333333, "gsm_hard"),
    (r"\boxed{3240000}", 3244047.0999999996, "gsm_hard"),
    (r"\boxed{(1,2,3)}", "(1,2)", None),
]


@pytest.mark.parametrize("output,gold,bench", EQUIVALENT)
def test_equivalent_forms(output, gold, bench):
    v = grade(output, gold, bench)
    assert v.correct, v


@pytest.mark.parametrize("output,gold,bench", NOT_EQUIVALENT)
def test_non_equivalent_forms(output, gold, bench):
    v = grade(output, gold, bench)
    assert not v.correct, v
    assert v.reason.startswith("mismatch:"), v


def test_cheap_paths_do_not_need_workers():
    assert grade(r"\boxed{\frac{1}{2}}", "0.5").reason == "match:numeric"
    assert grade(r"\boxed{5}", "-5").reason == "mismatch:numeric"
    assert grade(r"\boxed{025}", "25", "aime24").reason in ("match:numeric", "match:string")
    assert grade(r"\boxed{(1, 2)}", "(1,2)").reason == "match:string"
    assert grade(r"\boxed{2\sqrt{2}}", r"\sqrt{8}").reason == "match:math_verify"


def test_normalize_gold():
    assert normalize_gold(27.0) == "27"
    assert normalize_gold(5.0, "amc23") == "5"
    assert normalize_gold(2.5) == "2.5"
    assert normalize_gold("025", "aime24") == "25"
    assert normalize_gold("025", "aime") == "25"
    assert normalize_gold(7) == "7"
    assert normalize_gold(" $\\frac{1}{2}$ ") == "\\frac{1}{2}"
    assert normalize_gold("\\boxed{42}") == "42"


# --------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "output,expected",
    [
        (r"so $\boxed{\frac{\sqrt{3}}{2}}$.", (r"\frac{\sqrt{3}}{2}", "boxed")),
        (r"first \boxed{1} then \boxed{\left\{ \frac{a}{b} \right\}}", (r"\left\{ \frac{a}{b} \right\}", "boxed")),
        (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", "boxed")),
        (r"answer \fbox{12}", ("12", "fbox")),
        (r"so $\boxed 5$.", ("5", "boxed")),
        (r"\boxed{3} and later the truncated \boxed{\frac{1}{", (None, None)),
        ("She makes 9 * 2 = $18.\n#### 18", ("18", "hash")),
        ("blah\n#### 1,000\n", ("1,000", "hash")),
        ("Thus the answer is $42$.", ("42", "answer_is")),
        ("So the final answer is 3.5. Done", ("3.5", "answer_is")),
        ("Final Answer: x = 7.", ("x = 7", "answer_is")),
        ("**Final answer:** \\(\\frac{1}{2}\\)", (r"\frac{1}{2}", "answer_is")),
        ("reasoning </think> <answer> 17/32 </answer>", ("17/32", "answer_is")),
        ("The answer is 5, since 2+3=5", ("5", "answer_is")),
        ("the answer is (1, 2), because", ("(1, 2)", "answer_is")),
        ("The answer is: **42**", ("42", "answer_is")),
        ("The answer isn't obvious. We get 7", ("7", "last_number")),
        ("We get 3 apples, then 4 more, so 7 in total", ("7", "last_number")),
        ("The total is 1,234.5 dollars.", ("1,234.5", "last_number")),
        ("-sepehr2010 wrote 204 here. -sepehr2010", ("204", "last_number")),
        ("no digits at all here", (None, None)),
        ("", (None, None)),
    ],
)
def test_extract_answer(output, expected):
    assert extract_answer(output) == expected


def test_no_answer_verdict():
    assert grade("I don't know.", "5") == Verdict(False, None, None, "no_answer")


def test_last_number_is_marked():
    v = grade("we add 3 and 4 to get 7", "7")
    assert v.correct and v.method == "last_number"


def test_grade_batch_mixed_benchmarks_and_order():
    pairs = [(r"\boxed{025}", "25"), (r"\boxed{2\sqrt{2}}", r"\sqrt{8}"), ("nothing", "1"),
             (r"\boxed{5.34}", 5.3333333333)]
    benches = ["aime24", None, None, "gsm_hard"]
    vs = grade_batch(pairs, benches, workers=2)
    assert [v.correct for v in vs] == [True, True, False, False]
    assert vs[2].reason == "no_answer"
    assert vs == [grade(o, g, b) for (o, g), b in zip(pairs, benches)]
    with pytest.raises(ValueError):
        grade_batch(pairs, ["aime24"])
    assert grade_batch([]) == []


# --------------------------------------------------------------------------
# Truncated output is never correct
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "output,expected",
    [
        # cut inside the final box: no answer, not an earlier box nor a number inside it
        (r"\boxed{\frac{\frac{1}{", (None, None)),
        (r"so 3 apples. Then \boxed{12", (None, None)),
        (r"first \boxed{3}, then the answer is 4. \boxed{\frac{1}{2} + \sqrt{", (None, None)),
        (r"\boxed{\frac{\boxed{1}}{", (None, None)),  # a closed box inside the cut one
        (r"#### 5 and then \boxed{", (None, None)),
        (r"so it is 7. Thus $\boxed", (None, None)),  # cut right after the macro name
        (r"so it is 7. Thus \boxed  ", (None, None)),
        # a later \boxed that opens no box does not hide an earlier closed one
        (r"\boxed{3}, answers go in a $\boxed$ here", ("3", "boxed")),
        (r"\boxed{3} and an empty \boxed{}", ("3", "boxed")),
        (r"\boxed{3} then \boxed 4", ("4", "boxed")),
        # escaped braces do not open or close anything
        (r"\boxed{\{1, 2\}}", (r"\{1, 2\}", "boxed")),
        (r"the set \{1, \boxed{2}", ("2", "boxed")),
    ],
)
def test_extract_answer_cut_inside_a_box(output, expected):
    assert extract_answer(output) == expected


def test_cut_box_is_no_answer_verdict():
    assert grade(r"We get \boxed{\frac{\frac{1}{", "1") == Verdict(False, None, None, "no_answer")
    assert grade(r"\boxed{1} so far; finally \boxed{\frac{1}{", "1").reason == "no_answer"


def test_truncated_output_is_never_correct():
    assert grade(r"so \boxed{5}", "5", truncated=True) == Verdict(False, "5", "boxed", "truncated")
    assert grade("blah\n#### 5", "5", truncated=True) == Verdict(False, "5", "hash", "truncated")
    assert grade("The answer is 5.", "5", truncated=True) == Verdict(False, "5", "answer_is", "truncated")
    # no last-number fallback for truncated output
    assert grade("we add 3 and 2 to get 5", "5", truncated=True) == Verdict(False, None, None, "truncated")
    assert grade(r"so \boxed{\frac{5}{", "5", truncated=True) == Verdict(False, None, None, "truncated")
    assert grade("", "5", truncated=True) == Verdict(False, None, None, "truncated")
    assert grade(r"so \boxed{5}", "5", truncated=False).correct
    assert grade(r"so \boxed{5}", "5").correct


def test_truncated_output_skips_math_verify():
    t0 = time.monotonic()
    v = grade(HANG_OUTPUT, "1", timeout_s=30, truncated=True)
    assert v == Verdict(False, "9^{9^{9^{9^{9}}}}", "boxed", "truncated")
    assert time.monotonic() - t0 < 5


def test_grade_batch_truncated_flags():
    pairs = [(r"\boxed{5}", "5"), ("we get 5", "5"), (r"\boxed{\sqrt{8}}", r"2\sqrt{2}"),
             (r"\boxed{\frac{1}{", "1")]
    flags = [False, True, True, False]
    vs = grade_batch(pairs, truncated=flags)
    assert [v.reason for v in vs] == ["match:string", "truncated", "truncated", "no_answer"]
    assert vs == [grade(o, g, truncated=t) for (o, g), t in zip(pairs, flags)]
    assert vs[2] == Verdict(False, r"\sqrt{8}", "boxed", "truncated")
    assert [v.reason for v in grade_batch(pairs, truncated=True)] == ["truncated"] * 4
    assert grade_batch(pairs, truncated=False) == grade_batch(pairs)
    assert [v.reason for v in grade_batch(pairs, truncated=(f for f in flags))] == [v.reason for v in vs]
    with pytest.raises(ValueError, match="truncated"):
        grade_batch(pairs, truncated=[True, False])
    assert grade_batch([], truncated=[]) == []


# --------------------------------------------------------------------------
# Thinking blocks: the final answer comes after the thinking
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "output,expected",
    [
        (r"<think> maybe \boxed{7} </think> The answer is \boxed{9}", ("9", "boxed")),
        ("<think>So maybe \\boxed{7}? Let me check.</think>\n\nThe answer is 9.", ("9", "answer_is")),
        ("<think>\\boxed{7} hmm</think>\n\n#### 9", ("9", "hash")),
        ("<think>we get \\boxed{7}</think>\n\nSo there are 9 apples in all.", ("9", "last_number")),
        # r1-zero style: the prompt opened <think>, the reply holds only </think>
        (r"we get \boxed{7} ... wait, 9 </think> <answer> 9 </answer>", ("9", "answer_is")),
        ("<think>a</think> b <think> c </think> The answer is 5.", ("5", "answer_is")),
        # closed thinking, nothing after it: the model never stated a final answer
        (r"<think> the answer is \boxed{7} </think>", (None, None)),
        ("<think> so 7 </think>\n\n", (None, None)),
        # thinking opened and never closed: cut while thinking
        (r"<think> so far \boxed{7} and the answer is 7", (None, None)),
        (r"<think>a</think> The answer is 5. <think> but wait, \boxed{6}", (None, None)),
        # no tags (DeepSeek reasoning_content + "\n\n" + content joined): the last box wins
        ("Maybe \\boxed{7}? No, recount.\n\nSo the answer is \\boxed{9}.", ("9", "boxed")),
    ],
)
def test_extract_answer_after_thinking(output, expected):
    assert extract_answer(output) == expected


def test_thinking_joined_without_tags_cannot_be_told_apart():
    """Documents a limit: without tags a boxed guess while thinking beats a final
    answer given in words (the last box wins)."""
    assert extract_answer("Maybe \\boxed{7}? No.\n\nThe answer is 9.") == ("7", "boxed")


def test_grade_after_thinking():
    out = "<think>So maybe \\boxed{7}? Let me check.</think>\n\nThe answer is 9."
    assert grade(out, "9").correct
    assert not grade(out, "7").correct
    assert grade(r"<think> so \boxed{7} </think>", "7") == Verdict(False, None, None, "no_answer")
    assert grade(r"<think> so \boxed{7}", "7", truncated=True) == Verdict(False, None, None, "truncated")
    v = grade(r"<think> so 7 </think> \boxed{7}", "7", truncated=True)
    assert v == Verdict(False, "7", "boxed", "truncated")


# --------------------------------------------------------------------------
# GSM-Hard numbers: the strict rule's precision (default) and Qwen's math_equal (rule "qwen_math")
# --------------------------------------------------------------------------

GSM_HARD_PRECISION = [  # (output, gold, correct under rule="strict")
    # integer golds: exactly (664 of the 1319 golds are integers >= 10,000)
    (r"\boxed{-9867630}", -9867630.0, True),
    (r"\boxed{-9867630.0}", -9867630.0, True),
    (r"\boxed{-9,867,630}", "-9867630", True),
    (r"\boxed{-9867000}", -9867630.0, False),
    (r"\boxed{-9867631}", -9867630.0, False),
    (r"\boxed{27}", "27.0", True),
    (r"\boxed{27.001}", "27.0", False),
    (r"\boxed{\frac{54}{2}}", 27.0, True),
    # float noise of an integer gold (repr past the 15th significant digit)
    (r"\boxed{55938720}", 55938720.00000001, True),
    (r"\boxed{385671}", 385670.9999999999, True),
    (r"\boxed{55938720.5}", 55938720.00000001, False),
    # non-integer golds: at the precision the answer shows, rounding only
    (r"\boxed{1234.57}", 1234.5678, True),
    (r"\boxed{1234.6}", 1234.5678, True),
    (r"\boxed{1,234.57}", 1234.5678, True),
    (r"\boxed{1234.5678}", 1234.5678, True),
    (r"\boxed{1234.56780}", 1234.5678, True),
    (r"\boxed{1235.57}", 1234.5678, False),
    (r"\boxed{1234.56}", 1234.5678, False),  # truncated, not rounded
    (r"\boxed{1234.56781}", 1234.5678, False),  # a wrong extra decimal
    (r"\boxed{1235}", 1234.5678, False),  # no decimals for a non-integer gold
    (r"\boxed{33}", 33.333, False),
    (r"\boxed{33.333}", 33.333, True),
    (r"\boxed{5.33}", 5.3333333333, True),
    (r"\boxed{5.34}", 5.3333333333, False),
    (r"\boxed{2.24}", "2.245", True),  # a tie rounds either way
    (r"\boxed{2.25}", "2.245", True),
    (r"\boxed{2.23}", "2.245", False),
    (r"\boxed{3244047.1}", 3244047.0999999996, True),
    (r"\boxed{14,053,029.67}", 14053029.666666666, True),
    (r"\boxed{12.3333333333333333}", 12.333333333333334, True),  # past a double's digits
    (r"\boxed{5.158e-7}", 5.158e-07, True),
    (r"\boxed{0.00}", 5.158e-07, False),  # rounded to nothing
    (r"\boxed{50\%}", 0.5, True),
    # exact fractions: within half a unit of the gold's last shown decimal
    (r"\boxed{\frac{37}{3}}", 12.333333333333334, True),
    (r"\boxed{37/3}", 12.333333333333334, True),
    (r"\boxed{\frac{38}{3}}", 12.333333333333334, False),
    (r"\boxed{\frac{411716}{75}}", 5489.5466666667, True),  # gold rounded to 10 decimals
    (r"\boxed{\frac{411717}{75}}", 5489.5466666667, False),
    (r"\boxed{\frac{5}{2}}", 2.5, True),
    (r"\boxed{\frac{7}{3}}", 2.33, True),
    (r"\boxed{\frac{7}{3}}", 2.34, False),
    (r"\boxed{\frac{7}{3}}", 2.3, True),  # the gold shows one decimal: that is its precision
]


@pytest.mark.parametrize("output,gold,correct", GSM_HARD_PRECISION)
def test_gsm_hard_precision_rule(output, gold, correct):
    v = grade(output, gold, "gsm_hard")
    assert v.correct is correct, v
    assert v.reason in ("match:string", "match:numeric", "mismatch:numeric"), v
    assert grade(output, gold, "gsm_hard", rule="strict") == v
    assert grade(output, gold, "gsm-hard") == v


GSM_HARD_MATH_EQUAL = [  # Qwen's math_equal: relative tolerance 1e-4, as published numbers used
    (r"\boxed{-9867000}", -9867630.0, True),
    (r"\boxed{-9867630}", -9867630.0, True),
    (r"\boxed{1234.6}", 1234.5678, True),
    (r"\boxed{1235}", 1234.5678, False),
    (r"\boxed{5.33}", 5.3333333333, False),
    (r"\boxed{3244047.1}", 3244047.0999999996, True),
    (r"\boxed{3240000}", 3244047.0999999996, False),
]


@pytest.mark.parametrize("output,gold,correct", GSM_HARD_MATH_EQUAL)
def test_gsm_hard_math_equal_rule(output, gold, correct):
    v = grade(output, gold, "gsm_hard", rule="qwen_math")
    assert v.correct is correct, v


def test_the_strict_tolerances_are_per_benchmark_qwen_math_s_are_not():
    for bench in (None, "gsm8k", "math500"):
        assert not grade(r"\boxed{-9867000}", "-9867630", bench).correct
        assert not grade(r"\boxed{1234.57}", "1234.5678", bench).correct
        assert grade(r"\boxed{-9867000}", "-9867630", bench, rule="qwen_math").correct  # Qwen: 1e-4 everywhere
        assert grade(r"\boxed{1234.57}", "1234.5678", bench, rule="qwen_math").correct
        for rule in ("strict", "qwen_math"):
            assert grade(r"\boxed{0.5}", r"\frac{1}{2}", bench, rule=rule).correct
    assert grade(r"\boxed{25}", "025", "aime24", rule="qwen_math").correct
    assert not grade(r"\boxed{25.001}", "25", "aime24").correct  # AIME integers exactly
    assert grade(r"\boxed{25.001}", "25", "aime24", rule="qwen_math").correct


def test_grading_rule_is_validated():
    for call in (lambda: grade(r"\boxed{1}", "1", rule="exact"),
                 lambda: grade(r"\boxed{1}", "1", "gsm_hard", rule="Strict"),
                 lambda: grade_batch([(r"\boxed{1}", "1")], rule="precision")):
        with pytest.raises(ValueError, match="'strict'.*'qwen_math'.*'lighteval'"):
            call()
    pairs = [(r"\boxed{-9867000}", -9867630.0), (r"\boxed{5.33}", 5.3333333333)]
    assert [v.correct for v in grade_batch(pairs, "gsm_hard")] == [False, True]
    assert [v.correct for v in grade_batch(pairs, "gsm_hard", rule="qwen_math")] == [True, False]


def test_gsm_hard_golds_graded_against_themselves(capsys):
    """Every GSM-Hard gold passes as its own answer under "precision"; so does
    ``round(target, 2)`` for a non-integer gold, unless that rounds it to 0."""
    rows = _jsonl(BENCHMARKS / "gsm_hard.jsonl")
    targets = [r["target"] for r in rows]
    assert len(targets) == 1319
    own = grade_batch([(f"\\boxed{{{t!r}}}", t) for t in targets], "gsm_hard")
    said = grade_batch([(f"The answer is {t}.", t) for t in targets], "gsm_hard")
    assert all(v.correct for v in own + said), [(t, v) for t, v in zip(targets * 2, own + said)
                                               if not v.correct][:10]
    non_int = [t for t in targets if not float(t).is_integer()]
    rounded = grade_batch([(f"\\boxed{{{round(t, 2)}}}", t) for t in non_int], "gsm_hard")
    failed = [(t, round(t, 2)) for t, v in zip(non_int, rounded) if not v.correct]
    with capsys.disabled():
        print(f"\ngsm_hard golds vs themselves: {sum(v.correct for v in own)}/{len(targets)}; "
              f"non-integer golds as round(t, 2): {len(non_int) - len(failed)}/{len(non_int)}"
              f" (the rest round to 0.0)")
    assert all(r == 0 for _, r in failed), failed


# --------------------------------------------------------------------------
# Concurrency, timeouts, crashes
# --------------------------------------------------------------------------

_MIXED_CASES = [(o, g, b) for o, g, b in EQUIVALENT + NOT_EQUIVALENT]


def test_threaded_grade_matches_serial():
    cases = _MIXED_CASES * 3
    serial = [grade(o, g, b) for o, g, b in cases]
    with ThreadPoolExecutor(max_workers=16) as ex:
        threaded = list(ex.map(lambda c: grade(*c), cases))
    assert threaded == serial
    batched = grade_batch([(o, g) for o, g, _ in cases], [b for _, _, b in cases])
    assert batched == serial


HANG_OUTPUT = r"so the answer is \boxed{9^{9^{9^{9^{9}}}}}"


def test_adversarial_input_times_out_from_non_main_thread():
    result: dict[str, object] = {}

    def run():
        t0 = time.monotonic()
        result["verdict"] = grade(HANG_OUTPUT, "1", timeout_s=1.5)
        result["elapsed"] = time.monotonic() - t0

    th = threading.Thread(target=run, name="not-main")
    th.start()
    th.join(timeout=60)
    assert not th.is_alive(), "grade() hung"
    v = result["verdict"]
    assert v == Verdict(False, "9^{9^{9^{9^{9}}}}", "boxed", "timeout")
    assert result["elapsed"] < 30
    # the pool replaced the killed worker and still works
    assert grade(r"\boxed{2\sqrt{2}}", r"\sqrt{8}").reason == "match:math_verify"
    vs = grade_batch([(HANG_OUTPUT, "1"), (r"\boxed{\sqrt{8}}", r"2\sqrt{2}")] * 2, timeout_s=1.5)
    assert [v.reason for v in vs] == ["timeout", "match:math_verify"] * 2


def test_timeout_inside_a_batch_chunk_spares_the_other_items():
    ok_items = [(rf"\boxed{{{k}\sqrt{{2}}}}", rf"\sqrt{{{2 * k * k}}}") for k in range(2, 8)]
    pairs = ok_items[:2] + [(HANG_OUTPUT, "1")] + ok_items[2:]
    vs = grade_batch(pairs, timeout_s=1.5, workers=1)
    assert [v.reason for v in vs] == ["match:math_verify"] * 2 + ["timeout"] + ["match:math_verify"] * 4


def test_a_worker_killed_while_idle_is_replaced_even_if_the_send_got_through():
    """The kill lands after the item was written to the worker's socket but
    before the worker read it: that is a dead idle worker, not a crashing
    item, so the item goes to a fresh worker (CI once graded it WorkerCrashed)."""
    import signal

    pool = grading_pool._WorkerPool(1)
    try:
        pool.warm(1)
        (pid,) = pool.worker_pids()
        os.kill(pid, signal.SIGSTOP)  # alive, so the send succeeds; never reads it
        result = {}
        th = threading.Thread(target=lambda: result.setdefault(
            "r", pool.run(r"\boxed{\sqrt{8}}", r"\boxed{2\sqrt{2}}", 30.0)))
        th.start()
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        th.join(timeout=60)
        assert not th.is_alive()
        assert result["r"] == ("ok", True)
        assert pid not in pool.worker_pids() and pool.stats["started"] == 2
    finally:
        pool.close()


def test_worker_crash_is_reported_not_hung():
    import signal

    result: dict[str, Verdict] = {}
    before = set(grading_pool._pool_worker_pids())

    def run():
        result["v"] = grade(HANG_OUTPUT, "1", timeout_s=30)

    th = threading.Thread(target=run)
    th.start()
    # wait until some worker is busy on the hanging item, then kill all workers
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not grading_pool._pool_worker_pids():
        time.sleep(0.05)
    time.sleep(1.0)
    for pid in set(grading_pool._pool_worker_pids()) | before:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    th.join(timeout=25)
    assert not th.is_alive()
    assert result["v"].reason == "error:WorkerCrashed", result["v"]
    # killed idle workers are noticed and replaced
    assert grade(r"\boxed{2\sqrt{2}}", r"\sqrt{8}").reason == "match:math_verify"
