"""Peak memory and time of ``cot_quality`` at scale (issue 30): the chain of bench_scale.py (simulated
teacher and student, teacher CoTs of ``--words`` thinking words) up to ``cot_quality``, measured two ways,
for two code trees side by side (A B A B).

For each size N (``--sizes 250 1000``):

1. **setup** (once per size, kept in ``--work/n<N>``): bench_scale's pool and profile (``extends = "tiny"``,
   openai backends at two :mod:`orion_devtools.llm_simulator` processes, exposure n = 4, three reflection
   modes) and ``orion run --select`` of every asset ``cot_quality`` reads (``train_problems
   student_base_model teacher_cots student_attempts baseline_cots student_errors refined_cots``).
   ``--copy-rate 1.0`` makes every rewrite of the student simulator a copy of the teacher CoT its prompt
   quotes, so that every candidate CoT is long (the simulator's own rewrites are ~20 words).
2. **step**: ``orion run --select cot_quality`` (with its check ``quality_gate``) alone in a child process,
   on the setup's store: every run replaces the same partition from the same inputs.
3. **chain**: the setup's assets and ``cot_quality`` in one child process from an empty store, as the
   issue measured the chain (one ``orion run`` process: every step before ``cot_quality`` leaves its
   imports and heap behind).

Each run is made for ``--before DIR`` and ``--after DIR`` (default: this working tree): a child runs with
that folder as its working directory and imports that folder's ``orion_assets`` (the JSON records the
file). Make the trees with ``git archive <commit> | tar -x -C DIR``.

Reported per run: the child's peak RSS (``ru_maxrss`` from ``os.wait4``), the RSS when ``cot_quality`` began
and the highest RSS sampled while it ran (``/proc/<pid>/status`` every 20 ms, steps told apart by ``orion
run``'s progress lines), ``cot_quality``'s wall and CPU seconds from its progress line and per 1,000 problems,
and a digest of the ``cot_quality`` rows it wrote (every column but the run id): the same digest is the same
rows with the same metrics. ``--probe`` instead runs the step in this process with the RSS read around each
part of the asset (``bench_quality_probe.py``: where the memory goes), for the ``--after`` tree.

    git archive <before> | tar -x -C /tmp/orion_before; git archive <after> | tar -x -C /tmp/orion_after
    .venv/bin/python benchmarks/bench_quality_memory.py --sizes 250 1000 --work /tmp/bqm --modes step \\
        --before /tmp/orion_before --after /tmp/orion_after --repeats 2 --out benchmarks/out/bqm_step.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import bench_scale  # noqa: E402  (benchmarks/ is on sys.path when this file runs as a script)

from orion_devtools.llm_simulator import SimConfig, Simulator  # noqa: E402

SETUP = ("train_problems", "student_base_model", "teacher_cots", "student_attempts", "student_errors",
         "refined_cots", "baseline_cots")  # fmt: skip
STEP = re.compile(r"\[\d+/\d+\] cot_quality\[[^\]]*\] \.\.\. .*?ok \((\d+) rows, ([\d.]+)s, ([\d.]+)s CPU\)")


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "ORION_PROFILE": str(root / "profile.toml"), "ORION_DATA_DIR": str(root / "data"),
            "DAGSTER_HOME": str(root / "dagster_home"), bench_scale.KEY_ENV: "sk-bench-not-a-secret",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}  # fmt: skip


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


PROGRESS = re.compile(r"\[\d+/\d+\] (\S+) \.\.\. ")


def run_child(command: list[str], cwd: Path, env: dict[str, str], stdout: Path) -> tuple[dict[str, Any], str]:
    """Run ``command``; its wall time, CPU, peak RSS (wait4), and per step of its ``orion run`` progress lines
    the RSS when the step began and the highest RSS sampled (every 20 ms) while it ran."""
    steps: dict[str, dict[str, float]] = {}
    with open(stdout, "w") as out:
        t0 = time.monotonic()
        child = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            current = "(start-up: imports, Dagster, definitions)"
            with open(stdout, encoding="utf-8", errors="replace") as log:
                while not done.is_set():
                    rss = _rss_kib(child.pid)
                    text = log.read()  # what the child printed since the last sample
                    for m in PROGRESS.finditer(text):
                        current = m.group(1)
                    if rss is not None:
                        step = steps.setdefault(current, {"rss_begin_mb": rss / 1024, "peak_rss_mb": 0.0})
                        step["peak_rss_mb"] = max(step["peak_rss_mb"], rss / 1024)
                    done.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        done.set()
        sampler.join()
        wall = time.monotonic() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
    text = stdout.read_text(encoding="utf-8", errors="replace")
    result: dict[str, Any] = {
        "exit_code": child.returncode, "wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "steps": {k: {m: round(v, 1) for m, v in s.items()} for k, s in steps.items()},
    }  # fmt: skip
    if child.returncode:
        result["tail"] = text[-3000:]
    return result, text


@contextlib.contextmanager
def _simulators(root: Path, n: int, words: int, copy_rate: float) -> Iterator[None]:
    """The teacher and student simulators of bench_scale.py for the pool in ``root``, and the profile at them."""
    problems = str(root / "sim_problems.jsonl")
    teacher_cfg = SimConfig(persona="teacher_reasoning_content", model=bench_scale.TEACHER_MODEL, max_model_len=None,
                            reasoning_words=words, teacher_correct_rate=0.9, latency_s=0.0, problems_file=problems,
                            seed=1)
    student_cfg = SimConfig(persona="student", model=bench_scale.STUDENT_MODEL, max_model_len=None, correct_rate=0.35,
                            refine_correct_rate=0.6, loop_rate=0.15, copy_rate=copy_rate, latency_s=0.0,
                            problems_file=problems, seed=3)
    with Simulator(teacher_cfg) as teacher, Simulator(student_cfg) as student:
        (root / "profile.toml").write_text(bench_scale.PROFILE.format(
            n=n, pool=root / "pool.jsonl", teacher=teacher.base_url, student=student.base_url,
            teacher_model=bench_scale.TEACHER_MODEL, student_model=bench_scale.STUDENT_MODEL,
            key_env=bench_scale.KEY_ENV), encoding="utf-8")
        yield


def _fresh(root: Path) -> None:
    for sub in ("data", "dagster_home"):
        shutil.rmtree(root / sub, ignore_errors=True)
        (root / sub).mkdir(parents=True)
    (root / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")


def _orion(code_args: list[str]) -> list[str]:
    """``orion`` from the working directory's ``orion_assets`` (the child says which file it imported)."""
    return [sys.executable, "-c", "import orion_assets, sys; print('orion_assets from', orion_assets.__file__, "
            "flush=True); from orion_assets.cli.main import main; sys.exit(main())", *code_args]


