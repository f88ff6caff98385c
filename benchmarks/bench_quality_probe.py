"""Where ``cot_quality``'s memory goes: the step run in this process (``orion run --select cot_quality``)
with the resident memory read around each part of the asset. Used by ``bench_quality_memory.py --probe``.

Each part is a function of the library wrapped for the run (nothing in the library changes): its RSS
when it began, when it ended, and the highest RSS a 5 ms sampler thread saw while it was the innermost
part running. Parts: loading the student's tokenizer and the coherence embedder, the contamination
index, reading the chunk's rows from the store (``Table.rows_for``), ``cot_metrics`` and within it the
token counts and coherence, the contamination matches, the per-row rules, the write
(``replace_rows``), the quality gate. The store's connections are read before they close: DuckDB's
own memory (``duckdb_memory()``), its ``memory_limit`` and ``threads``. glibc's ``mallinfo2`` says how
much of the heap is in use and how much is free but kept (fragmentation) at the end of each part.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]  # fmt: skip


def _heap_mb() -> dict[str, float]:
    """glibc's heap: in use (``uordblks`` + mmapped blocks) and free but kept in its arenas (``fordblks``)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    return {"malloc_in_use_mb": round((info.uordblks + info.hblkhd) / 2**20, 1),
            "malloc_free_kept_mb": round(info.fordblks / 2**20, 1)}


class Recorder:
    """Parts, nested; the sampler charges each RSS reading to the innermost part running."""

    def __init__(self) -> None:
        self.stack: list[str] = ["(before the step: imports, Dagster, definitions)"]
        self.parts: dict[str, dict[str, Any]] = {}
        self.duckdb: list[dict[str, Any]] = []
        self.done = threading.Event()
        self.lock = threading.Lock()

    def _entry(self, name: str) -> dict[str, Any]:
        return self.parts.setdefault(name, {"calls": 0, "rss_begin_mb": [], "rss_end_mb": [], "peak_rss_mb": 0.0,
                                            "seconds": 0.0})

    def sample(self) -> None:
        while not self.done.is_set():
            rss = _rss_mb()
            with self.lock:
                entry = self._entry(self.stack[-1])
                entry["peak_rss_mb"] = max(entry["peak_rss_mb"], rss)
            self.done.wait(0.005)

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        rss, t0 = _rss_mb(), time.perf_counter()
        with self.lock:
            entry = self._entry(name)
            entry["calls"] += 1
            entry["rss_begin_mb"].append(round(rss, 1))
            entry["peak_rss_mb"] = max(entry["peak_rss_mb"], rss)
            self.stack.append(name)
        try:
            yield
        finally:
            rss = _rss_mb()
            with self.lock:
                self.stack.pop()
                entry["rss_end_mb"].append(round(rss, 1))
                entry["peak_rss_mb"] = max(entry["peak_rss_mb"], rss)
                entry["seconds"] += time.perf_counter() - t0
                entry.update(_heap_mb())

    def wrap(self, owner: Any, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)
        is_classmethod = isinstance(owner.__dict__.get(attribute), classmethod) if isinstance(owner, type) else False
        function = original.__func__ if is_classmethod else original

        @functools.wraps(function)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with self.part(name):
                return function(*args, **kwargs)

        setattr(owner, attribute, classmethod(wrapped) if is_classmethod else wrapped)

    def wrap_generator(self, owner: Any, attribute: str, name: str) -> None:
        """A generator function: each ``next`` is the part (the consumer's work in between is not)."""
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def wrapped(*args: Any, **kwargs: Any) -> Iterator[Any]:
            iterator = original(*args, **kwargs)
            while True:
                with self.part(name):
                    try:
                        item = next(iterator)
                    except StopIteration:
                        return
                yield item

        setattr(owner, attribute, wrapped)


