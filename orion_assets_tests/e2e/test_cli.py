"""`orion check` and `orion run` as a user meets them: the exact lines printed, through the real CLI.

Servers: the LLM simulator (vLLM-shaped /v1/models with max_model_len), a real `transformers
serve`, and nothing at all (port 9). A failed quality gate, a broken input file, a profile typo,
a missing key and a model missing offline each end in the lines asserted here.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from orion_assets_tests.conftest import SMALL, gsm8k_train_rows
from orion_devtools.llm_simulator import SimConfig, Simulator

REPO = Path(__file__).resolve().parents[2]
QWEN = "Qwen/Qwen2.5-1.5B-Instruct"
UNSET_KEY = "ORION_TEST_UNSET_KEY_7f3a"


def orion(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orion_assets.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def section(stdout: str, title_start: str) -> list[str]:
    """The lines of one section of `orion check` (its title and the indented lines under it)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title_start))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith(" ")), len(lines))
    return lines[start:end]


def seconds_free(lines: list[str]) -> list[str]:
    return [re.sub(r"answered in \d+\.\d\d s", "answered in S s", line) for line in lines]


# -- user errors: one line, exit 2 ------------------------------------------------------------------


@pytest.mark.slow  # orion run in a subprocess: about 12 s
def test_profile_typo_is_one_line_with_did_you_mean(orion_env, write_profile):
    profile = write_profile("[sft]\nlearning_rte = 1e-3\n")
    expected = f"profile {profile}: unknown key 'sft.learning_rte' (did you mean 'learning_rate'?)"
    for command in ("run", "check"):
        done = orion(command, "--profile", str(profile))
        assert (done.returncode, done.stderr, done.stdout) == (2, f"orion {command}: {expected}\n", "")
    debug = orion("run", "--debug", "--profile", str(profile))
    assert debug.returncode == 1 and "Traceback" in debug.stderr and expected in debug.stderr


def test_a_query_longer_than_a_file_name_is_run_not_mistaken_for_a_path(orion_env):
    """`orion sql` asks whether its argument is a file; a query of over 255 bytes made the OS refuse
    the name and the command die with a traceback (found by a UNION ALL over the asset tables)."""
    query = " UNION ALL ".join(f"SELECT {i} AS n" for i in range(40))
    done = orion("sql", "--format", "csv", query)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("orion sql: no DuckDB file at "), done.stderr


@pytest.mark.slow  # orion run in a subprocess: about 11 s
def test_broken_jsonl_line_names_file_line_and_reason(orion_env, write_profile, tmp_path):
    data = tmp_path / "pool.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": oops}\n')
    profile = write_profile(f"""
        [[data.train_sources]]
        name = "mine"
        path = "{data}"
        problem_field = "question"
        answer_format = "gsm8k"
        """)
    done = orion("run", "--profile", str(profile), "--select", "train_problems")
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"orion run: train_problems: {data}: line 2: invalid JSON: Expecting value (column 14)\n"
    assert re.search(r"^\[1/1\] train_problems \.\.\. FAILED after [\d.]+s \(run [0-9a-f-]{36}\)$", done.stdout, re.M)


@pytest.mark.slow
def test_missing_api_key_is_caught_by_the_check_and_by_the_step(orion_env, write_profile):
    profile = write_profile(f"""
        [student_model.tiny]
        vocab_size = 512
        [data]
        train_limit = 2
        [endpoints.teacher]
        backend = "openai"
        base_url = "https://api.example.invalid/v1"
        model = "deepseek-reasoner"
        api_key_env = "{UNSET_KEY}"
        """)
    problem = (f"teacher: set the environment variable {UNSET_KEY}: the server at https://api.example.invalid/v1 "
               "needs an API key ([endpoints.teacher] api_key_env)")
    check = orion("check", "--profile", str(profile), "--select", "teacher_cots")
    assert (check.returncode, check.stderr) == (2, f"orion check: {problem}\n")
    assert f"  FAIL  {problem.removeprefix('teacher: ')}" in check.stdout.splitlines()
    run = orion("run", "--profile", str(profile), "--select", "teacher_cots")
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"orion run: {problem}",
        "orion run: the preflight check found 1 problem(s); `orion check` shows the whole report (--no-check skips it)",
    ]
    # Without the check the step fails on the same key, still in one line.
    unchecked = orion("run", "--no-check", "--profile", str(profile), "--select", "train_problems",
                      "student_base_model", "teacher_cots")
    assert unchecked.returncode == 2, unchecked.stdout + unchecked.stderr
    assert unchecked.stderr == (
        f"orion run: teacher_cots: the teacher endpoint at https://api.example.invalid/v1 needs an API key: set the "
        f"environment variable {UNSET_KEY} (the profile's endpoints.teacher.api_key_env)\n"
    )


