"""The DuckLake store backend: the store's API on a local catalog file and on Postgres + S3 (real
servers from services.py), `orion sql` / `orion report` / a sql/ file over a lake, writers in
several processes at once (LLM cache appends, partition replacements), bounded conflict retries,
and a writer SIGKILLed in the middle of a partition's write (on DuckLake and on the DuckDB file)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest

import orion_assets.store as store_module
import orion_assets.store.base as store_base
from orion_assets.store import Store
from orion_assets.store.ducklake import (
    GUARD_SCHEMA,
    DuckLakeStore,
    S3Settings,
    StoreConflict,
    StoreError,
    close_all,
)
from orion_assets.store.vocabulary import VIEW_NAMES

REPO = Path(__file__).resolve().parents[2]
KEY_ENV, SECRET_ENV = "ORION_TEST_S3_KEY_ID", "ORION_TEST_S3_SECRET"
CHILD = "from orion_assets_tests.unit.test_ducklake_store import _child; _child()"
LINKS = [("events", "event_id", "parent_id", "parents")]


# -- stores, in this process and in children ---------------------------------------------------------


@pytest.fixture(autouse=True)
def _close_lakes():
    """Each test's lakes are closed after it (a process keeps a lake attached until then)."""
    yield
    close_all()



def open_store(spec: dict):
    """A store from a JSON-able spec (what a child process gets on its command line)."""
    if spec["backend"] == "duckdb":
        return Store(spec["path"])
    s3 = S3Settings(**spec["s3"]) if spec.get("s3") else None
    return DuckLakeStore(spec["catalog"], spec["data_path"], s3=s3, retries=spec.get("retries", 10))


@pytest.fixture
def local_spec(tmp_path: Path) -> dict:
    return {"backend": "ducklake", "catalog": str(tmp_path / "lake.ducklake"), "data_path": str(tmp_path / "lake_files")}


@pytest.fixture
def sqlite_spec(tmp_path: Path) -> dict:
    return {"backend": "ducklake", "catalog": f"sqlite:{tmp_path / 'lake.sqlite'}", "data_path": str(tmp_path / "lake_files")}


@pytest.fixture
def pg_spec(postgres_service, tmp_path: Path) -> dict:
    """A lake with its catalog in a fresh Postgres database and its files in a local folder."""
    return {"backend": "ducklake", "catalog": "postgres:" + postgres_service.dsn(postgres_service.new_database()),
            "data_path": str(tmp_path / "lake_files")}


@pytest.fixture
def pg_s3_spec(postgres_service, s3_service, monkeypatch) -> dict:
    """A lake with its catalog in a fresh Postgres database and its files under a fresh S3 prefix."""
    monkeypatch.setenv(KEY_ENV, s3_service.key_id)
    monkeypatch.setenv(SECRET_ENV, s3_service.secret)
    return {
        "backend": "ducklake",
        "catalog": "postgres:" + postgres_service.dsn(postgres_service.new_database()),
        "data_path": s3_service.new_prefix(),
        "s3": {"endpoint": s3_service.endpoint, "region": s3_service.region, "url_style": "path", "use_ssl": False,
               "key_id_env": KEY_ENV, "secret_env": SECRET_ENV},
    }


def spawn(spec: dict, action: str, **args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps({"store": spec, "action": action, **args})],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_ready(proc: subprocess.Popen) -> list[str]:
    """Block until the child printed READY (it reached the point the test waits for); the lines it
    printed before."""
    lines = []
    line = proc.stdout.readline()
    while line and line.strip() != "READY":
        lines.append(line.strip())
        line = proc.stdout.readline()
    if line.strip() != "READY":
        raise AssertionError(f"child exited ({proc.wait()}) before READY:\n{proc.stderr.read()[-3000:]}")
    return lines


def finish(procs: list[subprocess.Popen], timeout_s: float = 180) -> list[str]:
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout_s)
        assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{err[-3000:]}"
        outputs.append(out)
    return outputs


