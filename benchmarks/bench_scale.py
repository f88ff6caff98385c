"""Scale benchmark: the training half of the graph on pools of N problems, against simulated LLMs.

For each size N (``--sizes 1000 10000 50000``):

* a training pool of N problems: GSM8K train (the shipped 7,473) and, past it, renumbered copies
  (copy c > 0 of a problem is its text with `` (Variant c.)`` appended: a distinct problem id and
  prompt, the same gold answer), written as a temporary JSONL train source;
* two :mod:`orion_devtools.llm_simulator` processes with zero latency, a DeepSeek-shaped
  teacher (``teacher_reasoning_content``) and a vLLM-shaped student (``student``), both knowing the
  pool's gold answers;
* a profile ``extends = "tiny"`` with openai backends at the simulators, exposure n = 4, all three
  reflection modes (an openai teacher skips none), no judge, decontamination on (13-grams);
* one child process per size, ``python -m orion_assets.cli run --select train_problems
  student_base_model teacher_cots student_attempts student_errors refined_cots baseline_cots cot_quality
  sft_dataset`` (``orion run`` materializes every partition of ``sft_dataset``: the four trained
  variants; ``quality_gate`` runs as ``cot_quality``'s blocking check), with its own DAGSTER_HOME,
  ORION_DATA_DIR and ORION_PROFILE. Only the public CLI is used, so the benchmark does not depend
  on how the assets store their rows.

Measured per size: wall time per 1k problems, peak RSS of the child (``os.wait4``: the largest of
the child and the processes it waited for), the child's user+sys CPU per LLM call served (calls
counted in the simulators' request logs), the DuckDB file's bytes per 1k problems (every
``*.duckdb`` (+ ``.wal``) under ORION_DATA_DIR), the simulators' own CPU during the run, per-asset
wall times from ``orion run``'s progress lines, and "text stored twice" (see
:func:`duplicate_text`). First, the simulator alone is measured under a trivial keep-alive client
loop (its calls/s and CPU ms per call), so the pipeline's numbers can be read against it.

    .venv/bin/python benchmarks/bench_scale.py --sizes 200 1000 --out benchmarks/out/bench_scale.json

prints a Markdown table (with the targets) and writes the JSON.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orion_devtools.llm_simulator import SimConfig, Simulator  # noqa: E402

GSM8K = REPO / "orion_assets" / "data" / "train" / "gsm8k_train.jsonl"
CHAIN = ("train_problems", "student_base_model", "teacher_cots", "student_attempts", "student_errors",
         "refined_cots", "baseline_cots", "cot_quality", "sft_dataset")  # fmt: skip
KEY_ENV = "ORION_BENCH_SCALE_KEY"
TEACHER_MODEL = "deepseek-reasoner"
STUDENT_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"
TICKS = os.sysconf("SC_CLK_TCK")

TARGETS = {
    "time_per_1k_flat": "time per 1k problems within 1.3x from the smallest to the largest size (1k to 50k)",
    "peak_rss": "peak RSS < 4 GB at 50k",
    "cpu_per_call": "pipeline CPU < 2 ms per LLM call",
    "text_twice": "no CoT text stored twice",
}

PROFILE = """\
extends = "tiny"
description = "bench_scale: {n} problems, simulated teacher and student at zero latency."

[data]
train_limit = {n}
decontamination_ngram = 13

[[data.train_sources]]
name = "gsm8k_scaled"
path = "{pool}"
problem_field = "question"
answer_field = "answer"
answer_format = "gsm8k"
solution_field = "answer"

[endpoints.teacher]
backend = "openai"
base_url = "{teacher}"
model = "{teacher_model}"
api_key_env = "{key_env}"
concurrency = 16
max_tokens = 4096
timeout_s = 120

[endpoints.student]
backend = "openai"
base_url = "{student}"
model = "{student_model}"
api_key_env = "{key_env}"
concurrency = 32
max_tokens = 1024
timeout_s = 120

