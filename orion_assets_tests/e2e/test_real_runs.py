"""The real-run fixes, protected end to end: real Dagster runs of the real assets (train_problems
to refined_cots) against the LLM simulator over real HTTP, with a real DuckDB store.

Two runs share one data folder (so the tiny student is built once):

* ``think``: an R1-distill model served raw (``<think>`` in the content) is both teacher and
  student (teacher_cots, student_attempts): thinking that holds a wrong boxed guess, replies cut
  while thinking.
* ``main``: the DeepSeek API (``reasoning_content``) teaches; a vLLM-like student whose
  ``max_model_len`` is a small context window loops, boxes an answer and then loops, writes
  unsplittable reflections; its tokens are counted with the tiny student's own tokenizer, as
  vLLM counts them. Every asset from teacher_cots to refined_cots (all three modes).

Everything is deterministic: the simulator's replies are hashes of the requests. The sizes below
(context window, max_tokens, reasoning words, rates) are chosen so that every case the tests
look for occurs in these replies; each test asserts that its case occurred, so a change that makes
one vanish fails loudly instead of passing vacuously.
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest

from orion_assets.io.io_manager import resources_for
from orion_assets.io.resource import OrionResource
from orion_assets.method import prompts
from orion_assets.method.exposure import ERROR_PRIORITY
from orion_assets.store import Store
from orion_assets_tests.conftest import gsm8k_train_rows, materialize_each
from orion_assets_tests.graph import refined_cots, student_attempts, student_base_model, student_errors, teacher_cots, train_problems
from orion_devtools.llm_simulator import SimConfig, Simulator

ASSETS = [train_problems, student_base_model, teacher_cots, student_attempts, student_errors, refined_cots]
WINDOW = 1330  # the student's context window: vLLM's max_model_len and the profile's context_window
ATTEMPT_MAX_TOKENS = 96
MIN_REPLY_TOKENS = 128
REFLECT_MAX_TOKENS = 400
EXPOSURE_MAX_TOKENS = 160
STUDENT = "Qwen/Qwen2.5-1.5B-Instruct"
CLIP = "tokens of this attempt omitted"
ATTEMPT_HEADER = "Here is your earlier attempt, which reached a wrong answer:\n"
BOX = re.compile(r"\\boxed\{([^{}]*)\}")


def _profile(root: Path, name: str, *, teacher: Simulator, teacher_model: str, student: Simulator,
             student_model: str, teacher_max_tokens: int, exposure_max_tokens: int, window: int | None,
             exposure_n: int = 4) -> str:  # fmt: skip
    path = root / name
    path.write_text(
        f"""