def cache_row(call_id: str, text: str, prompt: str) -> dict:
    return {"call_id": call_id, "role": "student", "backend": "openai", "base_url": "http://x/v1", "model": "m",
            "messages": [{"role": "user", "content": prompt}], "params": "{}", "sample_index": 0, "text": text,
            "reasoning": None, "finish_reason": "stop", "prompt_tokens": 3, "completion_tokens": 5, "latency_s": 0.1,
            "retries": 0, "error": None, "status": "ok", "dagster_run_id": None, "created_at": None,
            "model_revision": None, "reasoning_tokens": None}


def events(part: str, version: str, n: int) -> pl.DataFrame:
    return pl.DataFrame({
        "event_id": [f"{part}-{version}-{i}" for i in range(n)],
        "part": [part] * n,
        "version": [version] * n,
        "parent_id": [f"p{i % 3}" for i in range(n)],
        "payload": ["x" * 50] * n,
    })


def write_partition(store, part: str, version: str, n: int, parquet: Path | None = None) -> str:
    frame = events(part, version, n)
    kwargs = {"frame": frame}
    if parquet is not None:
        frame.write_parquet(parquet)
        kwargs = {"parquet": [parquet]}
    return store.replace_rows("events", **kwargs, replace_where={"part": part},
                              materialization={"asset_key": "events", "partition_key": part}, lineage=LINKS)


def _child() -> None:
    """What a child process does (see the tests that spawn it)."""
    args = json.loads(sys.argv[1])
    store = open_store(args["store"])
    action = args["action"]
    if action == "cache":
        from orion_assets.llm import cache

        store.exists()  # attach the lake before the start line, so that the writers overlap
        print("READY", flush=True)
        while not Path(args["go"]).exists():
            time.sleep(0.01)
        ids = args["ids"]
        for start in range(0, len(ids), args["batch"]):
            rows = [cache_row(f"call-{i}", f"child {args['name']}", f"prompt {i % 7}") for i in ids[start:start + args["batch"]]]
            cache.write_rows(store, rows)
            print(json.dumps({"attempts": store.last_attempts}), flush=True)
    elif action == "partition":
        store.exists()
        print("READY", flush=True)
        while not Path(args["go"]).exists():
            time.sleep(0.01)
        write_partition(store, args["part"], args["version"], args["n"])
        print(json.dumps({"attempts": getattr(store, "last_attempts", 1)}), flush=True)
    elif action == "hang":
        # Stop inside the write's transaction, after its DELETE and INSERT, before its COMMIT: the
        # lineage view's refresh is the transaction's last step; the test SIGKILLs this process here.
        original = store_base.refresh_lineage_view

        def refresh_then_hang(con, links=None):
            original(con, links)
            rows = con.execute("SELECT count(*) FROM orion.events WHERE part = ?", [args["part"]]).fetchone()[0]
            print(f"in transaction: {rows} rows of partition {args['part']}", flush=True)
            print("READY", flush=True)
            time.sleep(600)

        store_base.refresh_lineage_view = refresh_then_hang
        write_partition(store, args["part"], args["version"], args["n"], parquet=Path(args["parquet"]))
    else:
        raise SystemExit(f"unknown action {action}")