[exposure]
n = 4
max_tokens = 1024

[reflection]
tries = 2
on_failure = "teacher"
max_tokens = 2048
attempt_max_tokens = 512

[quality]
min_tokens = 16
max_tokens = 1984
max_drop_rate = 0.5
"""


# -- the pool ------------------------------------------------------------------------------------


def write_pool(n: int, pool_path: Path, sim_path: Path) -> dict[str, int]:
    """At least n (+5% for decontamination) problems: GSM8K train, then renumbered copies."""
    base = [json.loads(line) for line in GSM8K.read_text(encoding="utf-8").splitlines() if line.strip()]
    want = n + max(50, n // 20)
    copies = 0
    with open(pool_path, "w", encoding="utf-8") as pool, open(sim_path, "w", encoding="utf-8") as sim:
        for i in range(want):
            copy, row = divmod(i, len(base))
            copies = max(copies, copy)
            question = base[row]["question"].strip()
            if copy:
                question = f"{question} (Variant {copy}.)"
            answer = base[row]["answer"]
            pool.write(json.dumps({"question": question, "answer": answer}) + "\n")
            gold = answer.rsplit("####", 1)[-1].strip().replace(",", "")
            sim.write(json.dumps({"problem": question, "answer": gold}) + "\n")
    return {"rows": want, "copies_beyond_gsm8k": copies}


# -- process CPU ---------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """user + sys CPU seconds of a live process (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def sim_log(sim: Simulator) -> list[dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=600)
    conn.request("GET", "/log")
    data = json.loads(conn.getresponse().read() or b"[]")
    conn.close()
    return data


# -- the simulator alone -------------------------------------------------------------------------


def sim_capacity(work: Path, seconds: float, threads: int, reasoning_words: int) -> list[dict[str, Any]]:
    """Each persona alone under ``threads`` keep-alive client threads posting solve prompts."""
    problems_path = work / "capacity_pool.jsonl"
    write_pool(200, work / "capacity_train.jsonl", problems_path)
    problems = [json.loads(line)["problem"] for line in problems_path.read_text(encoding="utf-8").splitlines()]
    from orion_assets.method.prompts import SOLVE

    results = []
    for persona, model, max_tokens in (("student", STUDENT_MODEL, 1024),
                                       ("teacher_reasoning_content", TEACHER_MODEL, 4096)):
        cfg = SimConfig(persona=persona, model=model, max_model_len=None, latency_s=0.0,
                        reasoning_words=reasoning_words, problems_file=str(problems_path), seed=1)
        with Simulator(cfg) as sim:
            stop = time.monotonic() + seconds
            counts = [0] * threads
            errors = [0] * threads

            def client(k: int) -> None:
                conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=60)
                i = k
                while time.monotonic() < stop:
                    body = json.dumps({"model": model, "max_tokens": max_tokens, "temperature": 0.7, "seed": i,
                                       "messages": [{"role": "user", "content": SOLVE.replace(
                                           "{problem}", problems[i % len(problems)])}]})
                    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    resp.read()
                    counts[k] += 1
                    errors[k] += resp.status != 200
                    i += threads
                conn.close()

            cpu0, t0 = proc_cpu_s(sim.proc.pid), time.monotonic()
            workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            wall, cpu = time.monotonic() - t0, proc_cpu_s(sim.proc.pid) - cpu0
            calls = sum(counts)
            log = sim_log(sim)
        tokens = sum(e.get("completion_tokens") or 0 for e in log)
        results.append({
            "persona": persona, "client_threads": threads, "calls": calls, "errors": sum(errors),
            "seconds": round(wall, 2), "calls_per_s": round(calls / wall, 1),
            "sim_cpu_ms_per_call": round(1000 * cpu / max(calls, 1), 3),
            "sim_cpu_bound_calls_per_s": round(calls / cpu, 1) if cpu else None,
            "completion_tokens_per_call": round(tokens / max(len(log), 1), 1),
        })  # fmt: skip
    return results