def setup(n: int, work: Path, words: int, copy_rate: float, code: Path = REPO) -> dict[str, Any]:
    """The pool, the profile and every input of cot_quality, once per size (kept in ``work/n<N>``)."""
    root = work / f"n{n}"
    marker = root / "setup.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    _fresh(root)
    pool = bench_scale.write_pool(n, root / "pool.jsonl", root / "sim_problems.jsonl")
    with _simulators(root, n, words, copy_rate):
        result, _ = run_child(_orion(["run", "--select", *SETUP, "--no-check"]), code, _env(root),
                              root / "setup.stdout")
    if result["exit_code"]:
        raise SystemExit(f"setup of {n} problems failed:\n{result.get('tail')}")
    result.update(problems=n, words=words, copy_rate=copy_rate, pool=pool)
    marker.write_text(json.dumps(result, indent=2))
    return result


def rows_digest(data_dir: Path) -> str:
    """sha256 of the cot_quality rows as stored (every column but the run id, sorted by id): equal digests
    are the same rows with the same metrics."""
    import duckdb

    with duckdb.connect(str(data_dir / "orion_store.duckdb"), read_only=True) as con:
        frame = con.execute("SELECT * EXCLUDE (dagster_run_id) FROM orion.cot_quality ORDER BY cot_quality_id").pl()
    return hashlib.sha256(frame.write_ndjson().encode()).hexdigest()[:16]


def _read(result: dict[str, Any], text: str, n: int, label: str, mode: str, data_dir: Path) -> dict[str, Any]:
    m = STEP.search(text.replace("\r\x1b[K", ""))
    if result["exit_code"] or m is None:
        raise SystemExit(f"cot_quality ({label}, {mode}, {n} problems) failed:\n{result.get('tail') or text[-3000:]}")
    imported = re.search(r"orion_assets from (\S+)", text)
    step = next((v for k, v in result["steps"].items() if k.startswith("cot_quality")), {})
    rows, seconds, cpu = int(m.group(1)), float(m.group(2)), float(m.group(3))
    result.update({
        "label": label, "mode": mode, "problems": n, "imported": imported.group(1) if imported else None,
        "rows": rows, "step_s": seconds, "step_cpu_s": cpu, "step_s_per_1k": round(1000 * seconds / n, 1),
        "step_cpu_s_per_1k": round(1000 * cpu / n, 1), "rss_at_step_start_mb": step.get("rss_begin_mb"),
        "step_sampled_peak_rss_mb": step.get("peak_rss_mb"), "rows_digest": rows_digest(data_dir),
    })  # fmt: skip
    return result


def measure_step(n: int, work: Path, label: str, code: Path, chunk_size: int | None = None) -> dict[str, Any]:
    """``orion run --select cot_quality`` alone, in a child whose working directory is ``code``; with
    ``chunk_size``, under a copy of the profile with that ``[data] chunk_size`` (problems per chunk)."""
    root = work / f"n{n}"
    env = _env(root)
    if chunk_size:
        profile = root / f"profile-chunk{chunk_size}.toml"
        text = (root / "profile.toml").read_text(encoding="utf-8")
        profile.write_text(text.replace("[data]\n", f"[data]\nchunk_size = {chunk_size}\n", 1), encoding="utf-8")
        env["ORION_PROFILE"] = str(profile)
    result, text = run_child(_orion(["run", "--select", "cot_quality", "--no-check"]), code, env,
                             root / f"cot_quality-{label}.stdout")
    result["chunk_size"] = chunk_size
    return _read(result, text, n, label, "step" + (f", chunks of {chunk_size}" if chunk_size else ""), root / "data")