# -- the store's API -----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["local", "sqlite", "postgres_s3"])
def test_store_api_on_a_lake(where, request, s3_service):
    spec = request.getfixturevalue({"local": "local_spec", "sqlite": "sqlite_spec", "postgres_s3": "pg_s3_spec"}[where])
    store = open_store(spec)
    assert not store.exists() and not store.table_exists("events")
    assert store.latest_materializations("events") == [store_module.Upstream("events", None, None, None)]

    first_a = write_partition(store, "a", "v1", 40)
    write_partition(store, "b", "v1", 30)
    assert store.exists() and store.table_exists("events")
    write_partition(store, "a", "v2", 25)  # replaces partition a only, never duplicates it
    assert store.count("events") == 55
    assert store.count("events", {"part": "a"}) == 25
    assert set(store.distinct("events", "version", {"part": "a"})) == {"v2"}
    assert store.distinct("events", "part") == ["a", "b"]
    assert store.read("events", {"part": "b"})["version"].unique().to_list() == ["v1"]
    picked = store.select("events", columns=["event_id", "part"], key=("event_id", ["b-v1-3", "a-v2-0", "nope"]))
    assert picked.to_dicts() == [{"event_id": "a-v2-0", "part": "a"}, {"event_id": "b-v1-3", "part": "b"}]
    assert "payload" not in store.select("events", exclude=["payload"], where={"part": "b"}).columns

    latest = {u.partition_key: u for u in store.latest_materializations("events")}
    assert set(latest) == {"a", "b"} and latest["a"].materialization_id != first_a
    assert [u.partition_key for u in store.latest_materializations("events", "b")] == ["b"]

    # the whole table replaced; the lineage view over the recorded links
    store.replace_rows("parents", pl.DataFrame({"parent_id": ["p0", "p1", "p2"]}), replace_where=None,
                       materialization={"asset_key": "parents"})
    with store.connect(read_only=True) as con:
        edges = con.execute("SELECT count(*), count(DISTINCT parent_id) FROM orion.lineage_edges "
                            "WHERE child_table = 'events' AND parent_table = 'parents'").fetchone()
        assert edges == (55, 3)
        assert con.execute("SELECT count(*) FROM orion.table_parents").fetchone()[0] == 1
        runs = con.execute("SELECT count(*) FROM orion.materializations").fetchone()[0]
        assert runs == 4
        # the guards live outside schema orion: `orion sql` users see only the pipeline's tables (and the
        # vocabulary views the sql/ files read)
        names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                           "WHERE table_catalog = current_database() AND table_schema = 'orion'").fetchall()}
        assert names == {"events", "parents", "materializations", "table_parents", "lineage_edges", *VIEW_NAMES}
        # one guard per partition written (writers of different partitions do not wait for each
        # other), per whole table, and the lineage links'
        guards = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = ?",
                                            [GUARD_SCHEMA]).fetchall()}
        assert guards == {store_module.write_guard("events", {"part": "a"}),
                          store_module.write_guard("events", {"part": "b"}), "parents", "table_parents"}
    store.replace_rows("parents", pl.DataFrame({"parent_id": ["p0"]}), replace_where=None,
                       materialization={"asset_key": "parents"})
    assert store.read("parents")["parent_id"].to_list() == ["p0"]

    store.append("gate_log", pl.DataFrame({"n": [1, 2]}))
    store.append("gate_log", pl.DataFrame({"n": [3]}))
    assert sorted(store.read("gate_log")["n"].to_list()) == [1, 2, 3]
    with pytest.raises(LookupError, match="materialize asset 'missing' first"):
        store.count("missing")

    # a partition that brings a column the table lacks (the asset gained one): added, older rows read null there;
    # one that lacks a column of the table is refused, naming it
    curve = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    gained = events("c", "v1", 2).with_columns(pl.lit(pl.Series([curve, curve])).alias("curve"))
    store.replace_rows("events", gained, replace_where={"part": "c"}, materialization={"asset_key": "events"})
    assert store.read("events", {"part": "c"})["curve"].to_list() == [curve, curve]
    assert store.read("events", {"part": "b"})["curve"].null_count() == 30
    with pytest.raises(ValueError, match=r"orion.events has column\(s\) \['curve'\] that the new rows lack"):
        write_partition(store, "b", "v3", 1)
    assert store.count("events", {"part": "b"}) == 30

    if where == "postgres_s3":  # the rows are Parquet objects under the lake's S3 prefix
        assert any(key.endswith(".parquet") for key in s3_service.keys(spec["data_path"]))


def test_llm_cache_on_a_lake_upserts_by_call_id(local_spec):
    from orion_assets.llm import cache

    store = open_store(local_spec)
    cache.write_rows(store, [cache_row(f"c{i}", "first", "same prompt") for i in range(4)])
    cache.write_rows(store, [cache_row(f"c{i}", "second", "same prompt") for i in range(2, 6)])
    with store.connect(read_only=True) as con:
        rows = dict(con.execute("SELECT call_id, text FROM orion.llm_calls").fetchall())
        assert con.execute("SELECT count(*) FROM orion.llm_calls").fetchone()[0] == 6
        assert con.execute("SELECT count(*) FROM orion.llm_prompts").fetchone()[0] == 1
    assert rows == {"c0": "first", "c1": "first", "c2": "second", "c3": "second", "c4": "second", "c5": "second"}
    found = cache.lookup(store, ["c1", "c5", "c9"])
    assert set(found) == {"c1", "c5"} and found["c5"].text == "second" and found["c5"].cached