# -- one size ------------------------------------------------------------------------------------

STEP_LINE = re.compile(r"^\[(\d+)/(\d+)\] (\S+) \.\.\. .*?ok \((?:(\d+) rows, )?([\d.]+)s(?:, ([\d.]+)s CPU)?\)")
CALL_STEPS = ("teacher_cots", "student_attempts", "refined_cots")  # the steps that call the LLMs


PY_SPY_RATE = 50  # samples per second
SDK_FRAMES = ("(openai/", "(httpx/", "(httpcore/", "(anyio/", "(h11/", "(aiohttp/", "(httpx_aiohttp/")


def call_path_profile(raw: Path, calls: int) -> dict[str, Any]:
    """Where the Python time of the LLM-calling steps went, from ``py-spy record -f raw``: each
    sample's stack names its step (the asset's chunk generator; the openai client's event loop runs
    in the same thread), and a sample with a frame of the openai SDK or its HTTP stack counts as the
    client's. Grading workers are other processes and are not sampled."""
    steps = {f"{step}.<locals>.chunks": step for step in CALL_STEPS}
    samples: dict[str, int] = dict.fromkeys(CALL_STEPS, 0)
    client: dict[str, int] = dict.fromkeys(CALL_STEPS, 0)
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        step = next((name for frame, name in steps.items() if f";{frame} (" in stack), None)
        if step is None or not count.isdigit():
            continue
        samples[step] += int(count)
        client[step] += int(count) * any(marker in stack for marker in SDK_FRAMES)
    total, in_client = sum(samples.values()), sum(client.values())
    return {
        "rate_hz": PY_SPY_RATE, "samples_by_step": samples, "client_samples_by_step": client,
        "python_ms_per_call": round(1000 * total / PY_SPY_RATE / calls, 2) if calls else None,
        "client_ms_per_call": round(1000 * in_client / PY_SPY_RATE / calls, 2) if calls else None,
        "client_share": round(in_client / total, 3) if total else None,
    }  # fmt: skip


