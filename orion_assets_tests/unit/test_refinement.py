"""``refined_cots``' core without Dagster (``method.refinement.refine_chunks``): chunk by chunk, each mode's
rewrites of the teacher CoTs every variant draws on, asked of a vLLM-style student over real HTTP (the project's
simulator), with the yields and the problems exposure never reached."""

from __future__ import annotations

import polars as pl

from orion_assets.llm import make_endpoint, sampling_params
from orion_assets.method import problems, refinement
from orion_assets.profiles.schema import EndpointConfig, ReflectionConfig, TrainSource
from orion_assets.store import Store
from orion_assets.tokens import batch_token_counter, load_tokenizer
from orion_devtools.llm_simulator import SimConfig, Simulator

SOURCE = TrainSource(name="arithmetic_train", path="package:arithmetic_train.jsonl", problem_field="question",
                     answer_field="answer", id_field="id", solution_field="solution")


def test_refine_chunks_rewrites_each_drawn_cot_in_each_mode(tmp_path, tiny_student_model):
    pool, _ = problems.load_train_source(SOURCE)
    pool = pool.head(6)
    ids = pool["problem_id"].to_list()
    teacher = pl.DataFrame({"teacher_cot_id": [f"t-{p}" for p in ids], "problem_id": ids, "sample_index": 0,
                            "cot": pool["solution"], "n_tokens": 20, "final_answer": pool["gold_answer"],
                            "finish_reason": "stop"})
    # every problem answered wrong once, but the last: its only exposure call failed
    attempts = pl.DataFrame({"attempt_id": [f"a-{p}" for p in ids], "problem_id": ids, "sample_index": 0,
                             "text": "I think it is \\boxed{1}.", "finish_reason": ["stop"] * 5 + ["error"]})
    errors = attempts.head(5).select("attempt_id", "problem_id", pl.lit("wrong_answer").alias("error_type"))
    read = refinement.ChunkInputs(
        attempts=lambda p: attempts.filter(pl.col("problem_id").is_in(p)).select("problem_id", "finish_reason"),
        problems=lambda p: pool.filter(pl.col("problem_id").is_in(p)),
        errors=lambda p: errors.filter(pl.col("problem_id").is_in(p)),
        texts=lambda a: attempts.filter(pl.col("attempt_id").is_in(a)).select("attempt_id", "sample_index", "text"))
    model = str(tiny_student_model.path)
    with Simulator(SimConfig(persona="student", model="student", tokenizer=model, refine_correct_rate=0.7,
                             seed=5)) as sim:
        cfg = EndpointConfig(backend="openai", base_url=sim.base_url, model="student", concurrency=4, max_tokens=256)
        endpoint = make_endpoint(cfg, Store(tmp_path / "calls.duckdb"), role="student")
        stats = refinement.RefineStats()
        chunks = list(refinement.refine_chunks(
            [teacher.head(3), teacher.tail(3)], read, modes=["orion", "no_error"], student="s",
            cfg=ReflectionConfig(tries=2, unmarked_reply="solution"), overrides={},
            endpoints={"student": endpoint}, params_for={"student": sampling_params(cfg)},
            tokenizer=load_tokenizer(model), count_tokens=batch_token_counter(model),
            progress_for={"orion": lambda: None, "no_error": lambda: None}, stats=stats))
        asked = sim.requests()
    records = [r for chunk in chunks for r in chunk]
    assert len(chunks) == 2 and stats.exposure_failed == [ids[-1]]
    # one row per drawn teacher CoT and mode: a verified rewrite or, failing that, the teacher's own CoT
    assert sorted((r["mode"], r["problem_id"]) for r in records) == sorted(
        (m, p) for m in ("orion", "no_error") for p in ids[:5])
    assert {r["source"] for r in records} <= {"refined", "teacher_fallback"}
    assert all(r["n_tokens"] > 0 and r["length_ratio"] == r["n_tokens"] / 20 for r in records)
    for mode in ("orion", "no_error"):
        counted = stats.yields[mode]
        assert counted["problems"] == 5 and counted["refined"] + counted["teacher_fallback"] == 5
    # the orion prompt shows the student's wrong attempt, the no_error one does not
    kinds = {entry["kind"] for entry in asked}
    assert {"reflect_with_error", "reflect_without_error"} <= kinds
