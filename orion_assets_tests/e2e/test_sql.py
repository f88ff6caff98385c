"""The files in sql/: each runs as it is through `orion sql` and in a plain DuckDB connection, with
the same rows, and its numbers add up against the tables they summarize."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from orion_assets.assets.statistics import STATISTICS
from orion_assets.vocabulary import BASE_VARIANT, ERROR_TYPES, REFERENCE_VARIANT
from orion_devtools.services import lake_store_section

# Every test here reads the whole tiny graph, run once per session (minutes).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SQL_DIR = REPO / "sql"
SQL_FILES = ["cot_stats", "error_taxonomy", "refinement_yield", "length_vs_accuracy", "leaderboard", "lineage",
             "usage_cost"]
TOL = 1e-9


@pytest.fixture(scope="module")
def data_dir(tiny_run) -> Path:
    return Path(tiny_run["data_dir"])


def orion_sql(data_dir: Path, *args: str, fmt: str = "json") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orion_assets.cli", "--data-dir", str(data_dir), "sql", *args,
                           "--format", fmt], cwd=REPO, capture_output=True, text=True, timeout=300)


def direct(data_dir: Path, name: str) -> pl.DataFrame:
    """The file as it is, in a plain connection to the file (catalog "orion", as in the duckdb CLI)."""
    with duckdb.connect(str(data_dir / "orion_store.duckdb"), read_only=True) as con:
        return con.sql((SQL_DIR / f"{name}.sql").read_text()).pl()


def query(data_dir: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(data_dir / "orion_store.duckdb"), read_only=True) as con:
        return con.sql(f"USE orion; {sql}").fetchall()


@pytest.fixture(scope="module")
def result(data_dir):
    """The rows of sql/<name>.sql through `orion sql --format json`, run once per module."""
    _results: dict[str, pl.DataFrame] = {}

    def get(name: str) -> pl.DataFrame:
        if name not in _results:
            run = orion_sql(data_dir, str(SQL_DIR / f"{name}.sql"))
            assert run.returncode == 0, f"orion sql sql/{name}.sql failed:\n{run.stderr[-3000:]}"
            lines = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
            _results[name] = pl.DataFrame(lines, infer_schema_length=None)
        return _results[name]

    return get


def test_every_file_is_documented_and_starts_with_use_orion():
    assert sorted(p.stem for p in SQL_DIR.glob("*.sql")) == sorted(SQL_FILES)
    for name in SQL_FILES:
        text = (SQL_DIR / f"{name}.sql").read_text()
        header = text.split("USE orion;")[0]
        assert header.startswith(f"-- {name}.sql: "), name
        for word in ("Columns:", "Run", f"orion sql sql/{name}.sql", "duckdb -readonly"):
            assert word in header, (name, word)
        statements = duckdb.extract_statements(text)
        assert statements[0].type.name == "SET" and statements[0].query.split("\n")[-1].strip() == "USE orion", name
        assert [s.type.name for s in statements[1:]] == ["SELECT"], name
        assert "orion." not in text.split("USE orion;", 1)[1].replace("'orion'", ""), f"{name}: bare table names only"


@pytest.mark.parametrize("name", SQL_FILES)
def test_file_runs_the_same_through_orion_sql_and_a_plain_connection(data_dir, result, name):
    via_cli = result(name)
    assert via_cli.height > 0, name
    try:
        plain = direct(data_dir, name)
    except duckdb.BinderException as exc:
        if name == "lineage" and "Ambiguous reference" in str(exc):
            pytest.fail("orion.lineage_edges is stored with 'FROM orion.<table>' in its body, which does not bind "
                        "when the file is opened directly (catalog 'orion'): store.refresh_lineage_view should name "
                        f"the tables bare ('FROM <table>'), which DuckDB binds in the view's own schema. {exc}")
        raise
    assert plain.columns == via_cli.columns
    assert_frame_equal(plain, via_cli, check_dtypes=False)


@pytest.mark.parametrize("name", STATISTICS)
def test_orion_run_materializes_each_statistic_as_the_files_rows(tiny_run, data_dir, result, name):
    assert re.search(rf"\] {name} \.\.\. ok \(\d+ rows", tiny_run["stdout"]), tiny_run["stdout"][-3000:]
    with duckdb.connect(str(data_dir / "orion_store.duckdb"), read_only=True) as con:
        stored = con.sql(f"SELECT * EXCLUDE (dagster_run_id) FROM orion.{name}").pl()
    assert stored.height > 0
    assert_frame_equal(stored, result(name), check_dtypes=False)


def test_orion_sql_csv_and_table_formats(data_dir):
    csv = orion_sql(data_dir, str(SQL_DIR / "leaderboard.sql"), fmt="csv")
    assert csv.returncode == 0, csv.stderr
    assert csv.stdout.splitlines()[0].startswith("student,variant,benchmark,grading_rule,primary,seeds,pass_at_1,")
    table = orion_sql(data_dir, str(SQL_DIR / "cot_stats.sql"), fmt="table")
    assert table.returncode == 0 and "tokens_p50" in table.stdout, table.stderr


def test_cot_stats(data_dir, result):
    frame = result("cot_stats")
    for prefix in ("tokens", "steps"):
        cols = [f"{prefix}_p10", f"{prefix}_p50", f"{prefix}_p90", f"{prefix}_max"]
        for row in frame.select(cols).drop_nulls().iter_rows():
            assert all(a <= b + TOL for a, b in zip(row, row[1:])), (prefix, row)
    teacher = frame.filter(pl.col("cot_table") == "teacher_cots")
    assert teacher["source"].to_list() == ["teacher"] and teacher["mode"].to_list() == teacher["student"].to_list() == [None]
    assert teacher["cots"][0] == query(data_dir, "SELECT count(*) FROM teacher_cots")[0][0]
    refined = frame.filter(pl.col("cot_table") == "refined_cots")
    expected = {(st, m, s): n for st, m, s, n in query(data_dir, "SELECT student, mode, source, count(*) FROM refined_cots "
                                                                   "GROUP BY ALL")}
    assert {(st, m, s): n for st, m, s, n in refined.select("student", "mode", "source", "cots").iter_rows()} == expected
    assert set(refined["source"]) <= {"refined", "teacher_fallback"}
    assert set(refined["mode"]) == {"orion", "no_error"}  # the replay teacher cannot run no_reflection
    # every CoT of the tiny run has its cot_quality row, so every group has step counts
    assert (frame["with_steps"] == frame["cots"]).all()
    assert frame["steps_p50"].null_count() == 0


def test_error_taxonomy(data_dir, result):
    frame = result("error_taxonomy")
    total = query(data_dir, "SELECT count(*) FROM student_errors JOIN train_problems USING (problem_id)")[0][0]
    assert frame["errors"].sum() == total > 0
    for student, group in frame.group_by("student"):
        assert abs(group["share_overall"].sum() - 1.0) < TOL, student
    for key, group in frame.group_by(["student", "subject", "level"]):
        assert abs(group["share_in_group"].sum() - 1.0) < TOL, key
        assert group["group_errors"].n_unique() == 1 and group["group_errors"][0] == group["errors"].sum()
        assert (group["group_attempts"] >= group["group_errors"]).all()
    assert set(frame["error_type"]) <= set(ERROR_TYPES)
    assert frame["rate_per_attempt"].is_between(0, 1).all()


def test_refinement_yield(data_dir, result):
    frame = result("refinement_yield")
    assert frame["yield"].is_between(0, 1).all()
    assert (frame["refined"] + frame["teacher_fallback"] + frame["dropped"] == frame["problems"]).all()
    overall = frame.filter(pl.col("scope") == "mode")
    assert overall["mode"].to_list() == ["orion", "no_error"]
    problems = query(data_dir, "SELECT count(DISTINCT problem_id) FROM teacher_cots")[0][0]
    assert (overall["problems"] == problems).all()
    detail = frame.filter(pl.col("scope") == "subject_level").group_by("mode").agg(pl.col("problems", "refined").sum())
    assert dict(detail.select("mode", "problems").iter_rows()) == dict(overall.select("mode", "problems").iter_rows())
    assert dict(detail.select("mode", "refined").iter_rows()) == dict(overall.select("mode", "refined").iter_rows())
    refined = {(st, m): n for st, m, n in query(data_dir, "SELECT student, mode, count(DISTINCT problem_id) FILTER "
                                                        "(WHERE source = 'refined') FROM refined_cots GROUP BY ALL")}
    assert {(st, m): n for st, m, n in overall.select("student", "mode", "refined").iter_rows()} == refined


def test_length_vs_accuracy(data_dir, result):
    frame = result("length_vs_accuracy")
    model = ["student", "variant", "seed"]
    per_model = {tuple(r[:3]): r[3] for r in query(data_dir, "SELECT student, variant, seed, count(*) "
                                                           "FROM benchmark_predictions GROUP BY ALL")}
    sums = frame.group_by(model).agg(pl.col("predictions").sum(), pl.col("share_of_model").sum())
    assert {tuple(r[:3]): r[3] for r in sums.select(*model, "predictions").iter_rows()} == per_model
    assert all(abs(s - 1.0) < TOL for s in sums["share_of_model"])
    assert frame["accuracy"].is_between(0, 1).all() and frame["truncation_rate"].is_between(0, 1).all()
    assert (frame["correct"] <= frame["predictions"]).all()
    known = frame.filter(pl.col("bucket_lo").is_not_null())
    assert all(hi == max(1, 2 * lo) for lo, hi in known.select("bucket_lo", "bucket_hi").iter_rows())
    correct = {tuple(r[:3]): r[3] for r in query(data_dir, "SELECT student, variant, seed, count(*) FILTER (WHERE correct) "
                                                         "FROM benchmark_predictions GROUP BY ALL")}
    assert {tuple(r[:3]): r[3] for r in frame.group_by(model).agg(pl.col("correct").sum()).iter_rows()} == correct


def test_leaderboard(data_dir, result):
    """Tidy: a row per student, variant, benchmark and grading rule, in the vocabulary's order; the same numbers
    as the leaderboard asset's wide table (a column per benchmark) for the primary rule."""
    frame = result("leaderboard")
    key = ["student", "variant", "benchmark", "grading_rule"]
    stored = query(data_dir, "SELECT student, variant, benchmark, grading_rule, count(DISTINCT seed), avg(pass_at_1) "
                             "FROM benchmark_scores GROUP BY ALL")
    assert frame.height == len(stored) > 0 and frame.select(key).n_unique() == frame.height
    expected = {tuple(r[:4]): r[4:] for r in stored}
    for row in frame.iter_rows(named=True):
        seeds, mean = expected[tuple(row[k] for k in key)]
        assert row["seeds"] == seeds and row["pass_at_1"] == pytest.approx(mean), row
    order = [v for (v,) in query(data_dir, "SELECT variant FROM vocabulary_variants ORDER BY position")]
    for student in frame["student"].unique(maintain_order=True):
        variants = frame.filter(pl.col("student") == student)["variant"].unique(maintain_order=True).to_list()
        assert variants == [v for v in order if v in variants] and variants[:2] == [BASE_VARIANT, REFERENCE_VARIANT]
    assert frame.filter(pl.col("variant") == REFERENCE_VARIANT)["delta"].to_list() == [0.0] * frame.filter(
        pl.col("variant") == REFERENCE_VARIANT).height
    with duckdb.connect(str(data_dir / "orion_store.duckdb"), read_only=True) as con:
        asset = con.sql("SELECT * FROM orion.leaderboard").pl()
    primary = frame.filter(pl.col("primary"))
    compared = 0
    for row in asset.iter_rows(named=True):
        mine = primary.filter((pl.col("student") == row["student"]) & (pl.col("variant") == row["variant"]))
        for cell in mine.iter_rows(named=True):
            b = cell["benchmark"]
            for column, wide in (("pass_at_1", b), ("pass_at_1_se", f"{b}_se"), ("delta", f"{b}_delta"),
                                 ("seeds", f"{b}_seeds")):
                assert cell[column] == pytest.approx(row[wide], abs=1e-9), (row["variant"], b, column)
            compared += 1
    assert compared == primary.height