@pytest.mark.slow
def test_student_model_missing_offline(orion_env, write_profile, tmp_path):
    profile = write_profile(f'[student_model]\nsource = "pretrained"\nname_or_path = "{QWEN}"\n')
    env = {"HF_HOME": str(tmp_path / "empty_hf_home"), "HF_HUB_OFFLINE": "1"}
    check = orion("check", "--profile", str(profile), "--select", "student_base_model", env=env)
    assert (check.returncode, check.stderr) == (2, (
        f"orion check: student model tiny: {QWEN} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: download it "
        f"first (hf download {QWEN}) or set [student_model] name_or_path to a local directory\n"))
    run = orion("run", "--no-check", "--profile", str(profile), "--select", "student_base_model", env=env)
    assert (run.returncode, run.stderr) == (2, (
        f"orion run: student_base_model: {QWEN} is not in the Hugging Face cache and HF_HUB_OFFLINE is set "
        f"(LocalEntryNotFoundError): download it first (hf download {QWEN}) or point [student_model] name_or_path "
        "at a local directory\n"))


# -- orion check against servers --------------------------------------------------------------------


def _student_profile(write_profile, base_url: str, eval_max_tokens: int = 1024) -> Path:
    return write_profile(f"""
        [endpoints.student]
        backend = "openai"
        base_url = "{base_url}"
        model = "{QWEN}"
        max_tokens = 512
        price_per_mtok_in = 0.1
        price_per_mtok_out = 0.4
        [exposure]
        max_tokens = 512
        [eval]
        max_tokens = {eval_max_tokens}
        """)


@pytest.mark.slow  # orion check in a subprocess against the simulator: about 14 s
def test_check_against_the_simulator(orion_env, write_profile):
    cfg = SimConfig(persona="student", model=QWEN, adapters={"teacher_sft": "rev-1", "orion": "rev-1"})
    with Simulator(cfg) as sim:
        profile = _student_profile(write_profile, sim.base_url)
        done = orion("check", "--profile", str(profile))
        assert (done.returncode, done.stderr) == (0, ""), done.stdout
        assert seconds_free(section(done.stdout, "student:")) == [
            f"student: openai backend at {sim.base_url}, model {QWEN}",
            "  ok    API key: no api_key_env (a loopback server needs none)",
            "  ok    GET /models answered in S s: 3 model(s)",
            f"  ok    serves {QWEN}",
            "  warn  evaluation asks for each checkpoint by <variant>-<checkpoint id[:12]>: serve them after SFT "
            '(--lora-modules <name>=<checkpoint path>), or set [endpoints.student] serve = "vllm" to let the pipeline '
            "load them",
            "  ok    context window 4096 (max_model_len from /models): max_tokens 64 + a ~1836-token prompt fits "
            "(refined_cots[orion])",
        ]
        profile_lines = section(done.stdout, "profile ")
        assert "    endpoints.student.price_per_mtok_in = 0.1 (default null)" in profile_lines
        assert "    endpoints.student.base_url = " + json.dumps(sim.base_url) + " (default null)" in profile_lines
        assert "  student       384        0      311.8k      204.8k  <= $0.11" in done.stdout.splitlines()
        assert done.stdout.splitlines()[-1] == "orion check: ok, 1 warning(s)"

        too_long = _student_profile(write_profile, sim.base_url, eval_max_tokens=8192)
        refused = orion("check", "--profile", str(too_long), "--select", "benchmark_predictions")
        assert (refused.returncode, refused.stderr) == (2, (
            "orion check: student: benchmark_predictions: max_tokens 8192 + a ~300-token prompt exceeds the "
            "4096-token context window (max_model_len from /models); the server refuses such requests: lower that "
            "max_tokens\n"))
        assert not [r for r in sim.requests()], "orion check sends no chat request"


