"""benchmark_predictions and benchmark_scores through Dagster against a real OpenAI-compatible server.

The student is the LLM simulator playing vLLM with a LoRA module ``orion`` (its answers depend on
the adapter's revision, as a retrained adapter's would). ``benchmark_problems`` and
``student_base_model`` (the tiny tokenizer that counts tokens) are materialized for real; the
``student_checkpoint`` rows of the ``orion`` variant are written straight into the store, as
``OrionResource.publish`` would, so that no SFT has to run.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from orion_assets.assets.training import checkpoint_row
from orion_assets.io.io_manager import resources_for
from orion_assets.io.resource import OrionResource
from orion_assets.method.evaluation.scoring import score_predictions
from orion_assets.method.partition_keys import model_key
from orion_assets.store import Store
from orion_assets_tests.graph import all_assets, benchmark_predictions, benchmark_problems, benchmark_scores, student_base_model
from orion_devtools.llm_simulator import SimConfig, Simulator

BASE_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"
N_PROBLEMS = 3
K = 2
PARTITION = dg.MultiPartitionKey({"benchmark": "gsm_hard", "model": model_key("tiny", "orion", 0)})


def _profile(write_profile, base_url: str, name: str, *, max_error_rate: float = 0.05, rule: str = "strict",
             also_grade: tuple[str, ...] = (), timeout_s: float = 30) -> Path:
    return write_profile(
        f"""
        [data]
        benchmark_limit = {N_PROBLEMS}
        [student_model.tiny]
        vocab_size = 512
        [endpoints.student]
        backend = "openai"
        base_url = "{base_url}"
        model = "{BASE_MODEL}"
        concurrency = 4
        max_retries = 0
        timeout_s = {timeout_s}
        timeout_retries = 0
        [eval]
        k = {K}
        max_tokens = 64
        max_error_rate = {max_error_rate}
        compat = "{rule}"
        also_grade = {json.dumps(list(also_grade))}
        """,
        name=name,
    )


def _resources(profile: Path, data_dir: Path) -> dict:
    return resources_for(OrionResource(profile=str(profile), data_dir=str(data_dir)))


def _prepare(profile: Path, data_dir: Path, checkpoint_id: str) -> Store:
    """Benchmark problems and the base model for real, then the orion variant's checkpoint row."""
    resources = _resources(profile, data_dir)
    assert dg.materialize([benchmark_problems], resources=resources, partition_key="gsm_hard").success
    assert dg.materialize([student_base_model], resources=resources, partition_key="tiny").success
    store = Store(data_dir / "orion_store.duckdb")
    _write_checkpoint(store, checkpoint_id)
    return store


def _write_checkpoint(store: Store, checkpoint_id: str) -> None:
    base = store.read("student_base_model").row(0, named=True)
    row = checkpoint_row(
        checkpoint_id=checkpoint_id, student="tiny", variant="orion", seed=0, base_model_id=base["model_id"], sft_examples=0,
        sft_example_ids=[], path=base["path"], kind="lora", steps=1,
    ).with_columns(pl.lit(f"run-{checkpoint_id}").alias("dagster_run_id"))  # fmt: skip
    store.replace_rows(
        "student_checkpoint", row, replace_where={"student": "tiny", "variant": "orion", "seed": 0},
        materialization={"asset_key": "student_checkpoint", "partition_key": model_key("tiny", "orion", 0),
                         "dagster_run_id": f"run-{checkpoint_id}", "upstream": []},
    )  # fmt: skip


def _evaluate(profile: Path, data_dir: Path, assets=(benchmark_predictions, benchmark_scores)):
    return dg.materialize(all_assets, selection=[a.key for a in assets], resources=_resources(profile, data_dir),
                          partition_key=PARTITION, raise_on_error=False)  # fmt: skip


def _predictions(store: Store) -> pl.DataFrame:
    return store.read("benchmark_predictions", {"benchmark": "gsm_hard", "variant": "orion"}).sort(
        "problem_id", "sample_index"
    )