# -- profile, secrets, extensions ----------------------------------------------------------------------


def test_store_section_of_a_profile(write_profile, tmp_path: Path):
    from orion_assets.io.resource import OrionResource
    from orion_assets.profiles import ProfileError, load_profile

    plain = load_profile(str(write_profile("", name="plain.toml")))
    lake_file = write_profile("""
        [store]
        backend = "ducklake"
        catalog = "lake.ducklake"
        data_path = "lake_files"
    """, name="lake.toml")
    lake = load_profile(str(lake_file))
    assert lake.hash == plain.hash  # where the tables live is not part of what produced them
    resource = OrionResource(profile=str(lake_file), data_dir=str(tmp_path / "data"))
    store = resource.store
    assert isinstance(store, DuckLakeStore) and store.kind == "duckdb"
    assert store.catalog == str(tmp_path / "data" / "lake.ducklake")
    assert store.data_path == str(tmp_path / "data" / "lake_files") + "/"
    assert isinstance(OrionResource(profile=str(write_profile("", name="p2.toml")), data_dir=str(tmp_path)).store, Store)

    refused = {
        '[store]\nbackend = "ducklake"\n': "needs a catalog",
        '[store]\nbackend = "ducklake"\ncatalog = "x.ducklake"\ncatalogue = "y"\n': "unknown key 'store.catalogue'",
        '[store]\ncatalog = "x.ducklake"\n': 'only apply to backend = "ducklake"',
        '[store]\nbackend = "ducklake"\ncatalog = "postgres:dbname=l user=u password=hunter2"\n': "catalog_password_env",
        '[store]\nbackend = "ducklake"\ncatalog = "x.ducklake"\ndata_path = "files"\ns3_region = "eu"\n': "s3:// data_path",
        '[store]\nbackend = "lake"\n': "unknown value 'lake' for 'store.backend'",
        '[store]\nbackend = "ducklake"\ncatalog = "x.ducklake"\ndata_path = "s3://b/p/"\ns3_key_id_env = "K"\n': "go together",
    }
    for n, (body, message) in enumerate(refused.items()):
        with pytest.raises(ProfileError, match=message) as caught:
            load_profile(str(write_profile(body, name=f"bad{n}.toml")))
        assert "hunter2" not in str(caught.value)