def run_size(n: int, work: Path, reasoning_words: int, timeout_s: float, py_spy: str | None = None) -> dict[str, Any]:
    root = work / f"n{n}"
    shutil.rmtree(root, ignore_errors=True)
    data_dir, home = root / "data", root / "dagster_home"
    home.mkdir(parents=True)
    data_dir.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    pool_info = write_pool(n, root / "pool.jsonl", root / "sim_problems.jsonl")
    teacher_cfg = SimConfig(persona="teacher_reasoning_content", model=TEACHER_MODEL, max_model_len=None,
                            reasoning_words=reasoning_words, teacher_correct_rate=0.9, latency_s=0.0,
                            problems_file=str(root / "sim_problems.jsonl"), seed=1)
    student_cfg = SimConfig(persona="student", model=STUDENT_MODEL, max_model_len=None, correct_rate=0.35,
                            refine_correct_rate=0.6, loop_rate=0.15, latency_s=0.0,
                            problems_file=str(root / "sim_problems.jsonl"), seed=3)
    result: dict[str, Any] = {"problems": n, "pool": pool_info}
    with Simulator(teacher_cfg) as teacher, Simulator(student_cfg) as student:
        profile = root / "profile.toml"
        profile.write_text(PROFILE.format(n=n, pool=root / "pool.jsonl", teacher=teacher.base_url,
                                          student=student.base_url, teacher_model=TEACHER_MODEL,
                                          student_model=STUDENT_MODEL, key_env=KEY_ENV), encoding="utf-8")
        env = {**os.environ, "ORION_PROFILE": str(profile), "ORION_DATA_DIR": str(data_dir),
               "DAGSTER_HOME": str(home), KEY_ENV: "sk-bench-not-a-secret", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}  # fmt: skip
        sims_cpu0 = {"teacher": proc_cpu_s(teacher.proc.pid), "student": proc_cpu_s(student.proc.pid)}
        stdout_path, stderr_path = root / "orion_run.stdout", root / "orion_run.stderr"
        with open(stdout_path, "w") as out, open(stderr_path, "w") as err:
            t0 = time.monotonic()
            command = [sys.executable, "-m", "orion_assets.cli", "run", "--select", *CHAIN]
            if py_spy:  # sampled: its wall and CPU numbers are not the benchmark's
                command = [py_spy, "record", "-r", str(PY_SPY_RATE), "-f", "raw", "-o", str(root / "py-spy.txt"),
                           "--", *command]
            child = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err)
            status, usage = 0, None
            while True:
                pid, status, usage = os.wait4(child.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() - t0 > timeout_s:
                    child.kill()
                    pid, status, usage = os.wait4(child.pid, 0)
                    result["timed_out"] = True
                    break
                time.sleep(0.5)
            wall = time.monotonic() - t0
            child.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; keep Popen quiet
        sims_cpu = {"teacher": proc_cpu_s(teacher.proc.pid) - sims_cpu0["teacher"],
                    "student": proc_cpu_s(student.proc.pid) - sims_cpu0["student"]}
        logs = {"teacher": sim_log(teacher), "student": sim_log(student)}
    stdout = stdout_path.read_text(encoding="utf-8", errors="replace")
    result["exit_code"] = child.returncode
    if child.returncode != 0:
        result["error_tail"] = (stdout[-2000:] + "\n" + stderr_path.read_text(errors="replace")[-3000:])
    calls = {role: len(log) for role, log in logs.items()}
    calls_ok = {role: sum(e.get("status") == 200 for e in log) for role, log in logs.items()}
    total_calls = sum(calls.values())
    cpu = usage.ru_utime + usage.ru_stime
    steps = []
    for line in stdout.splitlines():
        m = STEP_LINE.match(line.replace("\r\x1b[K", ""))
        if m:
            steps.append({"step": m.group(3), "rows": int(m.group(4)) if m.group(4) else None,
                          "seconds": float(m.group(5)), "cpu_s": float(m.group(6)) if m.group(6) else None})
    db_files = [p for p in data_dir.rglob("*") if p.is_file() and (p.suffix == ".duckdb" or p.name.endswith(".duckdb.wal"))]
    db_bytes = sum(p.stat().st_size for p in db_files)
    result.update({
        "wall_s": round(wall, 1),
        "wall_s_per_1k": round(1000 * wall / n, 1),
        "steps_s_sum": round(sum(s["seconds"] for s in steps), 1),
        "steps": steps,
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "pipeline_cpu_s": round(cpu, 1),
        "pipeline_user_s": round(usage.ru_utime, 1),
        "pipeline_sys_s": round(usage.ru_stime, 1),
        "llm_calls_served": calls,
        "llm_calls_ok": calls_ok,
        "pipeline_cpu_ms_per_call": round(1000 * cpu / total_calls, 2) if total_calls else None,
        # The call path alone: the CPU `orion run` reports for the steps that call the LLMs (their
        # prompts, the client, the cache, grading, token counts, writing the rows), per call.
        "call_steps_cpu_s": _call_steps_cpu(steps),
        "call_steps_cpu_ms_per_call": (round(1000 * _call_steps_cpu(steps) / total_calls, 2)
                                       if total_calls and _call_steps_cpu(steps) is not None else None),
        "sim_cpu_s": {k: round(v, 1) for k, v in sims_cpu.items()},
        "sim_cpu_ms_per_call": {k: round(1000 * sims_cpu[k] / calls[k], 2) if calls[k] else None for k in calls},
        "duckdb_files": {str(p.relative_to(data_dir)): p.stat().st_size for p in db_files},
        "duckdb_bytes": db_bytes,
        "duckdb_mb_per_1k": round(db_bytes / 2**20 * 1000 / n, 2),
    })  # fmt: skip
    if py_spy and (root / "py-spy.txt").exists():
        result["call_path_profile"] = call_path_profile(root / "py-spy.txt", total_calls)
    # Everything the run stored besides model weights and logs (a DuckDB file, Parquet files, ...).
    stored = [p for p in data_dir.rglob("*") if p.is_file() and p.relative_to(data_dir).parts[0] not in ("models", "logs")]
    result["data_bytes_besides_models_and_logs"] = sum(p.stat().st_size for p in stored)
    result["data_mb_per_1k_besides_models_and_logs"] = round(
        result["data_bytes_besides_models_and_logs"] / 2**20 * 1000 / n, 2)
    main_db = max((p for p in db_files if p.suffix == ".duckdb"), key=lambda p: p.stat().st_size, default=None)
    if main_db is not None and child.returncode == 0:
        for key, measure in (("db", db_stats), ("text_twice", duplicate_text)):
            try:
                got = measure(main_db)
            except Exception as exc:  # noqa: BLE001 - a changed schema must not lose the timings
                result[f"{key}_error"] = f"{type(exc).__name__}: {exc}"
                continue
            if key == "db":
                result.update(got)
            else:
                result[key] = got
    return result


def _call_steps_cpu(steps: list[dict[str, Any]]) -> float | None:
    cpu = [s["cpu_s"] for s in steps if s["step"] in CALL_STEPS]
    return round(sum(cpu), 1) if cpu and None not in cpu else None


# -- what the database holds ---------------------------------------------------------------------


def _text_columns(con) -> list[tuple[str, str, str, str]]:
    """(catalog.schema, table, column, type) of every base-table column that holds text (also in lists,
    structs, JSON)."""
    rows = con.sql("""
        SELECT '"' || c.table_catalog || '"."' || c.table_schema || '"', c.table_name, c.column_name, c.data_type
        FROM information_schema.columns c JOIN information_schema.tables t
          ON c.table_schema = t.table_schema AND c.table_name = t.table_name AND c.table_catalog = t.table_catalog
        WHERE t.table_type = 'BASE TABLE' AND c.table_catalog = current_database()
          AND (c.data_type LIKE '%VARCHAR%' OR c.data_type = 'JSON')
        ORDER BY 1, 2, c.ordinal_position
    """).fetchall()
    return [tuple(r) for r in rows]


def db_stats(path: Path) -> dict[str, Any]:
    import duckdb

    with duckdb.connect(str(path), read_only=True) as con:
        tables = con.sql("""SELECT '"' || database_name || '"."' || schema_name || '"."' || table_name || '"',
                            estimated_size FROM duckdb_tables() WHERE NOT temporary ORDER BY 1""").fetchall()
        rows = {}
        for name, _ in tables:
            rows[name.replace('"', "")] = con.sql(f"SELECT count(*) FROM {name}").fetchone()[0]
        text_bytes = {}
        for schema, table, column, _type in _text_columns(con):
            (b,) = con.sql(f'SELECT coalesce(sum(strlen(CAST("{column}" AS VARCHAR))), 0) '
                           f'FROM {schema}."{table}"').fetchone()
            if b:
                text_bytes[f"{table}.{column}"] = int(b)
    return {"table_rows": rows, "text_bytes_by_column": dict(sorted(text_bytes.items(), key=lambda kv: -kv[1])),
            "text_bytes_total": sum(text_bytes.values())}


MIN_PARAGRAPH_CHARS = 80


def _paragraphs(expr: str) -> str:
    """SQL: the lines of a text expression (JSON-escaped newlines count as newlines)."""
    return f"unnest(string_split(replace(CAST({expr} AS VARCHAR), '\\n', chr(10)), chr(10)))"


def duplicate_text(path: Path) -> dict[str, Any]:
    """How many cells of the database hold each teacher CoT's text.

    Every verified teacher CoT (``teacher_cots.cot``) is represented by one of its inner
    paragraphs (a line of at least 80 characters, not its first or last line) that occurs in no
    other teacher CoT. Every text cell of every base table (VARCHAR, and JSON, list and struct
    columns cast to text, JSON-escaped newlines read as newlines) is split into lines, and a cell
    holds the CoT when one of its lines equals that paragraph (compared by hash: linear in the
    data). The CoT's own ``teacher_cots`` cell counts 1; ``share_stored_more_than_once`` is the
    share of CoTs found in more than one cell, ``copies_by_column`` says where. This counts copies
    of whole CoT paragraphs, including prompts that quote a CoT (a reflection prompt shows the
    teacher's CoT); shorter shared phrases do not count.
    """
    import duckdb

    with duckdb.connect(str(path), read_only=True) as con:
        columns = _text_columns(con)
        teacher = [c for c in columns if c[1] == "teacher_cots"]
        if not teacher:
            raise LookupError("no teacher_cots table in the DuckDB file")
        schema = teacher[0][0]
        names = [c[2] for c in teacher]
        text_col = "cot" if "cot" in names else max(
            (c[2] for c in teacher if c[3] == "VARCHAR"),
            key=lambda n: con.sql(f'SELECT avg(strlen("{n}")) FROM {schema}.teacher_cots').fetchone()[0] or 0)
        con.sql(f"""
            CREATE TEMP TABLE tp AS
            WITH lines AS (
                SELECT row_number() OVER () AS cot, {_paragraphs(f'"{text_col}"')} AS line FROM {schema}.teacher_cots),
            numbered AS (
                SELECT cot, line, row_number() OVER (PARTITION BY cot) AS k, count(*) OVER (PARTITION BY cot) AS n
                FROM lines),
            inner_lines AS (
                SELECT cot, hash(line) AS h FROM numbered WHERE k > 1 AND k < n AND strlen(line) >= {MIN_PARAGRAPH_CHARS}),
            unique_lines AS (
                SELECT h FROM (SELECT DISTINCT cot, h FROM inner_lines) GROUP BY h HAVING count(*) = 1)
            SELECT cot, min(h) AS h FROM inner_lines SEMI JOIN unique_lines USING (h) GROUP BY cot
        """)
        (n_cots,) = con.sql(f"SELECT count(*) FROM {schema}.teacher_cots").fetchone()
        (n_marked,) = con.sql("SELECT count(*) FROM tp").fetchone()
        copies: dict[int, int] = {}
        stored: dict[int, int] = {}  # without the prompts that quote a CoT (llm_*.messages)
        by_column: dict[str, int] = {}
        for s, table, column, _dtype in columns:
            hits = con.sql(f"""
                WITH cells AS (SELECT rowid AS rid, {_paragraphs(f'"{column}"')} AS line FROM {s}."{table}"),
                found AS (SELECT DISTINCT rid, hash(line) AS h FROM cells WHERE strlen(line) >= {MIN_PARAGRAPH_CHARS})
                SELECT tp.cot, count(*) FROM found JOIN tp USING (h) GROUP BY tp.cot
            """).fetchall()
            found = sum(c for _, c in hits)
            if found:
                by_column[f"{table}.{column}"] = found
            for cot, c in hits:
                copies[cot] = copies.get(cot, 0) + c
                if not (column == "messages" and table.startswith("llm_")):  # llm_calls / llm_prompts
                    stored[cot] = stored.get(cot, 0) + c
    counts, kept = list(copies.values()), list(stored.values())
    return {
        "measure": f"cells holding a unique inner paragraph of a teacher_cots.{text_col}, over every text/JSON/list/struct "
                   "column of every base table (the CoT's own cell counts 1)",
        "teacher_cots": n_cots,
        "cots_with_a_unique_paragraph": n_marked,
        "mean_cells_per_cot": round(sum(counts) / len(counts), 2) if counts else None,
        "share_stored_more_than_once": round(sum(c > 1 for c in counts) / len(counts), 3) if counts else None,
        "share_stored_more_than_once_besides_prompts": round(sum(c > 1 for c in kept) / len(kept), 3) if kept else None,
        "mean_cells_per_cot_besides_prompts": round(sum(kept) / len(kept), 2) if kept else None,
        "copies_by_column": dict(sorted(by_column.items(), key=lambda kv: -kv[1])),
    }


# -- report --------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    lines = ["Simulator alone (trivial keep-alive client loop):", "",
             "| persona | client threads | calls | calls/s | sim CPU ms/call | CPU-bound calls/s | completion tokens/call |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for c in report["simulator_alone"]:
        lines.append(f"| {c['persona']} | {c['client_threads']} | {c['calls']:,} | {c['calls_per_s']:,} | "
                     f"{c['sim_cpu_ms_per_call']} | {c['sim_cpu_bound_calls_per_s']:,} | {c['completion_tokens_per_call']} |")
    lines += ["", "Pipeline (`orion run --select " + " ".join(CHAIN) + "`):", "",
              "| problems | exit | wall | wall per 1k | peak RSS | LLM calls (teacher + student) | pipeline CPU | "
              "CPU ms/call | call steps' CPU ms/call | sim CPU ms/call (t / s) | DuckDB | DuckDB per 1k | "
              "teacher CoTs in >1 cell: all / besides prompts "
              "(mean cells) |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["sizes"]:
        if "wall_s" not in r:
            continue
        tw = r.get("text_twice") or {}
        calls = r["llm_calls_served"]
        sim = r["sim_cpu_ms_per_call"]
        lines.append(
            f"| {r['problems']:,} | {r['exit_code']} | {r['wall_s']:,} s | {r['wall_s_per_1k']:,} s | "
            f"{r['peak_rss_mb']:,} MB | {calls['teacher']:,} + {calls['student']:,} | {r['pipeline_cpu_s']:,} s | "
            f"{r['pipeline_cpu_ms_per_call']} | {r.get('call_steps_cpu_ms_per_call')} | {sim['teacher']} / {sim['student']} | "
            f"{r['duckdb_bytes'] / 2**20:,.1f} MB | {r['duckdb_mb_per_1k']} MB | "
            f"{tw.get('share_stored_more_than_once', '?')} ({tw.get('mean_cells_per_cot', '?')}) / "
            f"{tw.get('share_stored_more_than_once_besides_prompts', '?')} "
            f"({tw.get('mean_cells_per_cot_besides_prompts', '?')}) |")
    steps = [r for r in report["sizes"] if r.get("steps")]
    if steps:
        names = list(dict.fromkeys(s["step"] for r in steps for s in r["steps"]))
        lines += ["", "Per step (wall seconds / CPU seconds from `orion run`'s progress lines):", "",
                  "| step | " + " | ".join(f"{r['problems']:,}" for r in steps) + " |",
                  "|---|" + "---:|" * len(steps)]
        for name in names:
            cells = []
            for r in steps:
                s = next((s for s in r["steps"] if s["step"] == name), None)
                cells.append((f"{s['seconds']}" + (f" / {s['cpu_s']}" if s.get("cpu_s") is not None else "")) if s else "")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Targets:"]
    for key, verdict in report["targets"].items():
        lines.append(f"* {TARGETS[key]}: {verdict}")
    return "\n".join(lines)


def verdicts(sizes: list[dict[str, Any]]) -> dict[str, str]:
    done = [r for r in sizes if r.get("exit_code") == 0]
    out = {}
    if len(done) >= 2:
        lo, hi = done[0], done[-1]
        ratio = hi["wall_s_per_1k"] / lo["wall_s_per_1k"]
        flat = 1 / 1.3 <= ratio <= 1.3
        why = "" if flat or ratio > 1 else "; it falls: fixed start-up cost dominates the smaller size"
        out["time_per_1k_flat"] = (f"{ratio:.2f}x from {lo['problems']:,} to {hi['problems']:,} "
                                   f"({'within' if flat else 'NOT within'} 1.3x over the sizes run{why})")
    else:
        out["time_per_1k_flat"] = "needs two sizes"
    big = max(done, key=lambda r: r["problems"], default=None)
    if big:
        rss = big["peak_rss_mb"] / 1024
        out["peak_rss"] = (f"{rss:.2f} GB at {big['problems']:,}"
                           + ("" if big["problems"] >= 50000 else " (50k not run)"))
        cpu = [r["pipeline_cpu_ms_per_call"] for r in done]
        out["cpu_per_call"] = ", ".join(f"{c} ms" for c in cpu) + (" (met)" if max(cpu) < 2 else " (NOT met)")
        call_path = [r.get("call_steps_cpu_ms_per_call") for r in done]
        if None not in call_path:
            out["cpu_per_call"] += ("; the steps that call the LLMs alone (" + ", ".join(CALL_STEPS) + "): "
                                    + ", ".join(f"{c} ms" for c in call_path)
                                    + (" (met)" if max(call_path) < 2 else " (NOT met)"))
        profiles = [r["call_path_profile"] for r in done if r.get("call_path_profile")]
        if profiles:
            out["cpu_per_call"] += "; py-spy: " + ", ".join(
                f"{p['python_ms_per_call']} ms of Python per call in those steps, {p['client_ms_per_call']} ms of it "
                f"in the openai client and its HTTP stack ({100 * p['client_share']:.0f}%)" for p in profiles)
        if len(done) >= 2:  # the slope between the smallest and the largest size: start-up cost left out
            lo, hi = done[0], done[-1]
            d_calls = sum(hi["llm_calls_served"].values()) - sum(lo["llm_calls_served"].values())
            if d_calls > 0:
                out["cpu_per_call"] += (f"; marginal {1000 * (hi['pipeline_cpu_s'] - lo['pipeline_cpu_s']) / d_calls:.1f}"
                                        f" ms per added call from {lo['problems']:,} to {hi['problems']:,}")
        shares = [(r.get("text_twice") or {}).get("share_stored_more_than_once") for r in done]
        out["text_twice"] = (", ".join(str(s) for s in shares) + " of the teacher CoTs found in more than one cell"
                             + (" (met)" if all(s == 0 for s in shares) else " (NOT met)"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "bench_scale.json")
    parser.add_argument("--work", type=Path, help="folder for pools, profiles and data (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (data of every size)")
    parser.add_argument("--reasoning-words", type=int, default=600, help="teacher thinking length (simulator)")
    parser.add_argument("--sim-seconds", type=float, default=8.0, help="seconds per persona of the simulator-alone loop")
    parser.add_argument("--sim-threads", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per size before the run is killed")
    parser.add_argument("--py-spy", metavar="PATH", help="run each size under this py-spy and report where the LLM "
                        "steps' Python time went (the openai client or the pipeline); its timings are then not clean")
    args = parser.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="orion-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "loadavg_before": os.getloadavg()},
        "chain": list(CHAIN),
        "sizes": [],
    }  # fmt: skip
    try:
        print(f"bench_scale: simulator alone ({args.sim_seconds:.0f} s per persona) ...", file=sys.stderr, flush=True)
        report["simulator_alone"] = sim_capacity(work, args.sim_seconds, args.sim_threads, args.reasoning_words)
        for n in args.sizes:
            print(f"bench_scale: {n} problems ...", file=sys.stderr, flush=True)
            load = os.getloadavg()[0]
            result = run_size(n, work, args.reasoning_words, args.timeout, args.py_spy)
            result["loadavg_1m_before_after"] = [round(load, 2), round(os.getloadavg()[0], 2)]
            report["sizes"].append(result)
            report["targets"] = verdicts(report["sizes"])
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
            print(f"bench_scale: {n} problems: exit {result['exit_code']}, {result['wall_s']} s", file=sys.stderr,
                  flush=True)
            if result["exit_code"] != 0:
                print(result.get("error_tail", ""), file=sys.stderr)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report["targets"] = verdicts(report["sizes"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    print(markdown(report))
    return 0 if all(r.get("exit_code") == 0 for r in report["sizes"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
