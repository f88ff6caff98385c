"""The openai backend against a scripted server: every fault a real server produces now and then."""

from __future__ import annotations

import asyncio
import dataclasses
import http.server
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orion_assets.llm import (
    EndpointError,
    GenerationRequest,
    SamplingParams,
    chat,
    make_endpoint,
    openai_backend,
    sampling_params,
)
from orion_assets.llm.openai_backend import OpenAIEndpoint, is_loopback
from orion_assets.profiles.schema import EndpointConfig
from orion_assets.store import Store
from orion_devtools.fault_server import FaultServer

SENTINEL = "sk-SENTINEL-do-not-leak-8d1f0c"
KEY_ENV = "ORION_TEST_FAULT_KEY"
PARAMS = SamplingParams(max_tokens=64, temperature=0.6, seed=7)


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer() as running:
        yield running


@pytest.fixture(params=["aiohttp", "httpx"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The openai client's transport: aiohttp (``openai[aiohttp]``, the default) or httpx
    (``ORION_OPENAI_HTTPX=1``). They report the same faults differently (a dropped connection is a
    connect timeout to aiohttp), and every fault must end the same on both."""
    monkeypatch.setattr(openai_backend, "USE_AIOHTTP", request.param == "aiohttp")
    return request.param


@pytest.fixture
def fresh(server: FaultServer, monkeypatch: pytest.MonkeyPatch) -> FaultServer:
    server.reset()
    monkeypatch.setenv(KEY_ENV, SENTINEL)
    return server


def _endpoint(server: FaultServer, store: Store, **overrides) -> OpenAIEndpoint:
    values = dict(
        backend="openai", base_url=server.base_url, model="fake-reasoner", api_key_env=KEY_ENV,
        concurrency=8, timeout_s=1.0, max_retries=3,
    )  # fmt: skip
    values.update(overrides)
    endpoint = make_endpoint(EndpointConfig(**values), store, role="teacher")
    assert isinstance(endpoint, OpenAIEndpoint)
    endpoint.backoff_base_s = 0.05  # keep the test quick; the schedule is the same
    return endpoint


SCRIPTS = {
    "rate": "429@1,ok",
    "errors": "500,503,ok",
    "hang": "hang,ok",
    "reset": "reset,ok",
    "nonjson": "nonjson,ok",
    "empty": "empty,ok",
    "reason": "reason",
    "length": "length",
    "refused": "400",
    "down": "500,502,503,500,500",
    "gone": "reset,reset,reset,reset",
    "badkey": "echo",
}


def test_every_fault_ends_in_one_result_or_one_recorded_error(
    tmp_path: Path, transport: str, fresh: FaultServer, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    store = Store(tmp_path / "orion_store.duckdb")
    endpoint = _endpoint(fresh, store)
    prompts = {name: f"{name}: what is {{question}}? \\frac{{a}}{{b}} ü [[fault:{script}]]" for name, script in SCRIPTS.items()}
    requests = [GenerationRequest(chat(("system", "Be brief {0}."), ("user", p)), PARAMS) for p in prompts.values()]
    results = dict(zip(prompts, endpoint.generate(requests, run_id="fault-run"), strict=True))
    stats = fresh.stats()

    for name in ("rate", "hang", "reset", "nonjson", "empty"):
        assert results[name].finish_reason == "stop" and results[name].retries == 1, (name, results[name])
    assert results["errors"].finish_reason == "stop" and results["errors"].retries == 2
    for name, result in results.items():
        assert stats["received"][prompts[name]] == result.retries + 1, name  # retries counted exactly

    # Retry-After: 1 was honoured (not the 0.05 s backoff).
    first, second = stats["times"][prompts["rate"]]
    assert 0.9 <= second - first < 3.0
    # The hung request was abandoned at the client timeout and retried.
    assert results["hang"].latency_s >= 1.0

    reason = results["reason"]
    assert reason.reasoning.startswith("Let me think") and reason.text.endswith("\\boxed{42}.")
    assert reason.cot.startswith("Let me think") and reason.cot.endswith("\\boxed{42}.")
    assert results["length"].finish_reason == "length"
    ok = results["errors"]
    assert ok.prompt_tokens and ok.completion_tokens and ok.latency_s > 0 and ok.error is None

    refused = results["refused"]
    assert refused.finish_reason == "error" and refused.retries == 0 and "HTTP 400" in refused.error
    down = results["down"]
    assert down.finish_reason == "error" and down.retries == 3
    assert "HTTP 500" in down.error and "gave up after 4 attempts" in down.error
    badkey = results["badkey"]  # the server quoted the key back: it is scrubbed from the error
    assert badkey.finish_reason == "error" and "HTTP 401" in badkey.error and "<api key>" in badkey.error
    gone = results["gone"]
    assert gone.finish_reason == "error" and "connection error" in gone.error and gone.text is None
    assert not any(results[name].timed_out for name in ("refused", "down", "badkey", "gone"))  # transport failures

    with store.connect(read_only=True) as con:
        rows = con.execute("SELECT call_id, status, error, retries FROM orion.llm_calls").fetchall()
    assert len(rows) == len(SCRIPTS) == len({r[0] for r in rows})
    by_id = {r[0]: r for r in rows}
    for name, result in results.items():
        status = "error" if name in ("refused", "down", "gone", "badkey") else "ok"
        assert by_id[result.call_id][1:] == (status, result.error, result.retries), name

    # The key was sent to the server, and appears nowhere else.
    import hashlib

    assert hashlib.sha256(SENTINEL.encode()).hexdigest() in stats["token_digests"]
    for file in tmp_path.iterdir():
        assert SENTINEL.encode() not in file.read_bytes(), file
    captured = capfd.readouterr()
    assert SENTINEL not in caplog.text and SENTINEL not in captured.out + captured.err
    assert any("gave up after 4 attempts" in r.getMessage() for r in caplog.records)
    assert SENTINEL not in repr(endpoint) and KEY_ENV in repr(endpoint)


def test_missing_api_key(tmp_path: Path, fresh: FaultServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    store = Store(tmp_path / "orion_store.duckdb")
    # A loopback server without the variable: "EMPTY" is sent (vLLM's convention).
    result = _endpoint(fresh, store).generate([GenerationRequest(chat(("user", "no key")), PARAMS)])[0]
    assert result.ok
    import hashlib

    assert fresh.stats()["token_digests"] == [hashlib.sha256(b"EMPTY").hexdigest()]
    # A remote server without it: an error naming the variable, before anything is sent.
    remote = make_endpoint(
        EndpointConfig(backend="openai", base_url="https://api.example.com/v1", model="m", api_key_env=KEY_ENV),
        store,
        role="teacher",
    )
    with pytest.raises(EndpointError, match=KEY_ENV):
        remote.generate([GenerationRequest(chat(("user", "remote")), PARAMS)])
    assert is_loopback("http://localhost:8000/v1") and is_loopback("http://[::1]:8000/v1")
    assert not is_loopback("https://api.deepseek.com/v1") and not is_loopback("http://10.0.0.5/v1")


def test_config_errors_name_the_setting(tmp_path: Path) -> None:
    store = Store(tmp_path / "orion_store.duckdb")
    with pytest.raises(EndpointError, match="base_url"):
        make_endpoint(EndpointConfig(backend="openai", model="m"), store, role="teacher")
    with pytest.raises(EndpointError, match="model"):
        make_endpoint(EndpointConfig(backend="openai", base_url="http://127.0.0.1:1/v1"), store, role="judge")
    with pytest.raises(EndpointError, match="role"):
        make_endpoint(EndpointConfig(backend="openai", base_url="http://127.0.0.1:1/v1", model="m"), store, role="x")
    # model_path overrides the profile's model name (a served LoRA adapter, say).
    cfg = EndpointConfig(backend="openai", base_url="http://127.0.0.1:1/v1", model="base")
    assert make_endpoint(cfg, store, role="student", model_path="adapter-1").identity.model == "adapter-1"


def test_generate_from_a_thread_and_from_inside_a_running_loop(tmp_path: Path, fresh: FaultServer) -> None:
    store = Store(tmp_path / "orion_store.duckdb")
    endpoint = _endpoint(fresh, store)
    out: dict[str, object] = {}

    def in_thread() -> None:
        out["thread"] = endpoint.generate([GenerationRequest(chat(("user", "from a thread")), PARAMS)])[0]

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join(30)

    async def in_loop() -> object:  # e.g. a notebook: a loop already runs in this thread
        return endpoint.generate([GenerationRequest(chat(("user", "from a loop")), PARAMS)])[0]

    out["loop"] = asyncio.run(in_loop())
    assert out["thread"].ok and out["loop"].ok  # type: ignore[union-attr]
    assert fresh.stats()["total"] == 2


def test_max_completion_tokens_when_the_server_asks_for_it(tmp_path: Path, fresh: FaultServer) -> None:
    endpoint = _endpoint(fresh, Store(tmp_path / "orion_store.duckdb"))
    first = endpoint.generate([GenerationRequest(chat(("user", "new model [[fault:mct,mct]]")), PARAMS)])[0]
    assert first.ok and first.retries == 1
    later = endpoint.generate([GenerationRequest(chat(("user", "later [[fault:mct]]")), PARAMS)])[0]
    assert later.ok and later.retries == 0  # the endpoint remembers


def test_concurrency_is_bounded(tmp_path: Path) -> None:
    with FaultServer(latency=0.2) as slow:
        endpoint = _endpoint(slow, Store(tmp_path / "orion_store.duckdb"), concurrency=3)
        requests = [GenerationRequest(chat(("user", f"bounded {i}")), PARAMS) for i in range(9)]
        results = endpoint.generate(requests)
        assert all(r.ok for r in results)
        arrivals = sorted(t for times in slow.stats()["times"].values() for t in times)
    # Three waves of three requests, 0.2 s apart: never more than 3 at once.
    for i in range(3, 9):
        assert arrivals[i] - arrivals[i - 3] >= 0.15


def test_timeouts_have_their_own_small_retry_budget(tmp_path: Path, transport: str, fresh: FaultServer) -> None:
    """A reasoning reply that runs past timeout_s is retried timeout_retries times, not max_retries:
    six retries of a 30-minute call would hold a worker for hours."""
    store = Store(tmp_path / "orion_store.duckdb")
    endpoint = _endpoint(fresh, store, max_retries=6, timeout_retries=1)
    prompt = "slow reasoner [[fault:hang,hang,hang,ok]]"
    (result,) = endpoint.generate([GenerationRequest(chat(("user", prompt)), PARAMS)])
    assert result.finish_reason == "error" and result.retries == 1, result
    assert "timeout after 1s" in result.error and "2 timeouts" in result.error and "timeout_s" in result.error
    assert result.timed_out  # the model's too-long reply, which evaluation grades as wrong
    assert fresh.stats()["received"][prompt] == 2
    # Other transient faults still get the full budget.
    (ok,) = endpoint.generate([GenerationRequest(chat(("user", "flaky [[fault:500,503,500,ok]]")), PARAMS)])
    assert ok.finish_reason == "stop" and ok.retries == 3


# -- JSON mode (the judge) ------------------------------------------------------------------------


class _JsonModeServer:
    """An OpenAI-compatible ``/v1/chat/completions`` over real HTTP on 127.0.0.1 that keeps every
    request body. ``refuse``: "response_format" answers a body carrying that field with HTTP 400
    (as a server without JSON mode does), "always" answers every request so."""

    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.bodies: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append(body)
                if outer.refuse == "always" or (outer.refuse and "response_format" in body):
                    status, payload = 400, {"error": {"message": "Unrecognized request argument supplied: "
                                                                 "response_format", "type": "invalid_request_error"}}
                else:
                    content = json.dumps({"coherence": 4, "logical_consistency": 5})
                    status, payload = 200, {
                        "id": "x", "object": "chat.completion", "model": body.get("model"),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": content}}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18},
                    }  # fmt: skip
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> _JsonModeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


JUDGE_PARAMS = SamplingParams(max_tokens=64, temperature=0.0, seed=7, json_mode=True)


def test_json_mode_sends_response_format_and_enters_the_key_only_when_set(tmp_path: Path) -> None:
    assert "json_mode" not in PARAMS.to_json()  # the keys of calls made before json_mode existed
    assert JUDGE_PARAMS.to_json()["json_mode"] is True
    cfg = EndpointConfig(backend="openai", base_url="http://127.0.0.1:9/v1", model="judge", max_tokens=64)
    assert sampling_params(cfg, json_mode=True).json_mode and not sampling_params(cfg).json_mode
    store = Store(tmp_path / "orion_store.duckdb")
    with _JsonModeServer() as server:
        endpoint = _endpoint(server, store, max_retries=0)  # type: ignore[arg-type]
        messages = chat(("user", "Rate this. Reply with JSON."))
        plain = GenerationRequest(messages, dataclasses.replace(JUDGE_PARAMS, json_mode=False))
        judged = GenerationRequest(messages, JUDGE_PARAMS)
        assert endpoint.key_for(plain) != endpoint.key_for(judged)
        results = endpoint.generate([plain, judged])
        assert all(r.ok and r.retries == 0 for r in results)
        assert [b.get("response_format") for b in sorted(server.bodies, key=lambda b: "response_format" in b)] == [
            None, {"type": "json_object"}]  # fmt: skip
        assert all(r.cached for r in endpoint.generate([plain, judged])) and len(server.bodies) == 2
    with store.connect(read_only=True) as con:
        stored = con.execute("SELECT params FROM orion.llm_calls").fetchall()
    assert {json.loads(p).get("json_mode") for (p,) in stored} == {None, True}


def test_a_server_that_refuses_response_format_still_answers_the_judge(tmp_path: Path) -> None:
    with _JsonModeServer(refuse="response_format") as server:
        store = Store(tmp_path / "orion_store.duckdb")
        endpoint = _endpoint(server, store, concurrency=1, max_retries=0)  # type: ignore[arg-type]
        requests = [GenerationRequest(chat(("user", f"Rate CoT {i}. Reply with JSON.")), JUDGE_PARAMS)
                    for i in range(3)]
        results = endpoint.generate(requests)
        assert all(r.ok and json.loads(r.text)["coherence"] == 4 for r in results), results
        assert [r.retries for r in results] == [1, 0, 0]  # asked again once; then the endpoint remembers
        assert ["response_format" in b for b in server.bodies] == [True, False, False, False]

    with _JsonModeServer(refuse="always") as server:  # refused for another reason: one more try, then recorded
        endpoint = _endpoint(server, Store(tmp_path / "other.duckdb"), max_retries=3)  # type: ignore[arg-type]
        (result,) = endpoint.generate([GenerationRequest(chat(("user", "Rate. Reply with JSON.")), JUDGE_PARAMS)])
        assert result.finish_reason == "error" and "HTTP 400" in result.error and result.retries == 1
        assert ["response_format" in b for b in server.bodies] == [True, False]