def test_usage_cost(data_dir, result):
    frame = result("usage_cost")
    assert int(frame["calls"].sum()) == query(data_dir, "SELECT count(*) FROM llm_calls")[0][0]
    assert "unattributed" not in set(frame["stage"])  # orion run makes one asset per Dagster run
    predictions = dict(query(data_dir, "SELECT variant, count(DISTINCT llm_call_id) FROM benchmark_predictions GROUP BY 1"))
    evaluated = frame.filter(pl.col("stage") == "benchmark_predictions")
    assert dict(evaluated.select("detail", "calls").iter_rows()) == predictions
    modes = {m for (m,) in query(data_dir, "SELECT DISTINCT mode FROM refined_cots")}
    assert set(frame.filter(pl.col("stage") == "refined_cots")["detail"]) == modes
    # the report's table is the same query over the tables that exist
    from orion_assets.method.evaluation.report import usage_frame
    from orion_assets.store import Store

    with Store(data_dir / "orion_store.duckdb").connect(read_only=True) as con:
        report = usage_frame(con)
    key = ["stage", "detail", "role", "model"]
    assert report.sort(key, nulls_last=True).equals(direct(data_dir, "usage_cost").sort(key, nulls_last=True))


def test_lineage(data_dir, result, tmp_path):
    frame = result("lineage")
    assert frame["score_id"].n_unique() == 1
    start = frame.row(0, named=True)
    assert start["variant"] == "orion"
    first = query(data_dir, "SELECT score_id FROM benchmark_scores WHERE variant = 'orion' ORDER BY benchmark, variant LIMIT 1")
    assert start["score_id"] == first[0][0]
    ids = dict(frame.select("table_name", "ids").iter_rows())
    for table in ("benchmark_scores", "benchmark_predictions", "benchmark_problems", "student_checkpoint",
                  "sft_dataset", "cot_quality", "teacher_cots", "refined_cots", "train_problems",
                  "student_base_model", "llm_calls"):
        assert ids.get(table, 0) > 0, (table, ids)
    predictions, checkpoint = query(data_dir, f"SELECT len(prediction_ids), checkpoint_id FROM benchmark_scores "
                                              f"WHERE score_id = '{start['score_id']}'")[0]
    assert ids["benchmark_scores"] == 1 and ids["benchmark_predictions"] == predictions
    assert ids["student_checkpoint"] == 1
    sft = query(data_dir, f"SELECT len(sft_example_ids) FROM student_checkpoint WHERE checkpoint_id = '{checkpoint}'")[0][0]
    assert ids["sft_dataset"] == ids["cot_quality"] == sft
    wrong = query(data_dir, "SELECT count(DISTINCT a) FROM (SELECT unnest(error_attempt_ids) AS a FROM refined_cots "
                            "WHERE mode = 'orion')")[0][0]
    assert ids.get("student_attempts", 0) == wrong and ids.get("student_errors", 0) == wrong
    # another score, chosen in the params CTE, is walked instead
    text = (SQL_DIR / "lineage.sql").read_text()
    other = query(data_dir, "SELECT score_id FROM benchmark_scores WHERE variant = 'teacher_sft' LIMIT 1")[0][0]
    edited = text.replace("NULL::VARCHAR  AS score_id", f"'{other}'::VARCHAR AS score_id", 1)
    assert edited != text
    (tmp_path / "lineage_other.sql").write_text(edited)
    run = orion_sql(data_dir, str(tmp_path / "lineage_other.sql"))
    assert run.returncode == 0, run.stderr
    walked = [json.loads(line) for line in run.stdout.splitlines()]
    assert {r["score_id"] for r in walked} == {other} and {r["variant"] for r in walked} == {"teacher_sft"}
    tables = {r["table_name"] for r in walked}
    assert {"sft_dataset", "teacher_cots"} <= tables and "refined_cots" not in tables


