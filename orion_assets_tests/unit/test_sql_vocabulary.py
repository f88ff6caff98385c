"""The sql/ files name no benchmark, variant or mode: they take them from the rows or from the vocabulary views
that both store backends write (orion_assets.store.vocabulary). A benchmark and a mode added to the vocabulary
show in every statistic, in the vocabulary's order, and the leaderboard keeps students and seeds apart."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from orion_assets.llm.cache import LLM_CALLS_DDL
from orion_assets.store import DuckLakeStore, Store
from orion_assets.store import vocabulary as store_vocabulary
from orion_assets.store.ducklake import close_all
from orion_assets.store.queries import SQL_DIR, run_query
from orion_assets.store.vocabulary import VIEW_NAMES, Vocabulary, provide_vocabulary, views, vocabulary_statements
from orion_assets.vocabulary import (
    BASELINES,
    BENCHMARKS,
    DEFAULT_BENCHMARKS,
    MODE_BY_NAME,
    MODE_TABLE,
    MODES,
    VARIANTS,
    Mode,
)

NAMES = sorted({*BENCHMARKS, *VARIANTS, *MODES})
# "orion" is also the schema's name, the command's and the method's.
NOT_A_NAME = re.compile(r"\bUSE orion\b|\borion(?=\.\w)|\borion (?:sql|report|run)\b|\bORION\b")

# The test vocabulary: a mode whose rewriter is the teacher (as no_reflection's) after orion, its variant after
# orion's, and a benchmark after the others.
CRITIQUE = Mode("critique", "orion_critique", "teacher", True, "reflect_critique")
TEST_VOCABULARY = Vocabulary(
    benchmarks=(*BENCHMARKS, "gsm_plus"),
    variants=(*VARIANTS[:3], CRITIQUE.variant, *VARIANTS[3:]),
    modes=(MODE_TABLE[0], CRITIQUE, *MODE_TABLE[1:]),
)
ORION, NO_ERROR = MODE_BY_NAME["orion"], MODE_BY_NAME["no_error"]
BASE, REFERENCE = VARIANTS[0], VARIANTS[1]


def test_no_shipped_sql_file_names_a_benchmark_variant_or_mode():
    found = []
    for path in sorted(SQL_DIR.glob("*.sql")):
        for number, line in enumerate(NOT_A_NAME.sub(" ", path.read_text()).splitlines(), 1):
            found += [f"{path.name}:{number}: {name}" for name in NAMES
                      if re.search(rf"(?<!\w){re.escape(name)}(?!\w)", line, re.IGNORECASE)]
    assert not found, found


@pytest.fixture(params=["duckdb", "ducklake"])
def store(request, tmp_path: Path):
    """An empty store of each backend (the lake: a SQLite catalog, Parquet in a folder)."""
    if request.param == "duckdb":
        yield Store(tmp_path / "orion_store.duckdb")
    else:
        yield DuckLakeStore(f"sqlite:{tmp_path / 'catalog.sqlite'}", tmp_path / "lake")
        close_all()


def stored_views(store) -> dict[str, list[tuple]]:
    with store.connect(read_only=True) as con:
        return {name: con.execute(f"SELECT * FROM orion.{name} ORDER BY position").fetchall() for name in VIEW_NAMES}


def test_both_backends_write_the_vocabulary_views_and_refresh_them_when_it_changes(store, monkeypatch):
    store.append("probe", pl.DataFrame({"x": [1]}))  # the first write makes the bookkeeping
    held = stored_views(store)
    assert held["vocabulary_benchmarks"] == [(b, i, b in DEFAULT_BENCHMARKS) for i, b in enumerate(BENCHMARKS, 1)]
    assert held["vocabulary_modes"] == [(m.name, i, m.variant, m.rewriter, m.shows_error)
                                        for i, m in enumerate(MODE_TABLE, 1)]
    assert [row[0] for row in held["vocabulary_variants"]] == list(VARIANTS)
    kinds = {variant: (kind, mode) for variant, _, kind, mode in held["vocabulary_variants"]}
    assert kinds[BASE] == ("untrained", None) and kinds[REFERENCE] == ("reference", None)
    assert all(kinds[m.variant] == ("mode", m.name) for m in MODE_TABLE)
    assert all(kinds[b] == ("baseline", None) for b in BASELINES)
    with store.connect() as con:
        assert vocabulary_statements(con) == []  # current: a writer opening the store replaces nothing

    monkeypatch.setattr(store_vocabulary, "VOCABULARY", TEST_VOCABULARY)
    if isinstance(store, DuckLakeStore):
        store.close()  # the lake writes them when it is attached
    store.append("probe", pl.DataFrame({"x": [2]}))
    held = stored_views(store)
    assert [row[0] for row in held["vocabulary_benchmarks"]][-1] == "gsm_plus"
    assert [row[0] for row in held["vocabulary_modes"]] == [ORION.name, CRITIQUE.name, *MODES[1:]]
    assert ("orion_critique", 4, "mode", "critique") in held["vocabulary_variants"]


# -- a store with a benchmark and a mode the shipped vocabulary lacks ------------------------------------------


def frame(table: str, rows: list[dict]) -> pl.DataFrame:
    """``rows`` as the table's spec has them (the columns they lack are null)."""
    from orion_assets.assets.statistics import SPECS

    columns = SPECS[table].columns
    return pl.DataFrame([{c: row.get(c) for c in columns} for row in rows], schema=columns)