def _install(recorder: Recorder) -> None:
    import transformers

    from orion_assets.io import tables
    from orion_assets.method import problems
    from orion_assets.method.quality import candidates, embedding, gate, metrics, rules
    from orion_assets.store import base, file

    recorder.wrap(transformers.AutoTokenizer, "from_pretrained", "load the student's tokenizer")
    recorder.wrap(embedding, "load_embedder", "load the coherence embedder")
    recorder.wrap(problems.ContaminationIndex, "build", "build the contamination index")
    recorder.wrap(tables.Table, "rows_for", "read rows from the store (Table.rows_for)")
    recorder.wrap(candidates, "candidates", "candidates (concat, ids, hashes)")
    recorder.wrap(metrics, "cot_metrics", "cot_metrics (all but the two below)")
    recorder.wrap(metrics, "_token_counts", "cot_metrics: token counts (student tokenizer)")
    recorder.wrap_generator(metrics, "iter_coherence", "cot_metrics: coherence (encoder)")
    recorder.wrap(problems.ContaminationIndex, "match", "contamination matches")
    recorder.wrap(rules, "row_drop_reasons", "per-row rules")
    recorder.wrap(base.BaseStore, "replace_rows", "write the partition (replace_rows)")
    recorder.wrap(gate, "run_gate", "quality gate (Great Expectations)")

    connect = file.Store.connect

    @contextlib.contextmanager
    def reading_connect(self: Any, read_only: bool = False) -> Iterator[Any]:
        with connect(self, read_only) as con:
            yield con
            try:
                used = con.execute("SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()").fetchone()[0]
                limit, threads = con.execute("SELECT current_setting('memory_limit'), "
                                             "current_setting('threads')").fetchone()
                recorder.duckdb.append({"part": recorder.stack[-1], "duckdb_memory_mb": round(used / 2**20, 1),
                                        "memory_limit": limit, "threads": threads, "rss_mb": round(_rss_mb(), 1)})
            except Exception as exc:  # noqa: BLE001 - an aborted transaction must still close
                recorder.duckdb.append({"part": recorder.stack[-1], "error": f"{type(exc).__name__}: {exc}"})

    file.Store.connect = reading_connect


def probe(env: dict[str, str]) -> dict[str, Any]:
    """Run cot_quality in this process with ``env``'s profile and store; the parts' readings."""
    os.environ.update({k: v for k, v in env.items() if k.startswith(("ORION_", "DAGSTER_", "HF_", "TRANSFORMERS_"))
                       or k.startswith("ORION_BENCH")})
    recorder = Recorder()
    sampler = threading.Thread(target=recorder.sample, daemon=True)
    sampler.start()
    from orion_assets.cli.main import main

    _install(recorder)
    import orion_assets

    print(f"probe: orion_assets from {orion_assets.__file__}", flush=True)
    t0 = time.perf_counter()
    with recorder.part("orion run --select cot_quality (the step and its check)"):
        code = main(["run", "--select", "cot_quality", "--no-check", "--quiet"])
    recorder.done.set()
    sampler.join()
    import resource

    return {"exit_code": code, "seconds": round(time.perf_counter() - t0, 1),
            "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "parts": recorder.parts, "duckdb_connections": recorder.duckdb}


def markdown(probes: dict[str, dict[str, Any]]) -> str:
    sizes = list(probes)
    lines = ["| part | " + " | ".join(f"{int(n):,}: RSS begin -> peak (max over calls) | end" for n in sizes)
             + " | calls |", "|---|" + "---:|---:|" * len(sizes) + "---:|"]
    # (the bottom label only collects the samples taken outside every part: it is not a part)
    names = list(dict.fromkeys(name for p in probes.values() for name, part in p["parts"].items() if part["calls"]))
    for name in names:
        cells, calls = [], 0
        for n in sizes:
            part = probes[n]["parts"].get(name)
            if part is None:
                cells += ["", ""]
                continue
            begin = min(part["rss_begin_mb"]) if part["rss_begin_mb"] else 0
            end = max(part["rss_end_mb"]) if part["rss_end_mb"] else 0
            cells += [f"{begin:,.0f} -> {part['peak_rss_mb']:,.0f} MB", f"{end:,.0f} MB"]
            calls = max(calls, part["calls"])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {calls} |")
    for n in sizes:
        p = probes[n]
        duck = p["duckdb_connections"]
        top = max((d.get("duckdb_memory_mb", 0) for d in duck), default=0)
        settings = {(d.get("memory_limit"), d.get("threads")) for d in duck if "memory_limit" in d}
        lines.append(f"\n{int(n):,} problems: process peak {p['process_peak_rss_mb']:,.0f} MB; {len(duck)} store "
                     f"connections, DuckDB's own memory at most {top:,.1f} MB before a close; "
                     f"memory_limit/threads {sorted(settings)}")
    return "\n".join(lines)


if __name__ == "__main__":  # one size: python benchmarks/bench_quality_probe.py <work>/n<N> [code tree]
    import json
    import sys

    root = Path(sys.argv[1])
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_quality_memory  # puts this repository first on sys.path

    if len(sys.argv) > 2:  # the orion_assets of that tree instead
        sys.path.insert(0, str(Path(sys.argv[2]).resolve()))

    result = probe(bench_quality_memory._env(root))
    Path(root / "probe.json").write_text(json.dumps(result, indent=1, default=str))
    print(markdown({root.name.lstrip("n"): result}))