extends = "tiny"
[data]
train_limit = 16
[[data.train_sources]]
name = "gsm8k_train"
path = "{root / "pool.jsonl"}"
problem_field = "question"
answer_field = "answer"
answer_format = "gsm8k"
solution_field = "answer"
[student_model.tiny]
vocab_size = 512
[endpoints.teacher]
backend = "openai"
base_url = "{teacher.base_url}"
model = "{teacher_model}"
max_tokens = {teacher_max_tokens}
concurrency = 4
max_retries = 0
[endpoints.student]
backend = "openai"
base_url = "{student.base_url}"
model = "{student_model}"
max_tokens = {exposure_max_tokens}
concurrency = 4
max_retries = 0
{f"context_window = {window}" if window else ""}
[exposure]
n = {exposure_n}
max_tokens = {exposure_max_tokens}
[reflection]
tries = 2
on_failure = "teacher"
max_tokens = {REFLECT_MAX_TOKENS}
attempt_max_tokens = {ATTEMPT_MAX_TOKENS}
min_reply_tokens = {MIN_REPLY_TOKENS}
"""
    )
    return str(path)


def _last_message(messages_json: str) -> str:
    return json.loads(messages_json)[-1]["content"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("real_runs")
    # A small pool of real GSM8K problems: the tiny student's tokenizer trains on it in a second.
    with (root / "pool.jsonl").open("w", encoding="utf-8") as handle:
        for row in gsm8k_train_rows(60):
            handle.write(json.dumps(row) + "\n")
    data_dir = root / "data"
    store = Store(data_dir / "orion_store.duckdb")

    def materialize(profile: str, selection: list[str]) -> dg.ExecuteInJobResult:
        resources = resources_for(OrionResource(profile=profile, data_dir=str(data_dir)))
        result = materialize_each(ASSETS, resources, selection=selection)
        assert result.success
        return result

    out: dict[str, Any] = {}
    think_cfg = SimConfig(persona="teacher_think", model="r1-distill", reasoning_words=120, max_model_len=None,
                          log_prompts=True)  # fmt: skip
    deepseek_cfg = SimConfig(persona="teacher_reasoning_content", model="deepseek-reasoner", reasoning_words=200,
                             max_model_len=None, refine_correct_rate=0.9, unsplittable_rate=0.0,
                             log_prompts=True)  # fmt: skip
    with Simulator(think_cfg) as think, Simulator(deepseek_cfg) as deepseek:
        # Run 1: a raw R1-distill model teaches and is the student too.
        p_think = _profile(root, "think.toml", teacher=think, teacher_model="r1-distill", student=think,
                           student_model="r1-distill", teacher_max_tokens=215, exposure_max_tokens=215, exposure_n=8,
                           window=None)  # fmt: skip
        materialize(p_think, ["train_problems", "student_base_model", "teacher_cots", "student_attempts"])
        out["think"] = {
            "teacher_cots": store.read("teacher_cots"),
            "attempts": store.read("student_attempts"),
            "calls": store.read("llm_calls").filter(pl.col("base_url") == think.base_url),
        }
        out["problems"] = {r["problem_id"]: r for r in store.read("train_problems").iter_rows(named=True)}
        model_path = store.read("student_base_model")["path"][0]
        out["model_path"] = model_path

        # Run 2: the DeepSeek API teaches; the student counts tokens with the tiny student's tokenizer.
        student_cfg = SimConfig(persona="student", model=STUDENT, tokenizer=model_path, max_model_len=WINDOW,
                                correct_rate=0.25, loop_rate=0.5, loop_after_answer_rate=0.3, unsplittable_rate=0.5,
                                refine_correct_rate=0.7, log_prompts=True)  # fmt: skip
        with Simulator(student_cfg) as student:
            p_main = _profile(root, "main.toml", teacher=deepseek, teacher_model="deepseek-reasoner", student=student,
                              student_model=STUDENT, teacher_max_tokens=341,
                              exposure_max_tokens=EXPOSURE_MAX_TOKENS, window=WINDOW)  # fmt: skip
            result = materialize(p_main, ["teacher_cots", "student_attempts", "student_errors", "refined_cots"])
            student_log = student.requests()
        deepseek_log = deepseek.requests()
        (mat,) = result.asset_materializations_for_node("refined_cots")
        (teacher_mat,) = result.asset_materializations_for_node("teacher_cots")
        with store.connect(read_only=True) as con:  # each call with its prompt, stored once in llm_prompts
            calls = con.execute("SELECT c.*, p.messages FROM orion.llm_calls c JOIN orion.llm_prompts p "
                                "USING (prompt_hash)").pl()
        out["main"] = {
            "teacher_cots": store.read("teacher_cots"),
            "teacher_rejected": teacher_mat.metadata["rejected"].value,
            "attempts": store.read("student_attempts"),
            "errors": store.read("student_errors"),
            "refined": store.read("refined_cots"),
            "counts_by_mode": mat.metadata["counts_by_mode"].value,
            "teacher_calls": calls.filter(pl.col("base_url") == deepseek.base_url),
            "student_calls": calls.filter(pl.col("base_url") == student.base_url),
            "student_log": student_log,
            "deepseek_log": deepseek_log,
        }
    return out


def _gold(runs: dict[str, Any], problem_id: str) -> str:
    return runs["problems"][problem_id]["gold_answer"]


def _log_entry(log: list[dict], prompt: str, seed: int) -> dict:
    (entry,) = [e for e in log if e.get("prompt") == prompt and e["seed"] == seed and e["status"] == 200]
    return entry


# -- 1. reasoning teachers -----------------------------------------------------------------------


@pytest.mark.parametrize("teacher", ["think", "main"])
def test_reasoning_teacher_cots_are_thinking_then_answer_and_verified_after_the_thinking(runs, teacher):
    run = runs[teacher]
    cots, calls = run["teacher_cots"], run["calls"] if teacher == "think" else run["teacher_calls"]
    calls = {c["call_id"]: c for c in calls.filter(pl.col("role") == "teacher").iter_rows(named=True)}
    assert cots.height >= 5
    guessed_wrong_while_thinking = 0
    for row in cots.iter_rows(named=True):
        call = calls[row["llm_call_id"]]
        if teacher == "think":  # R1-distill served raw: "<think>\n...\n</think>\n\nanswer"
            assert call["reasoning"] is None and call["text"].startswith("<think>")
            thinking, _, answer = call["text"].removeprefix("<think>").partition("</think>")
        else:  # DeepSeek: reasoning_content beside content
            thinking, answer = call["reasoning"], call["text"]
        assert row["cot"] == f"{thinking.strip()}\n\n{answer.strip()}"
        assert "<think>" not in row["cot"] and "</think>" not in row["cot"]
        assert row["has_thinking"] is True
        gold = _gold(runs, row["problem_id"])
        # The verified answer is the one after the thinking, whatever the thinking boxed.
        assert row["final_answer"] == gold and BOX.findall(answer)[-1] == gold
        guessed_wrong_while_thinking += any(box != gold for box in BOX.findall(thinking))
    assert guessed_wrong_while_thinking >= 1

    # Replies cut while thinking are rejected as truncated, never verified.
    cut_while_thinking = [
        c for c in calls.values()
        if c["finish_reason"] == "length"
        and (("</think>" not in c["text"]) if teacher == "think" else (c["text"] == "" and c["reasoning"]))
    ]  # fmt: skip
    assert cut_while_thinking, "no teacher reply was cut while thinking: lower the teacher's max_tokens"
    kept = set(cots["llm_call_id"])
    assert not any(c["call_id"] in kept for c in cut_while_thinking)
    if teacher == "main":
        assert run["teacher_rejected"]["truncated"] == sum(c["finish_reason"] == "length" for c in calls.values())
        assert all(e["status"] == 200 for e in run["deepseek_log"])


# -- 2. error exposure -----------------------------------------------------------------------------


def test_looping_attempts_are_repetition_loops_even_after_a_boxed_answer(runs):
    main = runs["main"]
    log = main["student_log"]
    calls = {c["call_id"]: c for c in main["student_calls"].iter_rows(named=True)}
    by_format: dict[str, list[dict]] = collections.defaultdict(list)
    for attempt in main["attempts"].iter_rows(named=True):
        call = calls[attempt["llm_call_id"]]
        entry = _log_entry(log, _last_message(call["messages"]), attempt["sample_index"])
        assert entry["kind"] == "solve"
        by_format[entry["format"]].append(attempt)
    loops = by_format["loop"] + by_format["loop_after_answer"]
    assert by_format["loop_after_answer"] and by_format["loop"]
    # A loop cut after a repeat or two is only a cut reply to the loop rule (docs/exposure.md): at
    # this budget the simulator's loop unit fits 1-4 times, so only the longer loops are typed loops.
    for attempt in loops:
        assert attempt["finish_reason"] == "length" and attempt["correct"] is False
        repeats = attempt["text"].count("Wait, let me recompute that.")
        assert attempt["error_type"] == "repetition_loop" if repeats >= 4 else attempt["error_type"] in (
            "repetition_loop", "truncated"), (repeats, attempt["text"])
    # The loop started after the right answer was boxed: a cut reply is still no solved problem.
    for attempt in by_format["loop_after_answer"]:
        assert f"\\boxed{{{_gold(runs, attempt['problem_id'])}}}" in attempt["text"]
    # Unfinished attempts ("I am not sure how to finish from here.") are errors; the grader's
    # last-number fallback reads the last step's number as their answer, so they count as wrong.
    assert by_format["none"] and all(a["error_type"] in ("no_answer", "wrong_answer") for a in by_format["none"])
    types = set(main["errors"]["error_type"])
    assert "wrong_answer" in types and types & {"repetition_loop", "truncated"}
    erred = main["attempts"].filter(pl.col("error_type").is_not_null())
    assert set(main["errors"]["attempt_id"]) == set(erred["attempt_id"])


def test_reasoning_student_is_graded_on_the_answer_after_its_thinking(runs):
    attempts = runs["think"]["attempts"]
    solved_past_a_wrong_guess = cut_after_a_guess = 0
    for row in attempts.iter_rows(named=True):
        gold = _gold(runs, row["problem_id"])
        thinking, closed, answer = row["text"].removeprefix("<think>").partition("</think>")
        if not closed:  # cut while thinking: no answer yet, whatever the thinking boxed
            # (the simulator's templated thinking may repeat one sentence to the cut: then it is a loop)
            assert row["finish_reason"] == "length" and row["error_type"] in ("truncated", "repetition_loop")
            assert row["correct"] is False and row["extracted_answer"] is None
            cut_after_a_guess += bool(BOX.findall(thinking))
            continue
        if row["finish_reason"] == "stop" and any(box != gold for box in BOX.findall(thinking)):
            answer_boxes = BOX.findall(answer)
            assert row["extracted_answer"] == answer_boxes[-1]
            assert row["correct"] == (answer_boxes[-1] == gold)
            solved_past_a_wrong_guess += row["correct"]
    assert solved_past_a_wrong_guess >= 1 and cut_after_a_guess >= 1


# -- 3. the reflection budget --------------------------------------------------------------------


def test_reflect_prompts_fit_the_student_context_window(runs):
    main = runs["main"]
    log = main["student_log"]
    assert log and all(e["status"] == 200 for e in log), [e.get("error") for e in log if e["status"] != 200]
    assert all(e["prompt_tokens"] + e["max_tokens"] <= WINDOW for e in log)
    reflect = [e for e in log if e["kind"] != "solve"]
    assert all(MIN_REPLY_TOKENS <= e["max_tokens"] <= REFLECT_MAX_TOKENS for e in reflect)
    assert any(e["max_tokens"] < REFLECT_MAX_TOKENS for e in reflect)  # cut to the room the prompt left

    refined = main["refined"]
    student_rows = refined.filter(pl.col("mode").is_in(["orion", "no_error"]))
    overflow = student_rows.filter(pl.col("failure_reasons").list.contains("context_overflow"))
    assert overflow.filter(pl.col("mode") == "orion").height >= 1
    for row in overflow.iter_rows(named=True):  # not sent, not retried
        assert row["failure_reasons"] == ["context_overflow"] and row["tries_used"] == 1
        assert row["source"] == "teacher_fallback"
    for mode in ("orion", "no_error", "no_reflection"):
        assert main["counts_by_mode"][mode]["context_overflow"] == overflow.filter(pl.col("mode") == mode).height
    # Every try that was not an overflow reached the server, and nothing else did. (An orion task
    # for a problem the student never got wrong asks what no_error asks: it is answered from the cache.)
    asked = student_rows.filter((pl.col("mode") == "no_error") | (pl.col("error_attempt_ids").list.len() > 0))
    sent = sum(r["tries_used"] - (r["failure_reasons"] == ["context_overflow"]) for r in asked.iter_rows(named=True))
    assert len(reflect) == sent == len({(e["prompt"], e["seed"]) for e in reflect})


def test_the_most_useful_error_is_shown_and_long_attempts_are_clipped(runs):
    from orion_assets.tokens import load_tokenizer

    main = runs["main"]
    tokenizer = load_tokenizer(runs["model_path"])
    attempts = {a["attempt_id"]: a for a in main["attempts"].iter_rows(named=True)}
    errors_by_problem = collections.defaultdict(list)
    for attempt in attempts.values():
        if attempt["error_type"]:
            errors_by_problem[attempt["problem_id"]].append(attempt)
    reflect_prompts = {e["prompt"] for e in main["student_log"] if e["kind"] == "reflect_with_error"}
    orion = main["refined"].filter(pl.col("mode") == "orion")
    wrong_over_an_earlier_loop = clipped = shown_whole = 0
    for row in orion.iter_rows(named=True):
        errors = errors_by_problem[row["problem_id"]]
        if not errors:
            continue
        (shown_id,) = row["error_attempt_ids"]
        shown = attempts[shown_id]
        best = min(ERROR_PRIORITY[e["error_type"]] for e in errors)
        assert ERROR_PRIORITY[shown["error_type"]] == best
        best_samples = [e["sample_index"] for e in errors if ERROR_PRIORITY[e["error_type"]] == best]
        assert shown["sample_index"] == min(best_samples)
        first = min(errors, key=lambda e: e["sample_index"])
        if row["failure_reasons"] == ["context_overflow"]:
            continue
        head = f"Problem:\n{runs['problems'][row['problem_id']]['problem']}\n"
        (prompt,) = [p for p in reflect_prompts if p.startswith(head)]  # the same prompt for every try
        section = prompt.split(ATTEMPT_HEADER, 1)[1].split("\n\nFind the step where", 1)[0]
        text = shown["text"]
        if shown["n_tokens"] <= ATTEMPT_MAX_TOKENS:
            assert section == text.strip() and CLIP not in section
            shown_whole += 1
        else:  # the start and the end of the attempt, its middle replaced by the marker
            assert CLIP in section and text not in section
            assert text[:30] in section and text.rstrip()[-20:] in section
            assert len(tokenizer(section, add_special_tokens=False)["input_ids"]) <= ATTEMPT_MAX_TOKENS + 8
            clipped += 1
        if first["error_type"] in ("repetition_loop", "truncated") and shown["error_type"] == "wrong_answer":
            assert "Wait, let me recompute that." not in section  # not the loop
            wrong_over_an_earlier_loop += 1
    assert wrong_over_an_earlier_loop >= 1 and clipped >= 1 and shown_whole >= 1


# -- 4. reflection parsing -----------------------------------------------------------------------

MARKERS = re.compile(r"REFLECTION|### Reflection|\*\*Reflection|<think>|</think>|^\W*SOLUTION\W*:", re.MULTILINE)


def test_unsplittable_replies_are_retried_then_fall_back_and_no_markers_reach_a_cot(runs):
    main = runs["main"]
    refined, counts = main["refined"], main["counts_by_mode"]
    student_rows = refined.filter(pl.col("mode").is_in(["orion", "no_error"]))
    twice = student_rows.filter(pl.col("failure_reasons") == pl.lit(["unsplittable", "unsplittable"]))
    assert twice.height >= 1
    assert (twice["source"] == "teacher_fallback").all() and (twice["tries_used"] == 2).all()
    teacher = dict(main["teacher_cots"].select("teacher_cot_id", "cot").iter_rows())
    assert all(row["cot"] == teacher[row["teacher_cot_id"]] for row in twice.iter_rows(named=True))
    # An unsplittable first reply is retried, never kept.
    first_unsplittable = student_rows.filter(pl.col("failure_reasons").list.first() == "unsplittable")
    assert first_unsplittable.height > twice.height and (first_unsplittable["tries_used"] == 2).all()
    for mode in ("orion", "no_error"):
        reasons = [r for rs in refined.filter(pl.col("mode") == mode)["failure_reasons"] for r in rs]
        assert counts[mode]["unsplittable_replies"] == reasons.count("unsplittable")
    assert sum(e.get("format") == "unsplittable" for e in main["student_log"]) >= twice.height * 2

    # Every reflect reply of the run, as the pipeline splits it: the solution holds no section
    # marker and none of the notes, also when a line of the notes reads "Correct solution: ...".
    replies = [
        c["text"] for c in pl.concat([main["student_calls"], main["teacher_calls"]]).iter_rows(named=True)
        if c["status"] == "ok" and "Reply in two parts" in _last_message(c["messages"])
    ]  # fmt: skip
    assert sum("\nCorrect solution:" in r for r in replies) >= 1
    for reply in replies:
        notes, solution = prompts.split_reflection(reply)
        if solution is not None:
            assert not MARKERS.search(solution), reply
            assert not notes or notes not in solution

    done = refined.filter(pl.col("source") == "refined")
    assert done.height >= 5
    for row in done.iter_rows(named=True):
        assert not MARKERS.search(row["cot"]), row["cot"]
        if row["reflection_notes"]:
            assert row["reflection_notes"] not in row["cot"]
        assert BOX.findall(row["cot"])[-1] == row["final_answer"] == _gold(runs, row["problem_id"])


# -- 5. a reasoning teacher's rewrite trains on its solution, its thinking kept apart ----------------


def test_a_teacher_rewrite_trains_on_its_solution_and_keeps_its_thinking_apart(runs):
    main = runs["main"]
    calls = {c["call_id"]: c for c in main["teacher_calls"].iter_rows(named=True)}
    rewrites = main["refined"].filter((pl.col("mode") == "no_reflection") & (pl.col("source") == "refined"))
    assert rewrites.height >= 3
    for row in rewrites.iter_rows(named=True):
        call = calls[row["llm_call_id"]]
        thinking = call["reasoning"].strip()
        # Its thinking reasons about the student's attempt, which the SFT prompt never shows: stored, not trained on.
        assert len(thinking.split()) >= 20 and row["rewrite_thinking"] == thinking
        assert row["cot"] and call["text"].strip().endswith(row["cot"])  # the solution part of the content
        assert thinking not in row["cot"]