@pytest.mark.slow  # orion check in a subprocess, waiting out a refused connection: about 16 s
def test_check_against_an_unreachable_url(orion_env, write_profile):
    profile = _student_profile(write_profile, "http://127.0.0.1:9/v1")
    done = orion("check", "--profile", str(profile), "--select", "student_attempts")
    assert (done.returncode, done.stderr) == (2, (
        "orion check: student: cannot reach http://127.0.0.1:9/v1/models: connection refused (is the server running "
        "on that port?)\n"))
    assert section(done.stdout, "student:")[-1] == (
        "  FAIL  cannot reach http://127.0.0.1:9/v1/models: connection refused (is the server running on that port?)")
    # The assets that need no student do not ask for one.
    fine = orion("check", "--profile", str(profile), "--select", "train_problems", "student_base_model")
    assert fine.returncode == 0 and "student: not used by the selected assets" in fine.stdout


@pytest.mark.slow
def test_check_against_transformers_serve(orion_env, write_profile, tmp_path_factory):
    from orion_assets.training.student import build_tiny_student
    from orion_devtools.serve import served_model

    texts = [t for row in gsm8k_train_rows(200) for t in (row["question"], row["answer"])]
    model = build_tiny_student(texts, tmp_path_factory.mktemp("served"), vocab_size=512)
    with served_model(model.path) as served:
        profile = write_profile(f"""
            [endpoints.teacher]
            backend = "openai"
            base_url = "{served.base_url}"
            model = "{served.model}"
            api_key_env = "{UNSET_KEY}"
            max_tokens = 64
            """)
        done = orion("check", "--profile", str(profile), "--select", "teacher_cots")
        missing = orion("check", "--profile", str(write_profile(f"""
            [endpoints.teacher]
            backend = "openai"
            base_url = "{served.base_url}"
            model = "no-such-model"
            """, name="missing.toml")), "--select", "teacher_cots")
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    lines = seconds_free(section(done.stdout, "teacher:"))
    assert lines[:2] == [f"teacher: openai backend at {served.base_url}, model {served.model}",
                         f"  ok    API key: ${UNSET_KEY} is not set (a loopback server needs none)"]
    assert re.fullmatch(r"  ok    GET /models answered in S s: \d+ model\(s\)", lines[2])
    assert lines[3:] == [
        f"  ok    serves {served.model}",
        "  warn  context window unknown (the server does not say): set [endpoints.teacher] context_window to its "
        "--max-model-len so long prompts are fitted, not refused",
    ]
    assert missing.returncode == 2
    assert missing.stderr.startswith("orion check: teacher: the server does not list model no-such-model (it lists: ")


# -- a failed step explains itself; progress and -q -------------------------------------------------

# conftest's small profile, with a minimum length no CoT reaches: every variant fails the gate.
GATE_PROFILE = SMALL + """
[student_model.tiny]
vocab_size = 512
[quality]
min_tokens = 1900
"""
UP_TO_GATE = ["train_problems", "student_base_model", "teacher_cots", "student_attempts", "student_errors",
              "refined_cots", "baseline_cots", "cot_quality"]


