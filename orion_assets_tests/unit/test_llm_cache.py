"""The call cache in ``orion.llm_calls`` (prompts in ``orion.llm_prompts``): keys, batched writes, re-runs,
retried errors, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from orion_assets.llm import (
    GenerationRequest,
    SamplingParams,
    cache_key,
    chat,
    make_endpoint,
)
from orion_assets.llm.cache import CacheWriter, CallIdentity, make_row
from orion_assets.llm.types import GenerationResult
from orion_assets.profiles.schema import EndpointConfig
from orion_assets.store import Store
from orion_devtools.fault_server import FaultServer

REPO_ROOT = Path(__file__).resolve().parents[2]
MESSAGES = ({"role": "user", "content": "What is {x}? \\frac{1}{2} ü"},)
PARAMS = SamplingParams(max_tokens=64, temperature=0.7, top_p=0.95, seed=0)


def _cfg(server: FaultServer, **overrides) -> EndpointConfig:
    values = dict(
        backend="openai", base_url=server.base_url, model="fake-model", api_key_env="ORION_TEST_CACHE_KEY",
        concurrency=4, timeout_s=5.0, max_retries=2, temperature=0.7, max_tokens=64,
    )  # fmt: skip
    values.update(overrides)
    return EndpointConfig(**values)


def _rows(store: Store) -> list[tuple]:
    with store.connect(read_only=True) as con:
        return con.execute("SELECT call_id, status, text, error FROM orion.llm_calls ORDER BY call_id").fetchall()


# -- keys -----------------------------------------------------------------------------------------


def test_cache_key_is_stable_and_sensitive_to_every_component() -> None:
    base = ("openai", "http://127.0.0.1:8000/v1", "m", MESSAGES, PARAMS, 3)
    key = cache_key(*base)
    assert key == cache_key(*base) == "09fa059a3f540c919b7994cada1454e3"  # stable across runs and machines
    assert cache_key("openai", "http://127.0.0.1:8000/v1/", "m", list(MESSAGES), PARAMS, 3) == key
    variants = [
        ("hf", *base[1:]),
        (base[0], "http://127.0.0.1:8001/v1", *base[2:]),
        (*base[:2], "m2", *base[3:]),
        (*base[:3], ({"role": "user", "content": "What is {y}? \\frac{1}{2} ü"},), *base[4:]),
        (*base[:3], ({"role": "system", "content": "What is {x}? \\frac{1}{2} ü"},), *base[4:]),
        (*base[:3], ({"role": "system", "content": "s"}, *MESSAGES), *base[4:]),
        (*base[:4], SamplingParams(65, 0.7, 0.95, 0), 3),
        (*base[:4], SamplingParams(64, 0.6, 0.95, 0), 3),
        (*base[:4], SamplingParams(64, 0.7, 0.9, 0), 3),
        (*base[:4], SamplingParams(64, 0.7, 0.95, 1), 3),
        (*base[:4], SamplingParams(64, 0.7, 0.95, None), 3),
        (*base[:5], 4),
    ]
    keys = {cache_key(*v) for v in variants}
    assert key not in keys and len(keys) == len(variants)
    assert cache_key(*base, extra={"replay": "abc"}) != key


def test_model_revision_enters_the_key_and_none_keeps_the_old_keys() -> None:
    base = ("openai", "http://127.0.0.1:8000/v1", "m", MESSAGES, PARAMS, 3)
    plain = cache_key(*base)
    assert cache_key(*base, model_revision=None) == plain == "09fa059a3f540c919b7994cada1454e3"  # as before
    one, two = cache_key(*base, model_revision="ckpt-1"), cache_key(*base, model_revision="ckpt-2")
    assert len({plain, one, two}) == 3
    assert cache_key(*base, extra={"replay": "abc"}, model_revision="ckpt-1") not in {one, plain}


def test_a_new_model_revision_is_sent_again_and_stored(tmp_path: Path, fresh: FaultServer) -> None:
    store = Store(tmp_path / "orion_store.duckdb")
    request = GenerationRequest(chat(("user", "revision test")), PARAMS)
    served_as = dict(model_path="orion")  # a vLLM LoRA module name that outlives its weights

    unnamed = make_endpoint(_cfg(fresh), store, role="student", **served_as).generate([request])[0]
    first = make_endpoint(_cfg(fresh), store, role="student", model_revision="ckpt-1", **served_as)
    assert first.model_revision == "ckpt-1"
    one = first.generate([request])[0]
    assert not one.cached and one.call_id != unnamed.call_id and fresh.stats()["total"] == 2
    assert first.generate([request])[0].cached and fresh.stats()["total"] == 2  # same revision: cached

    retrained = make_endpoint(_cfg(fresh), store, role="student", model_revision="ckpt-2", **served_as)
    two = retrained.generate([request])[0]
    assert not two.cached and two.call_id not in {one.call_id, unnamed.call_id}
    assert fresh.stats()["total"] == 3
    with store.connect(read_only=True) as con:
        stored = dict(con.execute("SELECT call_id, model_revision FROM orion.llm_calls").fetchall())
    assert stored == {unnamed.call_id: None, one.call_id: "ckpt-1", two.call_id: "ckpt-2"}


def test_a_cache_written_before_model_revision_gains_the_column(tmp_path: Path, fresh: FaultServer) -> None:
    store = Store(tmp_path / "orion_store.duckdb")
    old = GenerationRequest(chat(("user", "written by an older version")), PARAMS)
    new = GenerationRequest(chat(("user", "written after the upgrade")), PARAMS)
    endpoint = make_endpoint(_cfg(fresh), store, role="teacher")
    row = make_row(endpoint.identity, old.messages, old.params, old.sample_index,
                   GenerationResult(endpoint.key_for(old), "old text", None, "stop", 1, 2, 0.1, 0, None, False), "old-run")
    columns = [c for c in row if c not in ("model_revision", "reasoning_tokens", "prompt_hash")]
    with store.connect() as con:  # the table as an older version created it: messages inline, no model_revision
        con.execute(
            "CREATE TABLE orion.llm_calls (call_id VARCHAR PRIMARY KEY, role VARCHAR, backend VARCHAR, "
            "base_url VARCHAR, model VARCHAR, messages JSON, params JSON, sample_index INTEGER, text VARCHAR, "
            "reasoning VARCHAR, finish_reason VARCHAR, prompt_tokens INTEGER, completion_tokens INTEGER, "
            "latency_s DOUBLE, retries INTEGER, error VARCHAR, status VARCHAR, dagster_run_id VARCHAR, "
            "created_at TIMESTAMPTZ)"
        )
        con.execute(f"INSERT INTO orion.llm_calls ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                    [row[c] for c in columns])
    results = endpoint.generate([old, new], run_id="upgraded")
    assert results[0].cached and results[0].text == "old text"  # no revision named: the old key still hits
    assert not results[1].cached and fresh.stats()["total"] == 1
    with store.connect(read_only=True) as con:
        rows = con.execute("SELECT text, model_revision FROM orion.llm_calls ORDER BY created_at").fetchall()
    assert rows[0] == ("old text", None) and rows[1][1] is None and len(rows) == 2
    revised = make_endpoint(_cfg(fresh), store, role="teacher", model_revision="base-model-1")
    assert not revised.generate([new])[0].cached
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM orion.llm_calls WHERE model_revision = 'base-model-1'").fetchone()[0] == 1


def test_key_and_rows_never_hold_the_api_key(tmp_path: Path, fresh: FaultServer, monkeypatch) -> None:
    store = Store(tmp_path / "orion_store.duckdb")
    request = GenerationRequest(chat(("user", "key test {question}")), PARAMS)
    monkeypatch.setenv("ORION_TEST_CACHE_KEY", "sk-first-SENTINEL-1111")
    endpoint = make_endpoint(_cfg(fresh), store, role="teacher")
    key_one = endpoint.key_for(request)
    result = endpoint.generate([request])[0]
    monkeypatch.setenv("ORION_TEST_CACHE_KEY", "sk-second-SENTINEL-2222")
    assert endpoint.key_for(request) == key_one == result.call_id
    assert endpoint.generate([request])[0].cached  # another key, same call: still a cache hit
    assert fresh.stats()["total"] == 1
    for file in tmp_path.iterdir():
        assert b"SENTINEL" not in file.read_bytes(), file


# -- batched writes -------------------------------------------------------------------------------


def _fake_row(i: int) -> dict:
    result = GenerationResult(f"call{i:03d}", f"text {i}", None, "stop", 1, 2, 0.1, 0, None, False)
    return make_row(CallIdentity("student", "openai", "http://x/v1", "m"), MESSAGES, PARAMS, i, result, "run")


def _count(store: Store) -> int:
    if not store.path.exists():
        return 0
    with store.connect(read_only=True) as con:
        tables = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'llm_calls'").fetchone()
        return con.execute("SELECT count(*) FROM orion.llm_calls").fetchone()[0] if tables[0] else 0


def _wait_for(predicate, timeout_s: float = 10.0) -> bool:
    # Polls every 0.2 s: each check opens the file under the shared lock, and polling faster on a
    # loaded machine kept the writer thread from ever getting the exclusive one.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_writer_flushes_in_small_batches_while_running(tmp_path: Path) -> None:
    store = Store(tmp_path / "orion_store.duckdb")
    writer = CacheWriter(store, flush_every=4, flush_interval_s=30.0)
    for i in range(4):
        writer.put(_fake_row(i))
    assert _wait_for(lambda: _count(store) == 4)  # a full batch is written at once
    writer.put(_fake_row(4))
    time.sleep(0.3)
    assert _count(store) == 4  # one row waits for its batch (or the interval)
    writer.close()
    assert _count(store) == 5 and writer.flushes == 2

    timed = CacheWriter(store, flush_every=100, flush_interval_s=0.2)
    timed.put(_fake_row(5))
    assert _wait_for(lambda: _count(store) == 6)  # the interval (0.2 s, not 30) flushes a partial batch
    timed.put(_fake_row(5))  # the same call again: an upsert, not a second row
    timed.close()
    assert _count(store) == 6


# -- re-runs --------------------------------------------------------------------------------------


def test_rerun_sends_nothing_and_duplicates_are_sent_once(tmp_path: Path, fresh: FaultServer) -> None:
    store = Store(tmp_path / "orion_store.duckdb")
    endpoint = make_endpoint(_cfg(fresh), store, role="student")
    prompts = [f"Problem {i}: what is {{question}}? \\boxed{{}} ü" for i in range(5)]
    requests = [GenerationRequest(chat(("user", p)), PARAMS, sample_index=j) for p in prompts for j in range(3)]
    requests.append(requests[0])  # the very same call twice in one batch
    seen: list[tuple[int, int]] = []
    first = endpoint.generate(requests, run_id="run-1", progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (15, 15)
    assert fresh.stats()["total"] == 15 and endpoint.last_stats["sent"] == 15
    assert first[-1] == first[0] and len({r.call_id for r in first}) == 15
    assert all(r.finish_reason == "stop" and not r.cached and r.completion_tokens for r in first)
    texts = {r.text for r in first}
    assert len(texts) == 15  # each sample has its own seed (seed + sample_index)

    second = make_endpoint(_cfg(fresh), store, role="student").generate(requests, run_id="run-2")
    assert fresh.stats()["total"] == 15  # nothing sent again
    assert all(r.cached for r in second) and [r.text for r in second] == [r.text for r in first]
    rows = _rows(store)
    assert len(rows) == 15 and {r[1] for r in rows} == {"ok"}
    with store.connect(read_only=True) as con:
        messages, params, run = con.execute(
            "SELECT p.messages, c.params, c.dagster_run_id FROM orion.llm_calls c "
            "JOIN orion.llm_prompts p USING (prompt_hash) WHERE c.call_id = ?", [first[0].call_id]
        ).fetchone()
        prompts = con.execute("SELECT count(*) FROM orion.llm_prompts").fetchone()[0]
    assert prompts == 5  # the 3 samples of each prompt share its stored text
    assert json.loads(messages) == [dict(m) for m in requests[0].messages] and run == "run-1"
    assert json.loads(params) == {"max_tokens": 64, "temperature": 0.7, "top_p": 0.95, "seed": 0}


def test_error_rows_are_retried_on_the_next_run(tmp_path: Path, fresh: FaultServer) -> None:
    store = Store(tmp_path / "orion_store.duckdb")
    endpoint = make_endpoint(_cfg(fresh), store, role="teacher")
    bad = GenerationRequest(chat(("user", "refused once [[fault:400]]")), PARAMS)
    good = GenerationRequest(chat(("user", "fine")), PARAMS)
    first = endpoint.generate([bad, good])
    assert first[0].finish_reason == "error" and "HTTP 400" in first[0].error and first[1].ok
    assert {(r[0], r[1]) for r in _rows(store)} == {(first[0].call_id, "error"), (first[1].call_id, "ok")}

    second = endpoint.generate([bad, good])  # the server's script is spent: the retry succeeds
    assert second[0].ok and not second[0].cached and second[1].cached
    assert fresh.stats()["received"] == {"refused once [[fault:400]]": 2, "fine": 1}
    rows = _rows(store)
    assert len(rows) == 2 and {r[1] for r in rows} == {"ok"} and all(r[3] is None for r in rows)


# -- kill and resume ------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from orion_assets.llm import GenerationRequest, SamplingParams, chat, make_endpoint
    from orion_assets.profiles.schema import EndpointConfig
    from orion_assets.store import Store

    base_url, db = sys.argv[1], sys.argv[2]
    cfg = EndpointConfig(backend="openai", base_url=base_url, model="m", api_key_env=None, concurrency=2,
                         timeout_s=10, max_retries=1)
    endpoint = make_endpoint(cfg, Store(db), role="student")
    params = SamplingParams(max_tokens=32, temperature=0.7, seed=0)
    requests = [GenerationRequest(chat(("user", f"kill test {i}")), params) for i in range(40)]
    print("START", flush=True)
    endpoint.generate(requests, run_id="killed-run")
    print("DONE", flush=True)
    """
)


