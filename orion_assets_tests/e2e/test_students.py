"""`orion run` with two students (two tiny random Qwen2 models of different sizes; the default profile's test runs the
real SmolLM2) and two SFT seeds: one teacher, one leaderboard, with mean ± sd over seeds and paired intervals per
student."""

from __future__ import annotations

import duckdb
import pytest

from orion_assets_tests.conftest import orion_run, profile_env

pytestmark = pytest.mark.slow

TRAIN_PROBLEMS = 6
BENCHMARK_PROBLEMS = 6
TWO_STUDENTS = f"""
extends = "tiny"
[data]
train_limit = {TRAIN_PROBLEMS}
benchmark_limit = {BENCHMARK_PROBLEMS}
benchmarks = ["gsm8k"]
[[students]]
name = "tiny"
source = "build_tiny"
[[students]]
name = "wide"
source = "build_tiny"
tiny = {{ hidden_size = 96, intermediate_size = 192, seed = 1 }}
endpoint = {{ batch_size = 12, max_tokens = 48 }}
[exposure]
n = 2
max_tokens = 48
[reflection]
tries = 1
max_tokens = 48
unmarked_reply = "solution"
[sft]
seeds = [0, 1]
max_steps = 2
save_steps = 2
[eval]
max_tokens = 48
"""


def test_two_students_two_seeds_share_the_teacher_and_one_leaderboard(tmp_path) -> None:
    env, data_dir = profile_env(tmp_path, TWO_STUDENTS, "two_students.toml")
    run = orion_run(env)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-5000:]
    con = duckdb.connect(str(data_dir / "orion_store.duckdb"), read_only=True)

    # One teacher call per problem, shared by both students.
    (teacher_calls,) = con.execute("SELECT count(*) FROM orion.llm_calls WHERE role = 'teacher'").fetchone()
    assert teacher_calls == TRAIN_PROBLEMS
    # Exposure, reflection, SFT and evaluation are per student; every trained variant per seed.
    attempts = dict(con.execute("SELECT student, count(*) FROM orion.student_attempts GROUP BY 1").fetchall())
    assert attempts == {"tiny": TRAIN_PROBLEMS * 2, "wide": TRAIN_PROBLEMS * 2}
    checkpoints = set(con.execute("SELECT student, variant, seed FROM orion.student_checkpoint").fetchall())
    trained = {"teacher_sft", "orion", "orion_no_error"}
    assert checkpoints == {(s, "base", 0) for s in ("tiny", "wide")} | {
        (s, v, seed) for s in ("tiny", "wide") for v in trained for seed in (0, 1)}
    losses = dict(con.execute("SELECT seed, list(final_loss ORDER BY final_loss) FROM orion.student_checkpoint "
                              "WHERE student = 'wide' AND variant = 'teacher_sft' GROUP BY 1").fetchall())
    assert losses[0] != losses[1]  # the seed reaches the trainer
    scored = con.execute("SELECT student, variant, seed, n_problems FROM orion.benchmark_scores").fetchall()
    assert len(scored) == 2 * (1 + 3 * 2) and {n for *_, n in scored} == {BENCHMARK_PROBLEMS}

    board = {(r[0], r[1]): r for r in con.execute(
        "SELECT student, variant, gsm8k, gsm8k_sd, gsm8k_seeds, gsm8k_delta, gsm8k_delta_low, gsm8k_delta_high, "
        "gsm8k_n_common, examples, train_tokens, steps FROM orion.leaderboard").fetchall()}  # fmt: skip
    assert {s for s, _ in board} == {"tiny", "wide"}
    for student in ("tiny", "wide"):
        orion = board[(student, "orion")]
        assert orion[4] == 2 and orion[3] is not None  # mean ± sd over two seeds
        assert orion[6] <= orion[5] <= orion[7]  # the paired interval holds the delta
        assert orion[8] == BENCHMARK_PROBLEMS  # every problem answered by both
        assert board[(student, "teacher_sft")][5] == 0.0
        for variant in trained:
            examples, tokens, steps = board[(student, variant)][9:12]
            assert examples > 0 and tokens > 0 and steps == 2, (student, variant, examples, tokens, steps)

    report = (data_dir / "reports" / "leaderboard.md").read_text()
    for needle in ("## pass@1 — student `tiny`", "## pass@1 — student `wide`", "paired bootstrap",
                   "Does the gain hold on every student", "## Training budgets", "mean ± sd over 2 seeds"):
        assert needle in report, needle