@pytest.mark.slow
def test_failed_gate_prints_its_reason_progress_summaries_and_quiet(orion_env, write_profile):
    """Every variant fails the gate: the check says why at cot_quality (it blocks nothing by itself), each
    variant's SFT data is refused with its reasons, and the run goes on to the end and exits 1."""
    profile = write_profile(GATE_PROFILE)
    done = orion("run", "--profile", str(profile), "--select", *UP_TO_GATE, "sft_dataset")
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout.splitlines()
    assert re.search(r"^\[\d/12\] student_attempts\[tiny\] \.\.\. ok \(12 rows, [\d.]+s, [\d.]+s CPU\); exposure: 12 "
                     r"calls, 0 cached, 0 errors, [\d.]+ calls/s$", done.stdout, re.M), out
    assert re.search(r"^\[[67]/12\] refined_cots\[tiny\] \.\.\. ok \(12 rows, [\d.]+s, [\d.]+s CPU\); reflection\[orion\]: 6 "
                     r"calls, 0 cached, 0 errors, [\d.]+ calls/s; reflection\[no_error\]: 6 calls, 0 cached, 0 errors, "
                     r"[\d.]+ calls/s$", done.stdout, re.M), out
    assert re.search(r"^\[8/12\] cot_quality\[tiny\] \.\.\. ok ", done.stdout, re.M), out
    assert re.search(r"^\[9/12\] sft_dataset\[tiny/base\] \.\.\. ok \(0 rows", done.stdout, re.M), out
    for number, variant in ((10, "teacher_sft"), (11, "orion"), (12, "orion_no_error")):
        assert re.search(rf"^\[{number}/12\] sft_dataset\[tiny/{variant}\] \.\.\. FAILED after ", done.stdout, re.M), out
    err = done.stderr.splitlines()
    assert err[0] == ("orion run: warning: cot_quality[tiny]: the check quality_gate failed for variant(s) orion, "
                      "orion_no_error, teacher_sft")
    for line, variant in zip(err[1:4], ("orion", "orion_no_error", "teacher_sft"), strict=True):
        assert line.startswith(f"  variant {variant} failed drop_rate") and "too_short 6" in line, line
        assert re.search(r"failing ids: ([0-9a-f]{16}, ){4}[0-9a-f]{16} \(\+1 more\)$", line), line
    run_id = re.fullmatch(r"  those variants' SFT data and checkpoints are refused, the others go on; more: orion sql "
                          r"\"SELECT \* FROM orion.quality_gate_results WHERE dagster_run_id = '([0-9a-f-]{36})'\"",
                          err[4]).group(1)
    refusals = [line for line in err if line.startswith("orion run: sft_dataset[")]
    assert [line.split(":")[1].strip() for line in refusals] == [
        "sft_dataset[tiny/teacher_sft]", "sft_dataset[tiny/orion]", "sft_dataset[tiny/orion_no_error]"]
    for line, variant in zip(refusals, ("teacher_sft", "orion", "orion_no_error"), strict=True):
        assert f"refusing to build SFT data for tiny/{variant}: the quality gate failed for variant {variant}" in line, line
    assert err[-1] == ("orion run: 3 model(s) failed and were left out of what followed: tiny/teacher_sft "
                       "(sft_dataset[tiny/teacher_sft]); tiny/orion (sft_dataset[tiny/orion]); tiny/orion_no_error "
                       "(sft_dataset[tiny/orion_no_error])")
    log = next((orion_env["data_dir"] / "logs").glob("orion-run-*.log"))
    assert "Traceback" not in done.stderr and "quality gate: variant orion failed" in log.read_text()
    # The command that shows more works as printed.
    shown = orion("sql", "--format", "json",
                  f"SELECT variant, passed FROM orion.quality_gate_results WHERE dagster_run_id = '{run_id}'")
    assert sorted(json.loads(line)["variant"] for line in shown.stdout.splitlines()) == ["orion", "orion_no_error",
                                                                                       "teacher_sft"]

    again = orion("run", "--no-check", "--profile", str(profile), "--select", "student_attempts")
    assert again.returncode == 0, again.stderr
    assert re.search(r"^\[1/1\] student_attempts\[tiny\] \.\.\. ok \(12 rows, [\d.]+s, [\d.]+s CPU\); exposure: 12 calls, 12 cached, "
                     r"0 errors$", again.stdout, re.M), again.stdout
    quiet = orion("run", "-q", "--profile", str(profile), "--select", "student_attempts")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert re.fullmatch(r"orion run: 1 materializations in [\d.]+s \(log: \S+\.log\)\n", quiet.stdout), quiet.stdout


# -- the pieces behind the progress lines -----------------------------------------------------------


def test_progress_bars_count_cache_hits_errors_and_batches():
    import logging

    from orion_assets.cli.console import ProgressBars
    from orion_assets.progress import CALL_FAILED, report_progress

    bars = ProgressBars(io.StringIO(), live=False)
    bars.install()
    try:
        bars.begin("[1/1] refined_cots")
        for done in (3, 5, 8, 10):  # try 1: 3 of 10 cached
            report_progress("reflection[orion]", done, 10)
        logging.getLogger("orion_assets.llm.openai_backend").warning("x", extra={CALL_FAILED: True})
        for done in (0, 4):  # try 2: the 4 that failed, none cached
            report_progress("reflection[orion]", done, 4)
        report_progress("teacher", 6, 6)  # everything cached
        summaries, drew = bars.end()
    finally:
        bars.uninstall()
    assert not drew
    assert re.fullmatch(r"reflection\[orion\]: 14 calls, 3 cached, 1 error, [\d.]+ calls/s", summaries[0])
    assert summaries[1] == "teacher: 6 calls, 6 cached, 0 errors"