def fill(store) -> None:
    """Two students; refinements in orion, critique and no_error; predictions and scores of base, the reference,
    orion, orion_critique and orion_no_error on math500 and gsm_plus, orion_critique with two seeds."""
    def write(table: str, rows: list[dict]) -> None:
        store.replace_rows(table, frame(table, rows), replace_where=None,
                           materialization={"asset_key": table, "dagster_run_id": f"run-{table}"})

    write("train_problems", [{"problem_id": "p1", "subject": "Algebra", "level": "Level 1"}, {"problem_id": "p2"}])
    write("teacher_cots", [{"teacher_cot_id": f"t{i}", "problem_id": f"p{i}", "n_tokens": 100 * i,
                            "llm_call_id": f"call-t{i}"} for i in (1, 2)])
    refined = [{"refined_cot_id": f"{s}-{m.name}-{p}", "student": s, "problem_id": p, "mode": m.name,
                "source": "refined" if p == "p1" else "teacher_fallback", "n_tokens": 50,
                "llm_call_id": f"call-{s}-{m.name}-{p}"} for s in ("s1", "s2") for m in (ORION, CRITIQUE, NO_ERROR)
               for p in ("p1", "p2")]
    write("refined_cots", refined)
    write("cot_quality", [{"student": r["student"], "cot_table": "refined_cots", "refined_cot_id": r["refined_cot_id"],
                           "n_steps": 3} for r in refined])
    write("student_attempts", [{"attempt_id": "a1", "student": "s1", "problem_id": "p1", "correct": False}])
    write("student_errors", [{"error_id": "e1", "attempt_id": "a1", "student": "s1", "problem_id": "p1",
                              "error_type": "wrong_answer"}])
    models = [(s, v, seed) for s in ("s1", "s2")
              for v in (BASE, REFERENCE, ORION.variant, CRITIQUE.variant, NO_ERROR.variant)
              for seed in ((0, 1) if v == CRITIQUE.variant else (0,))]
    pass_at_1 = {BASE: 0.1, REFERENCE: 0.3, ORION.variant: 0.4, CRITIQUE.variant: 0.5, NO_ERROR.variant: 0.35}
    write("benchmark_predictions", [
        {"prediction_id": f"{b}-{s}-{v}-{seed}", "benchmark": b, "student": s, "variant": v, "seed": seed,
         "correct": True, "finish_reason": "stop", "n_tokens": 40, "llm_call_id": f"call-{b}-{s}-{v}-{seed}"}
        for b in ("math500", "gsm_plus") for s, v, seed in models])
    write("benchmark_scores", [
        {"score_id": f"{b}-{s}-{v}-{seed}", "benchmark": b, "student": s, "variant": v, "seed": seed,
         "pass_at_1": pass_at_1[v] + 0.1 * seed + (0.05 if s == "s2" else 0), "pass_at_1_se": 0.01, "n_problems": 10,
         "n_errors": 0, "grading_rule": "strict", "primary": True, "prediction_ids": [f"{b}-{s}-{v}-{seed}"]}
        for b in ("math500", "gsm_plus") for s, v, seed in models])
    calls = [{"call_id": f"call-t{i}", "role": "teacher", "prompt_hash": f"h-t{i}"} for i in (1, 2)]
    calls += [{"call_id": r["llm_call_id"], "role": MODE_BY_NAME.get(r["mode"], CRITIQUE).rewriter,
               "prompt_hash": f"h-{r['refined_cot_id']}"} for r in refined]
    calls += [{"call_id": f"call-{b}-{s}-{v}-{seed}", "role": "student", "prompt_hash": f"h-{b}-{s}-{v}-{seed}"}
              for b in ("math500", "gsm_plus") for s, v, seed in models]
    with store.connect() as con:
        con.execute(LLM_CALLS_DDL)
    store.append("llm_calls", pl.DataFrame([{**c, "model": "m", "status": "ok", "retries": 0, "prompt_tokens": 10,
                                             "completion_tokens": 5, "dagster_run_id": "run-llm"} for c in calls]))


@pytest.fixture
def filled(store, monkeypatch):
    monkeypatch.setattr(store_vocabulary, "VOCABULARY", TEST_VOCABULARY)
    fill(store)
    return store


def answers(store) -> dict[str, pl.DataFrame]:
    with store.connect(read_only=True) as con:
        return {path.stem: run_query(con, path.read_text()) for path in sorted(SQL_DIR.glob("*.sql"))}