def measure_chain(n: int, work: Path, words: int, copy_rate: float, label: str, code: Path) -> dict[str, Any]:
    """The whole chain up to ``cot_quality`` in one child, from an empty store (the pool of the setup)."""
    root = work / f"n{n}" / f"chain-{label}"
    _fresh(root)
    for name in ("pool.jsonl", "sim_problems.jsonl"):
        shutil.copyfile(work / f"n{n}" / name, root / name)
    with _simulators(root, n, words, copy_rate):
        result, text = run_child(_orion(["run", "--select", *SETUP, "cot_quality", "--no-check"]), code,
                                 _env(root), root / "chain.stdout")
    return _read(result, text, n, label, "chain", root / "data")


def markdown(report: dict[str, Any]) -> str:
    lines = ["| problems | run | code | peak RSS (process) | RSS when cot_quality began | highest RSS sampled in "
             "cot_quality | cot_quality s (wall / CPU) | per 1,000 problems (wall / CPU) | rows |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["runs"]:
        lines.append(f"| {r['problems']:,} | {r['mode']} | {r['label']} | {r['peak_rss_mb']:,.0f} MB | "
                     f"{r['rss_at_step_start_mb'] or 0:,.0f} MB | {r['step_sampled_peak_rss_mb'] or 0:,.0f} MB | "
                     f"{r['step_s']} / {r['step_cpu_s']} | {r['step_s_per_1k']} / {r['step_cpu_s_per_1k']} | "
                     f"{r['rows']:,} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1000])
    parser.add_argument("--words", type=int, default=1000, help="teacher thinking words per CoT (simulator)")
    parser.add_argument("--copy-rate", type=float, default=0.0, help="the student simulator's share of rewrites "
                        "that copy the teacher CoT of the prompt (1.0: every candidate CoT is ~--words long)")
    parser.add_argument("--work", type=Path, required=True, help="folder for each size's store (kept: set up once)")
    parser.add_argument("--before", type=Path, help="a tree of the code to compare with (its orion_assets is run)")
    parser.add_argument("--after", type=Path, default=REPO, help="the tree of the code measured as 'after' "
                        "(default: this working tree)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", nargs="+", choices=("step", "chain"), default=["step", "chain"],
                        help="step: cot_quality alone in its process; chain: the whole chain in one process")
    parser.add_argument("--chunk-size", type=int, help="step runs under the profile with this [data] chunk_size "
                        "(problems per chunk; the tiny profile's is 1,000)")
    parser.add_argument("--probe", action="store_true", help="run cot_quality in this process with RSS readings "
                        "around each part (bench_quality_probe.py) instead of the A/B children")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "bench_quality_memory.json")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_before": os.getloadavg()},
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                 text=True).stdout.strip(),
        "setup": {}, "runs": [],
    }  # fmt: skip
    for n in args.sizes:
        print(f"bench_quality_memory: setting up {n} problems ...", file=sys.stderr, flush=True)
        report["setup"][str(n)] = setup(n, args.work, args.words, args.copy_rate, args.after.resolve())
    if args.probe:
        sys.path.insert(0, str(args.after.resolve()))  # that tree's orion_assets (the probe prints which)
        import bench_quality_probe

        for n in args.sizes:
            report.setdefault("probe", {})[str(n)] = bench_quality_probe.probe(_env(args.work / f"n{n}"))
        print(bench_quality_probe.markdown(report["probe"]))
    else:
        codes = [("before", args.before.resolve())] if args.before else []
        codes.append(("after", args.after.resolve()))
        for n in args.sizes:
            for mode in args.modes:
                for repeat in range(args.repeats):
                    for label, code in codes:  # A B A B: load drifting over the run hits both
                        print(f"bench_quality_memory: {n} problems, {mode}, {label}, run {repeat + 1} ...",
                              file=sys.stderr, flush=True)
                        r = (measure_step(n, args.work, label, code, args.chunk_size) if mode == "step"
                             else measure_chain(n, args.work, args.words, args.copy_rate, label, code))
                        r["loadavg_1m"] = round(os.getloadavg()[0], 2)
                        report["runs"].append(r)
                        print(f"  peak RSS {r['peak_rss_mb']:,.0f} MB, cot_quality {r['step_s']} s "
                              f"({r['step_cpu_s']} s CPU)", file=sys.stderr, flush=True)
                        args.out.parent.mkdir(parents=True, exist_ok=True)
                        args.out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        print(markdown(report))
    report["machine"]["loadavg_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