def test_chunked_progress_counts_every_batchs_calls_and_cache_hits():
    """An asset works in chunks and refinement in tries: each generate call is its own batch. The
    summary once read chunk offsets as cache hits ("63035 calls, 45000 cached" for 10 chunks)."""
    from orion_assets.cli.console import ProgressBars
    from orion_assets.method.sampling import ChunkProgress
    from orion_assets.progress import report_progress

    bars = ProgressBars(io.StringIO(), live=False)
    bars.install()
    try:
        bars.begin("[1/1] refined_cots")
        progress = ChunkProgress(lambda done, total, **fields: report_progress("reflection[orion]", done, total,
                                                                               **fields), total=10)
        # (cache hits first, then each call as it ends) per generate call: chunk 1's two tries, chunk 2's two
        for batch in ([0, 3, 6], [0, 2], [3, 4], [0, 1]):
            report = progress.chunk()
            for done in batch:
                report(done, batch[-1])
            assert bars.bars["reflection[orion]"].total >= 10  # the whole way, not one batch's
        summaries, _ = bars.end()
    finally:
        bars.uninstall()
    assert re.fullmatch(r"reflection\[orion\]: 13 calls, 3 cached, 0 errors, [\d.]+ calls/s", summaries[0]), summaries


BURN_THEN_WAIT = """
import sys, time
start = time.process_time()
while time.process_time() - start < 0.6:
    pass
print("burnt", flush=True)
time.sleep(60)
"""


def test_a_steps_cpu_counts_child_processes_running_and_ended():
    """The CPU `orion run` prints per step includes child processes: the grading workers live on
    between steps, an SFT run ends within its step."""
    from orion_assets.cli.run import _cpu_seconds

    before = _cpu_seconds()
    child = subprocess.Popen([sys.executable, "-c", BURN_THEN_WAIT], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "burnt"
        assert _cpu_seconds() - before >= 0.55  # still running
    finally:
        child.kill()
        child.wait()
    assert _cpu_seconds() - before >= 0.55  # ended and reaped


FAKE_SFT = """
import json, sys, time
from pathlib import Path
from dagster_pipes import open_dagster_pipes
params = json.loads(Path(sys.argv[sys.argv.index("--params") + 1]).read_text())
out = Path(params["output_dir"])
print("Loading weights: 100%|##########| 12/12", file=sys.stderr, flush=True)
print("FutureWarning: `foo` is deprecated", flush=True)
with open_dagster_pipes() as pipes:
    for step in range(1, 4):
        entry = {"step": step, "loss": 2.0 / step}
        with (out / "train_log.jsonl").open("a") as f:
            f.write(json.dumps(entry) + "\\n")
        pipes.log.info("sft step " + json.dumps(entry))
        time.sleep(0.6)
(out / "result.json").write_text(json.dumps({"final_path": str(out), "steps": 3}))
"""


def test_sft_process_output_goes_to_the_log_file_and_steps_to_progress(tmp_path, monkeypatch, capfd):
    from orion_assets.cli.console import ProgressBars
    from orion_assets.io.sft_pipes import run_sft_with_pipes
    from orion_assets.training import TrainParams

    script = tmp_path / "fake_sft.py"
    script.write_text(FAKE_SFT)
    log = tmp_path / "run.log"
    monkeypatch.setenv("ORION_LOG_FILE", str(log))

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["orion"]))
    def checkpoint(context, pipes_subprocess_client: dg.PipesSubprocessClient):
        params = TrainParams(base_model_path="-", dataset_path="-", output_dir=str(tmp_path / "out"), max_steps=3)
        outcome = run_sft_with_pipes(context, pipes_subprocess_client, params, [sys.executable, str(script)])
        return dg.MaterializeResult(metadata={"steps": outcome.result["steps"]})

    bars = ProgressBars(io.StringIO(), live=False)
    bars.install()
    try:
        bars.begin("[1/1] student_checkpoint[orion]")
        result = dg.materialize([checkpoint], partition_key="orion", instance=dg.DagsterInstance.ephemeral(),
                                resources={"pipes_subprocess_client": dg.PipesSubprocessClient()},
                                run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}})
        summaries, _ = bars.end()
    finally:
        bars.uninstall()
    assert result.success
    assert re.fullmatch(r"sft\[orion\]: 3 steps, loss 0\.6667 in 0:0\d", summaries[0]), summaries
    assert log.read_text().splitlines() == ["Loading weights: 100%|##########| 12/12", "FutureWarning: `foo` is deprecated"]
    captured = capfd.readouterr()
    assert "Loading weights" not in captured.out + captured.err