@pytest.mark.parametrize("statement", [
    "DELETE FROM orion.train_problems",
    "DROP TABLE orion.train_problems",
    "INSERT INTO orion.train_problems SELECT * FROM orion.train_problems",
    "COPY orion.train_problems TO 'leak.csv'",
    "ATTACH 'other.duckdb' AS other",
    "USE orion; DELETE FROM train_problems",
    "SET threads = 1",
    "SET profiling_output = 'leak.json'",
])
def test_orion_sql_refuses_writes(data_dir, statement, tmp_path):
    run = orion_sql(data_dir, statement)
    assert run.returncode == 2, (statement, run.stdout, run.stderr)
    assert "read-only" in run.stderr
    script = tmp_path / "write.sql"
    script.write_text(f"-- a file that writes\nUSE orion;\n{statement};\n")
    run = orion_sql(data_dir, str(script))
    assert run.returncode == 2 and "read-only" in run.stderr, (statement, run.stderr)
    assert query(data_dir, "SELECT count(*) FROM train_problems")[0][0] > 0


def test_orion_sql_lets_the_schema_be_chosen(data_dir):
    for text in ("USE orion; SELECT count(*) AS n FROM train_problems",
                 "SET search_path = 'orion'; SELECT count(*) AS n FROM train_problems",
                 "SELECT count(*) AS n FROM orion.train_problems"):
        run = orion_sql(data_dir, text)
        assert run.returncode == 0, (text, run.stderr)
        assert json.loads(run.stdout)["n"] > 0


