"""`orion run` on the default profile, as the README's first command runs it: SmolLM2-135M-Instruct learns the
generated arithmetic word problems, and the leaderboard says by how much.

This is the test that fails when SFT, serving and grading stop working together: a loss over the wrong tokens, a
chat template the student never sees at evaluation, an adapter that is not applied or a grader that misses the
answer all leave `teacher_sft` no better than `base`.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pytest

from orion_assets_tests.conftest import orion_run

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.result, pytest.mark.timeout(2400)]

TRAINED = ("teacher_sft", "orion", "orion_no_error")


def leaderboard(data_dir: Path) -> dict[str, dict]:
    with duckdb.connect(str(data_dir / "orion_store.duckdb"), read_only=True) as con:
        return {row["variant"]: row for row in con.execute("SELECT * FROM orion.leaderboard").pl().to_dicts()}


def assert_teacher_sft_beats_base(board: dict[str, dict]) -> None:
    """`teacher_sft` answers more problems than `base`, and the paired 95% interval of base - teacher_sft (every
    delta is taken against teacher_sft) lies below 0."""
    base, taught = board["base"], board["teacher_sft"]
    assert taught["arithmetic"] > 0, {variant: row["arithmetic"] for variant, row in board.items()}
    assert taught["arithmetic"] > base["arithmetic"], (base["arithmetic"], taught["arithmetic"])
    assert base["arithmetic_delta_high"] < 0, (base["arithmetic_delta"], base["arithmetic_delta_low"], base["arithmetic_delta_high"])


def test_the_default_profile_teaches_smollm2_arithmetic_and_the_interval_shows_it(tmp_path) -> None:
    data_dir, home = tmp_path / "data", tmp_path / "dagster_home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORION_PROFILE"}  # the default profile
    env.update(ORION_DATA_DIR=str(data_dir), DAGSTER_HOME=str(home))
    run = orion_run(env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "profile arithmetic" in run.stdout.splitlines()[0], run.stdout[:300]

    board = leaderboard(data_dir)
    assert set(board) == {"base", *TRAINED}, set(board)  # orion_no_reflection needs a teacher that can rewrite
    assert_teacher_sft_beats_base(board)
    for variant in TRAINED:  # SFT on boxed worked solutions: the trained students box their answers
        assert board[variant]["arithmetic_boxed"] > board["base"]["arithmetic_boxed"], (variant, board[variant])

    report = (data_dir / "reports" / "leaderboard.md").read_text()
    for needle in ("paired bootstrap", "teacher fallback", "`orion`", "`no_error`"):
        assert needle in report, needle
