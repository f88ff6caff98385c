"""The replay backend: CoTs that the data already holds, cleaned up and cached like any call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orion_assets.llm import GenerationRequest, SamplingParams, chat, make_endpoint
from orion_assets.llm.replay_backend import gsm8k_to_cot
from orion_assets.method.grading import extract_answer
from orion_assets.profiles.schema import EndpointConfig
from orion_assets.store import Store

PARAMS = SamplingParams(max_tokens=1024, temperature=0.0)
GSM = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
    "#### 72"
)


def _request(row: dict, prompt: str = "Solve it.") -> GenerationRequest:
    return GenerationRequest(chat(("user", prompt)), PARAMS, replay_row=row)


def test_gsm8k_solution_becomes_clean_cot() -> None:
    cot = gsm8k_to_cot(GSM)
    assert "<<" not in cot and ">>" not in cot and "####" not in cot
    assert cot.startswith("Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips")
    assert cot.rstrip().endswith("\\boxed{72}$.")
    assert extract_answer(cot)[0] == "72"
    assert "\\boxed{1234}" in gsm8k_to_cot("So 1,000 + 234 = <<1000+234=1234>>1,234.\n#### 1,234")
    assert "\\boxed{-5}" in gsm8k_to_cot("Down by 5.\n####   -5  ")


def test_boxed_and_plain_solutions_are_kept() -> None:
    boxed = "We get $x = \\frac{1}{2}$, so the answer is $\\boxed{\\frac{1}{2}}$. {question} <<not a calc>>"
    assert gsm8k_to_cot(boxed) == boxed
    plain = "def solution():\n    return 42  # {braces} and \\backslash and ü"
    assert gsm8k_to_cot(plain) == plain


def test_replay_field_is_cached_and_follows_the_text(tmp_path: Path) -> None:
    store = Store(tmp_path / "orion_store.duckdb")
    endpoint = make_endpoint(EndpointConfig(backend="replay", replay_field="solution"), store, role="teacher")
    rows = [
        {"problem_id": "p1", "solution": GSM},
        {"problem_id": "p2", "solution": "Thus $\\boxed{7}$ {question} \\n ü."},
    ]
    first = endpoint.generate([_request(r) for r in rows], run_id="run-1")
    assert [r.finish_reason for r in first] == ["stop", "stop"]
    assert first[0].text == gsm8k_to_cot(GSM) and first[1].text == rows[1]["solution"]
    assert first[0].cot == first[0].text and not any(r.cached for r in first)

    again = endpoint.generate([_request(r) for r in rows], run_id="run-2")
    assert all(r.cached for r in again) and [r.text for r in again] == [r.text for r in first]
    assert endpoint.last_stats["sent"] == 0

    # A changed solution is a different call (the replayed text is part of the key).
    changed = endpoint.generate([_request({"problem_id": "p1", "solution": "So \\boxed{73}."})])
    assert not changed[0].cached and changed[0].text == "So \\boxed{73}."
    with store.connect(read_only=True) as con:
        runs = con.execute("SELECT dagster_run_id FROM orion.llm_calls WHERE backend = 'replay'").fetchall()
    assert sorted(r[0] or "" for r in runs) == ["", "run-1", "run-1"]  # run-2 sent (and wrote) nothing


def test_replay_file_keyed_by_problem_id(tmp_path: Path) -> None:
    trace = tmp_path / "traces.jsonl"
    trace.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"problem_id": "a", "cot": "First {x}. Then 2+2 = <<2+2=4>>4.\n#### 4"},
                {"problem_id": "b", "cot": "Clearly $\\boxed{9}$."},
            ]
        )
        + "\n"
    )
    cfg = EndpointConfig(backend="replay", replay_file=str(trace))
    endpoint = make_endpoint(cfg, Store(tmp_path / "orion_store.duckdb"), role="teacher")
    results = endpoint.generate(
        [_request({"problem_id": "b"}), _request({"problem_id": "a", "solution": "ignored"}), _request({"problem_id": "zz"})]
    )
    assert results[0].text == "Clearly $\\boxed{9}$."
    assert results[1].text == "First {x}. Then 2+2 = 4.\nThe final answer is $\\boxed{4}$."
    assert results[2].finish_reason == "error" and "zz" in results[2].error and "traces.jsonl" in results[2].error


def test_missing_field_is_an_error_naming_problem_and_field(tmp_path: Path) -> None:
    store = Store(tmp_path / "orion_store.duckdb")
    endpoint = make_endpoint(EndpointConfig(backend="replay", replay_field="solution"), store, role="teacher")
    results = endpoint.generate(
        [_request({"problem_id": "p9"}), _request({"problem_id": "p10", "solution": "  "}),
         _request({"problem_id": "ok", "solution": "\\boxed{1}"})]
    )
    assert [r.finish_reason for r in results] == ["error", "error", "stop"]
    for result, pid in zip(results[:2], ["p9", "p10"], strict=True):
        assert pid in result.error and "'solution'" in result.error and result.text is None
    with store.connect(read_only=True) as con:
        statuses = dict(con.execute("SELECT status, count(*) FROM orion.llm_calls GROUP BY 1").fetchall())
    assert statuses == {"error": 2, "ok": 1}
    # The request without a row at all.
    bare = endpoint.generate([GenerationRequest(chat(("user", "x")), PARAMS)])
    assert bare[0].finish_reason == "error" and "replay_row" in bare[0].error


def test_replay_needs_a_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="replay_field or replay_file"):
        make_endpoint(EndpointConfig(backend="replay", replay_field=None), Store(tmp_path / "x.duckdb"), role="teacher")