ASSET_TABLES = ["train_problems", "student_base_model", "teacher_cots", "student_attempts", "student_errors",
                "refined_cots", "cot_quality", "sft_dataset", "student_checkpoint", "benchmark_problems",
                "benchmark_predictions", "benchmark_scores", "leaderboard", *STATISTICS]
# Their row counts follow from the profile alone (the tiny student's sampling is not seeded, so which
# attempts are wrong and which CoTs the gate drops can differ between two runs, and so do the statistics' groups).
FIXED_SIZE_TABLES = [t for t in ASSET_TABLES if t not in ("student_errors", "sft_dataset", *STATISTICS)]


def test_the_whole_graph_on_a_lake_makes_the_same_tables_and_sql_answers(tiny_run, result, postgres_service,
                                                                           s3_service, tmp_path):
    """The same profile with ``[store] backend = "ducklake"`` (a Postgres catalog, Parquet on S3):
    `orion run` makes every asset's table, with as many rows as in the DuckDB file where the profile
    fixes the number, and every sql/ file answers through `orion sql` on the lake with the columns
    it has on the file."""
    profile = tmp_path / "lake.toml"
    profile.write_text(f'extends = "{tiny_run["profile"]}"\n' + lake_store_section(postgres_service, s3_service))
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**tiny_run["env"], "ORION_PROFILE": str(profile), "ORION_DATA_DIR": str(tmp_path / "data"),
           "DAGSTER_HOME": str(home), **s3_service.key_env()}

    def orion(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "orion_assets.cli", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=1500)

    run = orion("run")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert not (tmp_path / "data" / "orion_store.duckdb").exists()  # every row went to the lake
    counts = " UNION ALL ".join(f"SELECT '{t}' AS t, count(*) AS n FROM orion.{t}" for t in ASSET_TABLES)
    on_lake = orion("sql", "--format", "json", counts)
    assert on_lake.returncode == 0, on_lake.stderr  # every asset's table is there
    lake_counts = {row["t"]: row["n"] for row in map(json.loads, on_lake.stdout.splitlines())}
    file_counts = dict(query(tiny_run["data_dir"], counts))
    assert all(lake_counts[t] > 0 for t in ASSET_TABLES), lake_counts
    assert {t: lake_counts[t] for t in FIXED_SIZE_TABLES} == {t: file_counts[t] for t in FIXED_SIZE_TABLES}
    for name in SQL_FILES:
        answer = orion("sql", "--format", "json", str(SQL_DIR / f"{name}.sql"))
        assert answer.returncode == 0, f"sql/{name}.sql on the lake:\n{answer.stderr[-3000:]}"
        rows = [json.loads(line) for line in answer.stdout.splitlines() if line.strip()]
        assert all(list(row) == result(name).columns for row in rows), name
        if name in ("cot_stats", "leaderboard", "lineage", "usage_cost"):  # never empty after a whole run
            assert rows, name
        if name in STATISTICS:  # the asset ran the same file through the lake's connection
            stored = orion("sql", "--format", "json", f"SELECT * EXCLUDE (dagster_run_id) FROM orion.{name}")
            assert stored.returncode == 0, stored.stderr
            assert [json.loads(line) for line in stored.stdout.splitlines()] == rows, name