def test_every_statistic_includes_the_benchmark_and_mode_the_vocabulary_adds(filled):
    got = answers(filled)
    modes = [ORION.name, CRITIQUE.name, NO_ERROR.name]  # the test vocabulary's order, not the shipped one's
    variants = [BASE, REFERENCE, ORION.variant, CRITIQUE.variant, NO_ERROR.variant]

    cot = got["cot_stats"]
    assert cot.filter(pl.col("student") == "s1")["mode"].unique(maintain_order=True).to_list() == modes
    yields = got["refinement_yield"].filter(pl.col("scope") == "mode")
    assert yields.select("student", "mode").rows() == [(s, m) for s in ("s1", "s2") for m in modes]
    assert yields["yield"].to_list() == [0.5] * 6
    lengths = got["length_vs_accuracy"]
    assert lengths.filter(pl.col("student") == "s1")["variant"].unique(maintain_order=True).to_list() == variants

    board = got["leaderboard"]
    assert board.filter(pl.col("student") == "s1").select("variant", "benchmark").rows() == [
        (v, b) for v in variants for b in ("math500", "gsm_plus")]
    usage = got["usage_cost"]
    reflection = usage.filter(pl.col("stage") == "refined_cots")
    assert reflection["detail"].to_list() == modes  # critique's teacher calls are critique's
    assert reflection.filter(pl.col("detail") == CRITIQUE.name).row(0, named=True)["role"] == "teacher"
    assert reflection["calls"].to_list() == [4, 4, 4]
    assert usage.filter(pl.col("stage") == "benchmark_predictions")["detail"].to_list() == variants
    assert got["lineage"]["variant"].unique().to_list() == [ORION.variant]  # the first mode's variant
    assert got["error_taxonomy"]["errors"].to_list() == [1]  # (it names no benchmark, variant or mode)


def test_the_leaderboard_is_tidy_and_keeps_students_and_seeds_apart(filled):
    board = answers(filled)["leaderboard"]
    assert board.height == 2 * 5 * 2  # students x variants x benchmarks, one grading rule
    assert board.select("student", "variant", "benchmark", "grading_rule").n_unique() == board.height
    row = board.filter((pl.col("student") == "s2") & (pl.col("variant") == CRITIQUE.variant)
                       & (pl.col("benchmark") == "gsm_plus")).row(0, named=True)
    assert row["seeds"] == 2 and row["primary"] and row["grading_rule"] == "strict"
    assert row["pass_at_1"] == pytest.approx(0.6) and row["pass_at_1_sd"] == pytest.approx(0.1 / 2 ** 0.5)
    assert row["delta"] == pytest.approx(100 * (0.6 - 0.35)) and row["delta_base"] == pytest.approx(100 * (0.6 - 0.15))
    reference = board.filter(pl.col("variant") == REFERENCE)
    assert reference["delta"].to_list() == [0.0] * 4 and reference["pass_at_1_sd"].null_count() == 4


def test_the_plain_client_reads_the_stored_views(tmp_path, monkeypatch):
    monkeypatch.setattr(store_vocabulary, "VOCABULARY", TEST_VOCABULARY)
    store = Store(tmp_path / "orion_store.duckdb")
    fill(store)
    via_store = answers(store)
    with duckdb.connect(str(store.path), read_only=True) as con:
        for path in sorted(SQL_DIR.glob("*.sql")):
            assert_frame_equal(con.sql(path.read_text()).pl(), via_store[path.stem], check_dtypes=False)


def test_a_store_without_the_views_gets_them_for_the_read(tmp_path):
    path = tmp_path / "orion_store.duckdb"
    with duckdb.connect(str(path)) as con:  # written before the views existed
        con.execute("CREATE SCHEMA orion")
        con.register("scores", frame("benchmark_scores", [
            {"score_id": "x", "benchmark": "math500", "student": "s", "variant": REFERENCE, "seed": 0,
             "pass_at_1": 0.5, "grading_rule": "strict", "primary": True}]).to_arrow())
        con.execute("CREATE TABLE orion.benchmark_scores AS SELECT * FROM scores")
    with Store(path).connect(read_only=True) as con:
        board = run_query(con, (SQL_DIR / "leaderboard.sql").read_text())
        assert provide_vocabulary(con) == list(VIEW_NAMES)  # temporary: the file stays as it was
    assert board.select("variant", "delta").rows() == [(REFERENCE, 0.0)]
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM duckdb_views() WHERE schema_name = 'orion'").fetchone()[0] == 0


def test_the_views_hold_what_the_vocabulary_says():
    extended = dataclasses.replace(TEST_VOCABULARY, baselines=())
    by_name = {view.name: view for view in views(extended)}
    assert ("rft", 7, "other", None) in by_name["vocabulary_variants"].rows  # not declared a baseline there
    assert by_name["vocabulary_benchmarks"].rows[-1] == ("gsm_plus", len(BENCHMARKS) + 1, False)
