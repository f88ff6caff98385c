"""Prompts stored once in ``orion.llm_prompts``: shared texts, tables without keys, the migration of older
files, and the usage queries that tell reflection modes apart by prompt."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from orion_assets.llm import GenerationRequest, SamplingParams, chat, make_endpoint
from orion_assets.llm.cache import (
    CallIdentity,
    make_row,
    messages_json,
    prompt_hash,
    write_rows,
)
from orion_assets.llm.types import GenerationResult
from orion_assets.method import prompts
from orion_assets.method.evaluation.report import usage_frame
from orion_assets.profiles.schema import EndpointConfig, PromptsConfig
from orion_assets.store import Store
from orion_assets.vocabulary import MODE_TABLE, PROMPTS
from orion_devtools.fault_server import FaultServer

REPO_ROOT = Path(__file__).resolve().parents[2]
PARAMS = SamplingParams(max_tokens=64, temperature=0.7, top_p=0.95, seed=0)
# A teacher CoT quoted in every reflection prompt of a problem: the text that used to be copied per call.
TEACHER_COT = "Step: 6 * 7 = 42, checked twice. ü \\frac{1}{2} " * 2000  # ~100 kB

OLD_DDL = (  # llm_calls as the versions before llm_prompts created it: messages inline
    "CREATE TABLE orion.llm_calls (call_id VARCHAR PRIMARY KEY, role VARCHAR, backend VARCHAR, "
    "base_url VARCHAR, model VARCHAR, messages JSON, params JSON, sample_index INTEGER, text VARCHAR, "
    "reasoning VARCHAR, finish_reason VARCHAR, prompt_tokens INTEGER, completion_tokens INTEGER, "
    "latency_s DOUBLE, retries INTEGER, error VARCHAR, status VARCHAR, dagster_run_id VARCHAR, "
    "created_at TIMESTAMPTZ, model_revision VARCHAR, reasoning_tokens INTEGER)"
)


def _cfg(server: FaultServer) -> EndpointConfig:
    return EndpointConfig(backend="openai", base_url=server.base_url, model="fake-model", api_key_env=None,
                          concurrency=4, timeout_s=5.0, max_retries=1, temperature=0.7, max_tokens=64)  # fmt: skip


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [d[0] for d in con.execute(f"SELECT * FROM orion.{table} LIMIT 0").description]


def test_calls_that_share_a_prompt_store_its_text_once(tmp_path: Path, fresh: FaultServer) -> None:
    store = Store(tmp_path / "orion_store.duckdb")
    modes = ("orion", "no_error", "plain")
    requests = [
        GenerationRequest(chat(("system", f"Refine ({mode})."), ("user", f"Teacher:\n{TEACHER_COT}")), PARAMS,
                          sample_index=i)
        for mode in modes for i in range(8)
    ]  # fmt: skip
    first = make_endpoint(_cfg(fresh), store, role="student").generate(requests, run_id="run-1")
    assert all(r.ok and not r.cached for r in first) and fresh.stats()["total"] == 24

    with store.connect(read_only=True) as con:
        assert "messages" not in _columns(con, "llm_calls")
        calls, hashes = con.execute("SELECT count(*), count(DISTINCT prompt_hash) FROM orion.llm_calls").fetchone()
        prompts, stored_chars = con.execute(
            "SELECT count(*), sum(length(messages::VARCHAR)) FROM orion.llm_prompts"
        ).fetchone()
        joined = con.execute(
            "SELECT c.sample_index, p.messages FROM orion.llm_calls c JOIN orion.llm_prompts p USING (prompt_hash)"
        ).fetchall()
    assert calls == 24 and hashes == prompts == 3
    assert len(TEACHER_COT) * 3 <= stored_chars < len(TEACHER_COT) * 3.1  # each distinct text once, not 24 times
    assert len(joined) == 24 and {json.loads(m)[1]["content"] for _, m in joined} == {f"Teacher:\n{TEACHER_COT}"}

    again = make_endpoint(_cfg(fresh), store, role="student").generate(requests, run_id="run-2")  # reopened file
    assert all(r.cached for r in again) and [r.text for r in again] == [r.text for r in first]
    assert fresh.stats()["total"] == 24


def test_write_rows_adds_only_new_prompts_and_keeps_them_with_their_calls(tmp_path: Path) -> None:
    store = Store(tmp_path / "orion_store.duckdb")
    ident = CallIdentity("teacher", "openai", "http://x/v1", "m")
    shared = chat(("user", TEACHER_COT))

    def row(call_id: str, messages, sample_index: int = 0) -> dict:
        result = GenerationResult(call_id, f"text {call_id}", None, "stop", 1, 2, 0.1, 0, None, False)
        return make_row(ident, messages, PARAMS, sample_index, result, "run")

    first = row("a", shared)
    assert first["prompt_hash"] == prompt_hash(messages_json(shared)) and first["messages"] == messages_json(shared)
    write_rows(store, [first, row("b", shared, 1)])
    write_rows(store, [row("c", shared, 2), row("d", chat(("user", "other")))])  # the shared one is there already
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM orion.llm_prompts").fetchone()[0] == 2
        assert con.execute(
            "SELECT count(*) FROM orion.llm_calls c JOIN orion.llm_prompts p USING (prompt_hash)"
        ).fetchone()[0] == 4


def _primary_keys(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_constraints() WHERE constraint_type = 'PRIMARY KEY' "
        "AND database_name = current_database() AND schema_name = 'orion' ORDER BY 1").fetchall()]


def test_no_table_has_a_key_and_each_call_keeps_one_row(tmp_path: Path) -> None:
    """A keyed table made each flush cost time in proportion to the rows already stored (DuckDB
    loads and rewrites the whole key index per connection), so the writers keep keys unique."""
    import polars as pl

    store = Store(tmp_path / "orion_store.duckdb")
    ident = CallIdentity("student", "openai", "http://x/v1", "m")

    def row(call_id: str, text: str) -> dict:
        result = GenerationResult(call_id, text, None, "stop", 1, 2, 0.1, 0, None, False)
        return make_row(ident, chat(("user", "the same prompt")), PARAMS, 0, result, "run")

    write_rows(store, [row("a", "first"), row("b", "first")])
    write_rows(store, [row("a", "second"), row("a", "third")])  # the last row of a call id wins
    store.replace_rows("toy", pl.DataFrame({"toy_id": ["x"]}), replace_where=None,
                       materialization={"asset_key": "toy"}, lineage=[("toy", "toy_id", "toy_id", "toy")])
    with store.connect(read_only=True) as con:
        assert _primary_keys(con) == []
        assert con.execute("SELECT call_id, text FROM orion.llm_calls ORDER BY 1").fetchall() == [
            ("a", "third"), ("b", "first")]
        assert con.execute("SELECT count(*) FROM orion.llm_prompts").fetchone()[0] == 1


def _old_file(store: Store, rows: list[dict]) -> None:
    """A DuckDB file as the versions before llm_prompts wrote it (messages JSON in every call row)."""
    with store.connect() as con:
        con.execute(OLD_DDL)
        for r in rows:
            columns = [c for c in r if c != "prompt_hash"]
            con.execute(f"INSERT INTO orion.llm_calls ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                        [r[c] for c in columns])


def test_an_older_file_moves_its_messages_into_llm_prompts(tmp_path: Path, fresh: FaultServer) -> None:
    store = Store(tmp_path / "orion_store.duckdb")
    endpoint = make_endpoint(_cfg(fresh), store, role="teacher")
    shared = [GenerationRequest(chat(("user", TEACHER_COT)), PARAMS, sample_index=i) for i in range(3)]
    single = GenerationRequest(chat(("user", "written alone")), PARAMS)
    old = [*shared, single]
    rows = [make_row(endpoint.identity, r.messages, r.params, r.sample_index,
                     GenerationResult(endpoint.key_for(r), f"old {i}", None, "stop", 1, 2, 0.1, 0, None, False), "old")
            for i, r in enumerate(old)]  # fmt: skip
    _old_file(store, rows)
    with store.connect(read_only=True) as con:
        stored = con.execute("SELECT call_id, messages FROM orion.llm_calls").fetchall()
    before = {cid: json.loads(m) for cid, m in stored}

    later = GenerationRequest(chat(("user", TEACHER_COT)), PARAMS, sample_index=3)  # the shared text again
    results = endpoint.generate([*old, later], run_id="upgraded")
    assert [r.text for r in results[:4]] == ["old 0", "old 1", "old 2", "old 3"] and all(r.cached for r in results[:4])
    assert not results[4].cached and fresh.stats()["total"] == 1

    with store.connect(read_only=True) as con:
        assert "messages" not in _columns(con, "llm_calls") and "prompt_hash" in _columns(con, "llm_calls")
        assert "llm_calls" not in _primary_keys(con)  # rebuilt without the old file's key
        after = dict(con.execute(
            "SELECT c.call_id, p.messages FROM orion.llm_calls c JOIN orion.llm_prompts p USING (prompt_hash)"
        ).fetchall())
        prompts = con.execute("SELECT count(*) FROM orion.llm_prompts").fetchone()[0]
    assert {cid: json.loads(m) for cid, m in after.items() if cid in before} == before  # every call keeps its prompt
    assert len(after) == 5 and prompts == 2  # the migrated text and the later call's are one row
    endpoint.generate(old)  # a second open finds nothing left to migrate
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM orion.llm_prompts").fetchone()[0] == 2


# -- usage by reflection mode ----------------------------------------------------------------------


def _usage_tables(store: Store, old_format: bool) -> dict[str, str]:
    """Two tries of one reflection prompt, of which only the second made a refined_cots row (mode
    'orion'): the first is attributed to refined_cots through its run and to the mode by its prompt."""
    ident = CallIdentity("student", "openai", "http://x/v1", "m")
    prompt = chat(("user", f"Reflect on:\n{TEACHER_COT[:500]}"))
    other = chat(("user", "Reflect on something else"))

    def row(call_id: str, messages, index: int) -> dict:
        result = GenerationResult(call_id, "t", None, "stop", 10, 5, 0.1, 0, None, False)
        return make_row(ident, messages, PARAMS, index, result, "reflect-run")

    rows = [row("try0", prompt, 0), row("try1", prompt, 1), row("lone", other, 0)]
    if old_format:
        _old_file(store, rows)
    else:
        write_rows(store, rows)
    with store.connect() as con:
        for table, extra in (("teacher_cots", ""), ("student_attempts", ""), ("refined_cots", ", mode VARCHAR"),
                             ("benchmark_predictions", ", variant VARCHAR")):
            con.execute(f"CREATE TABLE orion.{table} (llm_call_id VARCHAR{extra})")
        con.execute("INSERT INTO orion.refined_cots VALUES ('try1', 'orion')")
        con.execute("INSERT INTO orion.materializations (materialization_id, asset_key, dagster_run_id) "
                    "VALUES ('m1', 'refined_cots', 'reflect-run')")
    return {"try0": "orion", "try1": "orion", "lone": None}


@pytest.mark.parametrize("old_format", [False, True], ids=["current", "not-yet-migrated"])
def test_usage_queries_give_every_try_of_a_reflection_prompt_its_mode(tmp_path: Path, old_format: bool) -> None:
    store = Store(tmp_path / "orion_store.duckdb")
    _usage_tables(store, old_format)
    with store.connect(read_only=True) as con:
        report = usage_frame(con)
    assert sorted(report.select("stage", "detail", "calls").iter_rows(), key=str) == sorted(
        [("refined_cots", "orion", 2), ("refined_cots", None, 1)], key=str)
    if not old_format:  # sql/usage_cost.sql reads the current tables (any run migrates the file first)
        with duckdb.connect(str(store.path), read_only=True) as con:
            frame = con.sql((REPO_ROOT / "sql" / "usage_cost.sql").read_text()).pl()
        key = ["stage", "detail", "role", "model"]
        assert frame.sort(key, nulls_last=True).equals(report.sort(key, nulls_last=True))


def test_the_profile_replaces_exactly_the_shipped_templates():
    """[prompts] keys come from the vocabulary's PROMPTS, which TEMPLATES must match: one list of names."""
    assert tuple(PromptsConfig.model_fields) == PROMPTS == tuple(prompts.TEMPLATES)
    assert {m.template for m in MODE_TABLE} <= set(PROMPTS)
    assert PromptsConfig(judge="{problem} {cot}").judge == "{problem} {cot}"
    with pytest.raises(ValueError, match="extra"):
        PromptsConfig(reflect_bogus="x")