def _sent(sim: Simulator) -> int:
    """Chat requests the server received (answered or refused), across restarts."""
    return sum(1 for entry in sim.requests() if entry.get("model") is not None)


@pytest.mark.slow
def test_a_checkpoint_is_asked_for_by_its_id_and_a_stale_adapter_never_answers(orion_env, write_profile) -> None:
    """Evaluation asks a server of the user's own for `<variant>-<checkpoint id>`: the adapter of an earlier
    training, served under the variant's bare name, is refused with the command that serves the new one."""
    data_dir = orion_env["data_dir"]
    n_calls = N_PROBLEMS * K
    with Simulator(SimConfig(persona="student", adapters={"orion": "rev-1"}, correct_rate=0.5, loop_rate=0.0)) as sim:
        profile = _profile(write_profile, sim.base_url, "eval.toml")
        store = _prepare(profile, data_dir, "ckpt-A")
        path = str(Path(store.read("student_checkpoint")["path"][0]).resolve())
        refused = _evaluate(profile, data_dir)
        assert not refused.success and _sent(sim) == 0
        message = _failure(refused)
        assert f"does not serve checkpoint ckpt-A (orion) as `orion-ckpt-A` (it serves: {BASE_MODEL}, orion)" in message
        assert f"--lora-modules orion-ckpt-A={path}" in message, message

        sim.restart(adapters={"orion-ckpt-A": "rev-1"})
        assert _evaluate(profile, data_dir).success
        first = _predictions(store)
        assert first.height == n_calls and set(first["checkpoint_id"]) == {"ckpt-A"}
        assert _sent(sim) == n_calls
        assert {e["model"] for e in sim.requests()} == {"orion-ckpt-A"}  # the checkpoint's name, not the base
        # unchanged checkpoint: nothing is sent again
        assert _evaluate(profile, data_dir).success
        assert _sent(sim) == n_calls

        # retrained: the server still serves the old adapter, which must not answer for the new checkpoint
        _write_checkpoint(store, "ckpt-B")
        stale = _evaluate(profile, data_dir)
        assert not stale.success and "as `orion-ckpt-B`" in _failure(stale) and _sent(sim) == n_calls
        sim.restart(adapters={"orion-ckpt-B": "rev-2"})
        assert _evaluate(profile, data_dir).success
        assert _sent(sim) == 2 * n_calls  # every call sent again
        second = _predictions(store)
        assert second.height == n_calls and set(second["checkpoint_id"]) == {"ckpt-B"}
        assert set(second["llm_call_id"]).isdisjoint(first["llm_call_id"])
        assert second["text"].to_list() != first["text"].to_list()  # the new weights' answers
        with store.connect(read_only=True) as con:
            calls = con.execute(
                "SELECT call_id, model, model_revision, text FROM orion.llm_calls WHERE role = 'student'"
            ).pl()
        models = dict(calls.group_by("model_revision").agg(pl.col("model").unique()).iter_rows())
        assert {k: list(v) for k, v in models.items()} == {"ckpt-A": ["orion-ckpt-A"], "ckpt-B": ["orion-ckpt-B"]}
        scores = store.read("benchmark_scores").row(0, named=True)
        assert scores["checkpoint_id"] == "ckpt-B"
        assert sorted(scores["prediction_ids"]) == sorted(second["prediction_id"])


def _failure(result) -> str:
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    return failure.step_failure_data.error.to_string()