# -- tokens and cost ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_teacher_tokens_reasoning_and_cost_in_metadata_cache_and_report(orion_env, write_profile):
    cfg = SimConfig(persona="teacher_reasoning_content", model="deepseek-reasoner", max_model_len=None,
                    reasoning_words=80, seed=1)
    with Simulator(cfg) as sim:
        profile = write_profile(f"""
            [data]
            train_limit = 4
            [student_model.tiny]
            vocab_size = 512
            [endpoints.teacher]
            backend = "openai"
            base_url = "{sim.base_url}"
            model = "deepseek-reasoner"
            max_tokens = 2048
            price_per_mtok_in = 0.55
            price_per_mtok_out = 2.19
            """)
        done = orion("run", "--profile", str(profile), "--select", "train_problems", "student_base_model",
                     "teacher_cots")
        assert done.returncode == 0, done.stdout + done.stderr
        assert re.search(r"^\[3/3\] teacher_cots \.\.\. ok \(\d rows, [\d.]+s, [\d.]+s CPU\); teacher: 4 calls, 0 cached, 0 errors, "
                         r"[\d.]+ calls/s$", done.stdout, re.M), done.stdout
        served = sim.requests()
    import duckdb

    instance = dg.DagsterInstance.get()
    event = instance.get_latest_materialization_event(dg.AssetKey("teacher_cots"))
    meta = {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}
    usage = {k: v for k, v in meta.items() if k.startswith("llm_teacher_")}
    completion = sum(r["completion_tokens"] for r in served)
    prompt = sum(r["prompt_tokens"] for r in served)
    reasoning = sum(r["reasoning_tokens"] for r in served)
    cost = round((prompt * 0.55 + completion * 2.19) / 1e6, 6)
    assert reasoning > 0
    assert usage == {
        "llm_teacher_calls": 4, "llm_teacher_cache_hits": 0, "llm_teacher_sent": 4, "llm_teacher_errors": 0,
        "llm_teacher_context_overflow": 0, "llm_teacher_retries": 0, "llm_teacher_prompt_tokens": prompt,
        "llm_teacher_completion_tokens": completion, "llm_teacher_reasoning_tokens": reasoning,
        "llm_teacher_sent_prompt_tokens": prompt, "llm_teacher_sent_completion_tokens": completion,
        "llm_teacher_cost_usd": cost, "llm_teacher_sent_cost_usd": cost,
    }
    with duckdb.connect(str(orion_env["data_dir"] / "orion_store.duckdb"), read_only=True) as con:
        stored = con.sql("SELECT sum(reasoning_tokens) FROM orion.llm_calls WHERE role = 'teacher'").fetchone()
    assert stored == (reasoning,)

    report = orion("report", env={"ORION_PROFILE": str(profile)})
    assert report.returncode == 0, report.stderr
    page = Path(report.stdout.strip()).read_text()
    assert "## LLM calls, tokens and cost" in page
    row = next(line for line in page.splitlines() if line.startswith("| `teacher_cots`"))
    money = f"${cost:,.2f}" if cost >= 0.01 else f"${cost:.4f}"
    assert row == (f"| `teacher_cots` | teacher | `deepseek-reasoner` | 4 | 0 | {prompt:,} | {completion:,} | "
                   f"{reasoning:,} | {money} |")
    assert "| `teacher_sft` | 4 |" in page