def test_killed_run_resumes_with_only_the_missing_calls(tmp_path: Path) -> None:
    db = tmp_path / "orion_store.duckdb"
    with FaultServer(latency=0.2) as slow:  # 2 in flight x 0.2 s: about 10 answers a second, flushed each second
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, slow.base_url, str(db)], env=env, stdout=subprocess.PIPE, text=True
        )
        try:
            assert _wait_for(lambda: slow.stats()["answered"] >= 20, timeout_s=60), "the child never got going"
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
        assert child.returncode == -signal.SIGKILL
        first_run = slow.stats()
        assert 20 <= first_run["answered"] < 40

        store = Store(db)
        kept = _rows(store)
        assert 0 < len(kept) <= first_run["answered"] and {r[1] for r in kept} == {"ok"}

        slow.reset()
        cfg = EndpointConfig(backend="openai", base_url=slow.base_url, model="m", api_key_env=None,
                             concurrency=8, timeout_s=10, max_retries=1)  # fmt: skip
        requests = [
            GenerationRequest(chat(("user", f"kill test {i}")), SamplingParams(max_tokens=32, temperature=0.7, seed=0))
            for i in range(40)
        ]
        results = make_endpoint(cfg, store, role="student").generate(requests, run_id="resumed-run")
        resumed = slow.stats()
        assert resumed["total"] == 40 - len(kept)  # only what the killed run had not stored
        kept_ids = {r[0] for r in kept}
        assert not set(resumed["received"]) & {f"kill test {i}" for i, r in enumerate(results) if r.call_id in kept_ids}
        assert all(r.ok for r in results) and sum(r.cached for r in results) == len(kept)
        rows = _rows(store)
        assert len(rows) == 40 and len({r[0] for r in rows}) == 40