def test_failed_calls_are_counted_and_fail_the_partition_past_max_error_rate(orion_env, write_profile) -> None:
    data_dir = orion_env["data_dir"]
    n_calls = N_PROBLEMS * K
    faulty = SimConfig(persona="student", adapters={"orion-ckpt-A": "rev-1"}, fault_rate=0.4, seed=3, loop_rate=0.0)
    with Simulator(faulty) as sim:
        tolerant = _profile(write_profile, sim.base_url, "tolerant.toml", max_error_rate=1.0, rule="qwen_math")
        store = _prepare(tolerant, data_dir, "ckpt-A")

        # Under the limit: the partition succeeds, failed calls are kept as rows but not graded.
        assert _evaluate(tolerant, data_dir).success
        rows = _predictions(store)
        failed = rows.filter(pl.col("finish_reason") == "error")
        n_failed = failed.height
        assert 0 < n_failed < n_calls, "the simulator's seed must fail some calls, not all"
        assert failed["correct"].null_count() == n_failed and failed["error"].null_count() == 0
        assert failed["extracted_answer"].null_count() == n_failed and failed["grade_reason"].null_count() == n_failed
        answered = rows.filter(pl.col("finish_reason") != "error")
        assert answered["correct"].null_count() == 0 and answered["error"].null_count() == answered.height
        assert set(rows["grading_rule"]) == {"qwen_math"}
        assert failed["correct_qwen_math"].null_count() == n_failed  # a failed call has no verdict under any rule
        assert answered["correct_qwen_math"].to_list() == answered["correct"].to_list()
        assert answered["correct_strict"].null_count() == answered.height  # not asked for
        scores = store.read("benchmark_scores").row(0, named=True)
        expected = score_predictions(answered, K, benchmark="gsm_hard")
        assert scores["n_errors"] == n_failed and scores["n_answered"] == n_calls - n_failed
        assert scores["pass_at_1"] == pytest.approx(expected.pass_at_1)
        assert scores["grading_rule"] == "qwen_math" and scores["primary"]

        # Over the limit: the rows are written, then the partition fails with what went wrong.
        strict = _profile(write_profile, sim.base_url, "strict.toml", max_error_rate=0.05)
        sim.restart(fault_rate=1.0)
        sent = _sent(sim)
        result = _evaluate(strict, data_dir)
        assert not result.success
        assert _sent(sim) == sent + n_failed  # only the failed calls were sent again (and failed again)
        failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
        message = failure.step_failure_data.user_failure_data.description
        assert f"{n_failed} of {n_calls} calls failed" in message and "max_error_rate" in message
        assert f"sends only the {n_failed} failed calls again" in message
        rewritten = _predictions(store)
        assert set(rewritten["dagster_run_id"]) == {result.run_id}  # written before failing
        errors = rewritten.filter(pl.col("finish_reason") == "error")
        assert errors.height == n_failed and f"first error: {errors['error'][0]}" in message
        assert not result.asset_materializations_for_node("benchmark_scores")
        # benchmark_scores alone refuses such predictions too
        alone = _evaluate(strict, data_dir, assets=(benchmark_scores,))
        assert not alone.success

        # The server recovers: a re-run sends exactly the failed calls, and all is answered.
        sim.restart(fault_rate=0.0)
        sent = _sent(sim)
        assert _evaluate(strict, data_dir).success
        assert _sent(sim) == sent + n_failed
        healed = _predictions(store)
        assert healed.filter(pl.col("finish_reason") == "error").is_empty()
        assert set(healed["grading_rule"]) == {"strict"}
        scores = store.read("benchmark_scores").row(0, named=True)
        assert scores["n_errors"] == 0 and scores["n_answered"] == n_calls and scores["grading_rule"] == "strict"


def test_the_hf_backend_keys_its_calls_by_the_checkpoint_id_too(orion_env, write_profile) -> None:
    # Two checkpoint rows over the very same weights directory: the files' fingerprint alone would
    # serve B from A's cache; the checkpoint id as model_revision makes B's calls its own.
    data_dir = orion_env["data_dir"]
    profile = write_profile(
        f"""
        [data]
        benchmark_limit = {N_PROBLEMS}
        [student_model.tiny]
        vocab_size = 512
        [eval]
        k = {K}
        max_tokens = 8
        """,
        name="hf.toml",
    )
    store = _prepare(profile, data_dir, "ckpt-A")
    assert _evaluate(profile, data_dir, assets=(benchmark_predictions,)).success
    _write_checkpoint(store, "ckpt-B")
    result = _evaluate(profile, data_dir, assets=(benchmark_predictions,))
    assert result.success
    with store.connect(read_only=True) as con:
        calls = con.execute("SELECT backend, model_revision, count(*) FROM orion.llm_calls GROUP BY ALL").fetchall()
    assert sorted(calls) == [("hf", "ckpt-A", N_PROBLEMS * K), ("hf", "ckpt-B", N_PROBLEMS * K)]
    assert set(_predictions(store)["checkpoint_id"]) == {"ckpt-B"}