def test_secrets_come_from_the_environment_and_stay_out(pg_s3_spec, postgres_service, s3_service, monkeypatch):
    store = open_store(pg_s3_spec)
    write_partition(store, "a", "v1", 30)
    secret = s3_service.secret
    for text in (repr(store), store.location, str(store.__dict__)):
        assert secret not in text and s3_service.key_id not in text
    with store.connect(read_only=True) as con:
        shown = str(con.execute("SELECT * FROM duckdb_secrets()").fetchall())
        settings = str(con.execute("SELECT * FROM duckdb_settings()").fetchall())
    assert "redacted" in shown and secret not in shown and secret not in settings
    database = pg_s3_spec["catalog"].split("dbname=")[1].split()[0]
    dump = subprocess.run([str(postgres_service.bin / "pg_dump"), "-h", "127.0.0.1", "-p", str(postgres_service.port),
                           "-U", "postgres", database], capture_output=True, text=True, check=True).stdout
    assert "ducklake_snapshot" in dump and secret not in dump and s3_service.key_id not in dump

    # a fresh process without the variable cannot reach the bucket, and says which variable to set
    monkeypatch.delenv(SECRET_ENV)
    fresh = subprocess.run([sys.executable, "-c", "import json, sys; from orion_assets_tests.unit.test_ducklake_store "
                            "import open_store; open_store(json.loads(sys.argv[1])).count('events')",
                            json.dumps(pg_s3_spec)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert fresh.returncode != 0 and f"environment variable {SECRET_ENV} is not set" in fresh.stderr

    # the catalog's password: from the variable the profile names, as a temporary secret
    password = "pa'ss w0rd"
    _, dsn = postgres_service.password_database(password)
    dsn = "postgres:" + dsn
    without = DuckLakeStore(dsn, pg_s3_spec["data_path"] + "pw/")
    with pytest.raises(duckdb.Error, match="password"):
        without.exists()
    monkeypatch.setenv("ORION_TEST_PG_PASSWORD", password)
    monkeypatch.setenv(SECRET_ENV, s3_service.secret)
    lake = DuckLakeStore(dsn, pg_s3_spec["data_path"] + "pw/", s3=open_store(pg_s3_spec).s3,
                         catalog_password_env="ORION_TEST_PG_PASSWORD")
    write_partition(lake, "a", "v1", 3)
    assert lake.count("events") == 3 and password not in repr(lake)


def test_extension_wheels_must_match_duckdb(monkeypatch, tmp_path: Path):
    import importlib.metadata

    from orion_assets.store.ducklake import extension_path

    assert extension_path("ducklake").name == "ducklake.duckdb_extension"
    assert f"v{duckdb.__version__}" in str(extension_path("postgres_scanner"))
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda dist: "1.4.0" if dist == "duckdb-extension-ducklake" else real(dist))
    with pytest.raises(StoreError, match=rf"duckdb-extension-ducklake 1.4.0 does not match duckdb {duckdb.__version__}"):
        DuckLakeStore(str(tmp_path / "x.ducklake"), tmp_path / "files").append("t", pl.DataFrame({"n": [1]}))


# -- orion sql, a sql/ file, orion report ----------------------------------------------------------------


@pytest.mark.slow  # the CLI in subprocesses on a lake: about 20 s
def test_orion_sql_report_and_a_sql_file_on_a_lake(pg_s3_spec, write_profile, tmp_path: Path):
    from orion_assets_tests.unit.test_report import materialization, scores_frame

    store = open_store(pg_s3_spec)
    scores = scores_frame().with_columns(
        pl.format("s-{}-{}", "benchmark", "variant").alias("score_id"),
        pl.concat_list(pl.format("{}-{}-pred0", "benchmark", "variant"),
                       pl.format("{}-{}-pred1", "benchmark", "variant")).alias("prediction_ids"),
    )
    store.replace_rows("benchmark_scores", scores, replace_where=None, materialization=materialization("benchmark_scores"),
                       lineage=[("benchmark_scores", "score_id", "prediction_ids", "benchmark_predictions")])
    predictions = pl.DataFrame({"prediction_id": [f"{b}-{v}-pred{i}" for b, v, *_ in scores.iter_rows() for i in (0, 1)]})
    predictions = predictions.with_columns(pl.lit("prob-1").alias("problem_id"),
                                           pl.concat_str(pl.lit("call-"), "prediction_id").alias("llm_call_id"))
    store.replace_rows("benchmark_predictions", predictions, replace_where=None,
                       materialization=materialization("benchmark_predictions"),
                       lineage=[("benchmark_predictions", "prediction_id", "problem_id", "benchmark_problems"),
                                ("benchmark_predictions", "prediction_id", "llm_call_id", "llm_calls")])
    store.replace_rows("student_errors", pl.DataFrame({"error_id": ["e1"], "attempt_id": ["a1"]}), replace_where=None,
                       materialization=materialization("student_errors"))

    s3 = pg_s3_spec["s3"]
    profile = write_profile(f"""
        [store]
        backend = "ducklake"
        catalog = "{pg_s3_spec['catalog']}"
        data_path = "{pg_s3_spec['data_path']}"
        s3_endpoint = "{s3['endpoint']}"
        s3_region = "{s3['region']}"
        s3_url_style = "path"
        s3_use_ssl = false
        s3_key_id_env = "{KEY_ENV}"
        s3_secret_env = "{SECRET_ENV}"
    """, name="lake.toml")
    env = {**os.environ, "ORION_PROFILE": str(profile), "ORION_DATA_DIR": str(tmp_path / "data")}

    def orion(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "orion_assets.cli", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)

    query = orion("sql", "SELECT variant, count(*) AS n FROM orion.benchmark_scores GROUP BY 1 ORDER BY 1",
                  "--format", "csv")
    assert query.returncode == 0, query.stderr
    assert query.stdout.splitlines() == ["variant,n", "base,2", "orion,2", "teacher_sft,3"]
    assert orion("sql", "DELETE FROM orion.benchmark_scores").returncode == 2  # still read-only

    lineage = orion("sql", str(REPO / "sql" / "lineage.sql"), "--format", "json")
    assert lineage.returncode == 0, lineage.stderr
    walked = {row["table_name"]: row["ids"] for row in map(json.loads, lineage.stdout.splitlines())}
    assert walked == {"benchmark_scores": 1, "benchmark_predictions": 2, "benchmark_problems": 1, "llm_calls": 2}
    with store.connect(read_only=True) as con:  # the file as it is, in the store's own connection
        direct = con.sql((REPO / "sql" / "lineage.sql").read_text()).pl()
    assert dict(direct.select("table_name", "ids").iter_rows()) == walked

    report = orion("report", "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "report" / "leaderboard.md").read_text()
    assert pg_s3_spec["catalog"] in page and "teacher_sft" in page


# -- several writers at once ---------------------------------------------------------------------------


@pytest.mark.slow  # several writer processes at once: about 19 s
def test_concurrent_cache_appends_lose_nothing_and_duplicate_nothing(pg_spec, tmp_path: Path):
    go = tmp_path / "go"
    children = 4
    # child c writes call ids 15c .. 15c+29 in batches of 10: each id but the first 15 and last 15
    # is written by two children, at about the same time, into a lake that none has created yet
    plans = {c: list(range(15 * c, 15 * c + 30)) for c in range(children)}
    procs = [spawn(pg_spec, "cache", name=c, ids=ids, batch=10, go=str(go)) for c, ids in plans.items()]
    for proc in procs:
        wait_ready(proc)
    go.touch()
    finish(procs)

    store = open_store(pg_spec)
    expected = {f"call-{i}" for ids in plans.values() for i in ids}
    with store.connect(read_only=True) as con:
        total, distinct = con.execute("SELECT count(*), count(DISTINCT call_id) FROM orion.llm_calls").fetchone()
        prompts = con.execute("SELECT count(*), count(DISTINCT prompt_hash) FROM orion.llm_prompts").fetchone()
        ids = {r[0] for r in con.execute("SELECT call_id FROM orion.llm_calls").fetchall()}
        texts = dict(con.execute("SELECT call_id, text FROM orion.llm_calls").fetchall())
        orphans = con.execute("SELECT count(*) FROM orion.llm_calls c ANTI JOIN orion.llm_prompts p "
                              "USING (prompt_hash)").fetchone()[0]
    assert (total, distinct) == (len(expected), len(expected)), "rows lost or duplicated"
    assert ids == expected and prompts == (7, 7) and orphans == 0
    for i in range(len(expected)):  # each row was written whole by one of the children that wrote it
        assert texts[f"call-{i}"] in {f"child {c}" for c, planned in plans.items() if i in planned}


@pytest.mark.slow  # several writer processes at once: about 15 s
def test_concurrent_partition_writers(pg_spec, tmp_path: Path):
    store = open_store(pg_spec)
    for part in ("p0", "p1", "other1", "other2"):
        write_partition(store, part, "old", 20)
    before = store.select("events", where={"part": "other1"}).sort("event_id")
    go = tmp_path / "go"
    # p0, p1: replaced; p2: new, and written by two writers at once (one of the two must win whole)
    jobs = [("p0", "new", 30), ("p1", "new", 15), ("p2", "w2", 12), ("p2", "w3", 18)]
    procs = [spawn(pg_spec, "partition", part=p, version=v, n=n, go=str(go)) for p, v, n in jobs]
    for proc in procs:
        wait_ready(proc)
    go.touch()
    finish(procs)

    counts = dict(store.select("events", columns=["part"]).group_by("part").len().iter_rows())
    assert counts["p0"] == 30 and counts["p1"] == 15 and counts["p2"] in (12, 18)
    assert store.distinct("events", "version", {"part": "p0"}) == ["new"]
    assert len(store.distinct("events", "version", {"part": "p2"})) == 1
    assert counts["other1"] == counts["other2"] == 20
    assert store.select("events", where={"part": "other1"}).sort("event_id").equals(before)
    ids = store.select("events", columns=["event_id"])["event_id"]
    assert ids.n_unique() == ids.len()
    logged = dict(store.select("materializations", columns=["partition_key"]).group_by("partition_key").len().iter_rows())
    assert logged == {"p0": 2, "p1": 2, "p2": 2, "other1": 1, "other2": 1}


def test_a_conflict_is_retried_and_one_that_never_ends_fails_naming_table_and_partition(pg_spec, monkeypatch):
    store = open_store({**pg_spec, "retries": 2})
    store.retry_wait_s = 0.01
    write_partition(store, "a", "v1", 5)
    rival = open_store(pg_spec)  # another connection (the same as another process, for DuckLake)
    original = store_base.refresh_lineage_view
    rival_commits = {"left": 0}

    def refresh_while_a_rival_commits(con, links=None):
        original(con, links)
        if rival_commits["left"]:
            rival_commits["left"] -= 1
            rival.transaction(lambda c: None, guard=store_module.write_guard("events", {"part": "a"}),
                              what="a rival's write of partition a of orion.events")

    monkeypatch.setattr(store_base, "refresh_lineage_view", refresh_while_a_rival_commits)
    rival_commits["left"] = 1  # the first attempt conflicts, the second commits
    write_partition(store, "a", "v2", 7)
    assert store.last_attempts == 2
    assert store.count("events") == 7 and store.distinct("events", "version") == ["v2"]

    # a writer of another table (no new lineage links, so the same lineage_edges view) does not
    # conflict: the view is only replaced when its definition changes
    other_table = {"left": 1}

    def refresh_while_another_table_is_written(con, links=None):
        original(con, links)
        if other_table["left"]:
            other_table["left"] -= 1
            rival.replace_rows("other", pl.DataFrame({"n": [1]}), replace_where=None,
                               materialization={"asset_key": "other"})

    monkeypatch.setattr(store_base, "refresh_lineage_view", refresh_while_another_table_is_written)
    write_partition(store, "b", "v1", 3)
    assert other_table["left"] == 0 and store.last_attempts == 1
    assert store.count("other") == 1 and store.count("events", {"part": "b"}) == 3
    # nor does a writer of another new partition of the same table (each partition has its own
    # guard): a backfill's runs commit side by side. (Replacing partitions that exist still conflicts:
    # DuckLake makes a delete and an insert into one table conflict, whatever rows they touch.)
    other_partition = {"left": 1}

    def refresh_while_another_partition_is_written(con, links=None):
        original(con, links)
        if other_partition["left"]:
            other_partition["left"] -= 1
            write_partition(rival, "d", "v1", 5)

    monkeypatch.setattr(store_base, "refresh_lineage_view", refresh_while_another_partition_is_written)
    write_partition(store, "c", "v1", 6)
    assert other_partition["left"] == 0 and store.last_attempts == 1
    assert store.count("events", {"part": "c"}) == 6 and store.count("events", {"part": "d"}) == 5
    monkeypatch.setattr(store_base, "refresh_lineage_view", refresh_while_a_rival_commits)

    rival_commits["left"] = 10  # every attempt conflicts
    with pytest.raises(StoreConflict, match=r"orion\.events partition \{'part': 'a'\}.*3 times") as caught:
        write_partition(store, "a", "v3", 9)
    assert "commit_retries" in str(caught.value)
    assert store.count("events", {"part": "a"}) == 7  # as it was
    assert store.distinct("events", "version", {"part": "a"}) == ["v2"]
    assert store.count("materializations", {"partition_key": "a"}) == 2  # no log of the failed write


# -- a writer killed in the middle of a partition's write ----------------------------------------------


@pytest.mark.parametrize("backend", ["ducklake", "duckdb"])
def test_a_writer_killed_mid_write_leaves_no_half_partition(backend, request, tmp_path: Path):
    spec = request.getfixturevalue("pg_s3_spec") if backend == "ducklake" else {
        "backend": "duckdb", "path": str(tmp_path / "orion_store.duckdb")}
    store = open_store(spec)
    write_partition(store, "a", "v1", 50)
    before = store.read("events").sort("event_id")

    for part, version in (("a", "v2"), ("new", "v1")):  # a partition replaced, and a first write
        proc = spawn(spec, "hang", part=part, version=version, n=20000, parquet=str(tmp_path / f"{part}.parquet"))
        said = wait_ready(proc)  # its DELETE and INSERT ran; its COMMIT did not
        assert said == [f"in transaction: 20000 rows of partition {part}"]
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL
        # the partition is as it was (complete) or absent, never half written
        after = open_store(spec)
        assert after.read("events").sort("event_id").equals(before)
        assert after.count("materializations", {"asset_key": "events"}) == 1

    # re-running the writes completes them
    write_partition(store, "a", "v2", 20000, parquet=tmp_path / "a.parquet")
    write_partition(store, "new", "v1", 20000, parquet=tmp_path / "new.parquet")
    assert store.count("events", {"part": "a"}) == 20000 and store.distinct("events", "version", {"part": "a"}) == ["v2"]
    assert store.count("events", {"part": "new"}) == 20000
    assert store.count("events") == 40000


def test_orion_check_reports_a_lake_it_cannot_open_instead_of_failing(postgres_service, s3_service, write_profile,
                                                                       tmp_path: Path, monkeypatch):
    from orion_assets.cli.check import run_preflight
    from orion_assets.profiles import load_profile
    from orion_devtools.services import free_port

    def check(store_section: str):
        profile = load_profile(str(write_profile(store_section, name=f"p{free_port()}.toml")))
        report = run_preflight(profile, tmp_path / "data", selection=["train_problems"])
        return [s for s in report.sections if s.title.startswith("store:")], report.problems

    # nobody listens at the catalog's port: a problem line, and the rest of the check still runs
    (section,), problems = check(f"""
        [store]
        backend = "ducklake"
        catalog = "postgres:dbname=lake host=127.0.0.1 port={free_port()} user=postgres"
        data_path = "lake_files"
    """)
    assert [f.level for f in section.findings] == ["problem"]
    assert problems[0].startswith("store: cannot open it: ") and "127.0.0.1" in problems[0], problems
    # a secret variable the profile names but the environment lacks: named, and nothing else said
    monkeypatch.delenv("ORION_TEST_MISSING_KEY", raising=False)
    monkeypatch.setenv("ORION_TEST_SECRET", s3_service.secret)
    (section,), problems = check(f"""
        [store]
        backend = "ducklake"
        catalog = "postgres:{postgres_service.dsn(postgres_service.new_database())}"
        data_path = "{s3_service.new_prefix()}"
        s3_endpoint = "{s3_service.endpoint}"
        s3_url_style = "path"
        s3_use_ssl = false
        s3_key_id_env = "ORION_TEST_MISSING_KEY"
        s3_secret_env = "ORION_TEST_SECRET"
    """)
    assert "ORION_TEST_MISSING_KEY" in problems[0] and s3_service.secret not in str(problems), problems
    # a lake that opens: ok, not yet written
    (section,), problems = check(f"""
        [store]
        backend = "ducklake"
        catalog = "postgres:{postgres_service.dsn(postgres_service.new_database())}"
        data_path = "lake_files"
    """)
    assert [(f.level, f.text) for f in section.findings] == [
        ("ok", "nothing written yet: the first materialization creates it")] and not problems


def test_a_snapshot_id_taken_after_ducklakes_own_retries_counts_as_a_conflict():
    """With 8 writers of new partitions committing at once on a Postgres catalog (the writer
    benchmark), DuckLake's own commit retries can run out on the snapshot table's primary key: an
    error of that shape is retried like a logical conflict; other errors are not."""
    from orion_assets.store.ducklake import is_conflict

    taken = duckdb.TransactionException(
        'TransactionContext Error: Failed to commit: Failed to commit DuckLake transaction: Failed to execute '
        'query "INSERT INTO "public".ducklake_snapshot VALUES (47, NOW(), 41, 54, 53);": ERROR:  duplicate key '
        'value violates unique constraint "ducklake_snapshot_pkey"\nDETAIL:  Key (snapshot_id)=(47) already exists.')
    conflict = duckdb.TransactionException(
        "TransactionContext Error: Failed to commit: Failed to commit DuckLake transaction. Transaction conflict - "
        "attempting to delete from table with index \"1\" - but another transaction has inserted into it")
    assert is_conflict(taken) and is_conflict(conflict)
    assert not is_conflict(duckdb.IOException('IO Error: Unable to connect to Postgres at "dbname=lake": refused'))
    assert not is_conflict(duckdb.CatalogException("Catalog Error: Table with name nope does not exist!"))