@contextmanager
def _student_answering(answer: Callable[[dict, str], tuple[str, str]],
                       models: tuple[str, ...] = (BASE_MODEL, "orion-ckpt-A")) -> Iterator[str]:
    """An OpenAI-compatible student whose reply to a chat request is ``answer(body, prompt)`` ->
    ``(text, finish_reason)``, listing ``models`` (the checkpoint as evaluation names it); a client that
    stopped waiting (a timeout) is no error here."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - GET /v1/models
            listing = json.dumps({"object": "list", "data": [{"id": m, "object": "model"} for m in models]}).encode()
            self.send_response(200 if self.path.rstrip("/").endswith("/models") else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(listing)))
            self.end_headers()
            self.wfile.write(listing)

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text, finish = answer(body, body["messages"][-1]["content"])
            reply = json.dumps({
                "id": "scripted", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }).encode()  # fmt: skip
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
            except OSError:  # the client gave up on a hung reply
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def _near_miss_student(golds: dict[str, str]):
    """Each problem (found by its text in the prompt) answered with the gold off by a relative 1e-5 on
    even seeds, and with the exact gold but cut at the length limit (finish_reason "length") on odd ones."""

    def answer(body: dict, prompt: str) -> tuple[str, str]:
        gold = next(g for problem, g in golds.items() if problem in prompt)
        if int(body.get("seed") or 0) % 2 == 0:
            near = Decimal(gold) * Decimal("1.00001")
            return f"Computing step by step.\nSo the answer is \\boxed{{{format(near, 'f')}}}.", "stop"
        return f"Computing step by step.\nSo the answer is \\boxed{{{gold}}}", "length"

    return _student_answering(answer)


def _slow_student(golds: dict[str, str], hang: set[str]):
    """Each problem's gold, except that it takes 5 s over the problems in ``hang`` (a looping reply the
    client stops waiting for)."""

    def answer(body: dict, prompt: str) -> tuple[str, str]:
        if any(problem in prompt for problem in hang):
            time.sleep(5.0)
        gold = next(g for problem, g in golds.items() if problem in prompt)
        return f"So the answer is \\boxed{{{gold}}}.", "stop"

    return _student_answering(answer)


def test_the_grading_rules_and_truncation_reach_the_grader(orion_env, write_profile) -> None:
    data_dir = orion_env["data_dir"]
    golds: dict[str, str] = {}
    with _near_miss_student(golds) as base_url:
        strict = _profile(write_profile, base_url, "strict.toml", also_grade=("qwen_math", "lighteval"))
        store = _prepare(strict, data_dir, "ckpt-A")
        problems = store.read("benchmark_problems", {"benchmark": "gsm_hard"})
        golds.update(zip(problems["problem"], problems["gold_answer"], strict=True))
        nonzero = {g for g in golds.values() if Decimal(g) != 0}
        assert nonzero, "GSM-Hard sample without a nonzero gold"
        golds_by_problem = dict(zip(problems["problem_id"], problems["gold_answer"], strict=True))

        assert _evaluate(strict, data_dir).success
        rows = _predictions(store)
        assert set(rows["grading_rule"]) == {"strict"} and rows["correct"].to_list() == rows["correct_strict"].to_list()
        cut, near = rows.filter(pl.col("finish_reason") == "length"), rows.filter(pl.col("finish_reason") == "stop")
        assert cut.height == near.height == N_PROBLEMS
        # the exact gold, but cut at the length limit: never correct under strict, read by the other rules
        assert set(cut["grade_reason"]) == {"truncated"} and not cut["correct"].any()
        assert cut["correct_qwen_math"].all() and cut["correct_lighteval"].all()
        # strict: an integer gold must be matched exactly, a non-integer one at the answer's precision;
        # qwen_math: relative 1e-4 accepts the near miss; lighteval: 5 decimals do not
        nonzero_near = [Decimal(golds_by_problem[p]) != 0 for p in near["problem_id"]]
        assert not near["correct"].any()
        assert near["correct_qwen_math"].to_list() == nonzero_near
        assert near["correct_lighteval"].to_list() == [not x for x in nonzero_near]
        scores = store.read("benchmark_scores").sort("grading_rule")
        assert scores["grading_rule"].to_list() == ["lighteval", "qwen_math", "strict"]
        assert scores["primary"].to_list() == [False, False, True] and scores["score_id"].n_unique() == 3
        expected = {"strict": 0, "qwen_math": N_PROBLEMS + sum(nonzero_near),
                    "lighteval": N_PROBLEMS + sum(not x for x in nonzero_near)}
        for row in scores.iter_rows(named=True):
            assert row["pass_at_1"] == pytest.approx(expected[row["grading_rule"]] / (2 * N_PROBLEMS)), row
            assert row["n_answered"] == 2 * N_PROBLEMS and row["truncation_rate"] == pytest.approx(0.5)

        qwen = _profile(write_profile, base_url, "qwen.toml", rule="qwen_math")
        assert _evaluate(qwen, data_dir).success  # same calls, from the cache; graded again
        rows = _predictions(store)
        assert set(rows["grading_rule"]) == {"qwen_math"}
        assert rows["correct"].to_list() == rows["correct_qwen_math"].to_list()
        assert rows["correct_strict"].null_count() == rows["correct_lighteval"].null_count() == rows.height
        scores = store.read("benchmark_scores")
        assert scores.height == 1 and scores["grading_rule"].item() == "qwen_math" and scores["primary"].item()
        assert scores["pass_at_1"].item() == pytest.approx(expected["qwen_math"] / (2 * N_PROBLEMS))


def test_a_timed_out_reply_is_a_wrong_answer_not_a_failed_call(orion_env, write_profile) -> None:
    """A reply that runs past timeout_s (a looping generation) counts as wrong in pass@1: leaving it
    out would raise the score of the variant that loops. It is no failed call either, so a partition
    with max_error_rate = 0 still succeeds."""
    data_dir = orion_env["data_dir"]
    golds: dict[str, str] = {}
    hang: set[str] = set()
    with _slow_student(golds, hang) as base_url:
        profile = _profile(write_profile, base_url, "timeouts.toml", max_error_rate=0.0, timeout_s=1)
        store = _prepare(profile, data_dir, "ckpt-A")
        problems = store.read("benchmark_problems", {"benchmark": "gsm_hard"}).sort("problem_id")
        golds.update(zip(problems["problem"], problems["gold_answer"], strict=True))
        hung_id = problems["problem_id"][0]
        hang.add(problems["problem"][0])

        result = _evaluate(profile, data_dir)
        assert result.success
        rows = _predictions(store)
        timed_out = rows.filter(pl.col("problem_id") == hung_id)
        assert timed_out["finish_reason"].to_list() == ["timeout"] * K
        assert timed_out["correct"].to_list() == [False] * K and set(timed_out["grade_reason"]) == {"timeout"}
        assert all("timeout after 1s" in e for e in timed_out["error"])
        answered = rows.filter(pl.col("problem_id") != hung_id)
        assert answered["correct"].all() and set(answered["finish_reason"]) == {"stop"}
        scores = store.read("benchmark_scores").row(0, named=True)
        assert scores["n_errors"] == 0 and scores["n_answered"] == N_PROBLEMS * K
        assert scores["pass_at_1"] == pytest.approx((N_PROBLEMS - 1) / N_PROBLEMS)  # not 1.0
        assert scores["timeout_rate"] == pytest.approx(1 / N_PROBLEMS) and scores["truncation_rate"] == 0.0
        with store.connect(read_only=True) as con:  # the cache keeps it as a failed call: a re-run asks again
            statuses = con.execute("SELECT status, count(*) FROM orion.llm_calls GROUP BY ALL").fetchall()
        assert sorted(statuses) == [("error", K), ("ok", (N_PROBLEMS - 1) * K)]
