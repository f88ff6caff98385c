"""The math_verify worker processes and the grading entry points ``grade`` and ``grade_batch``.

math_verify (sympy) can hang on adversarial input, so it never runs in the caller's process: a
module-level pool of ``forkserver`` workers, each with a memory cap, gets the undecided items and
is killed and replaced on timeout. Details: docs/grading.md.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from orion_assets.method.grading.compare import MATH_VERIFY, Verdict, _Pending, _verdict
from orion_assets.method.grading.rules import check_rule, prepare, verify_item

try:
    import resource
except ImportError:  # not on this platform: workers run without a memory cap
    resource = None

DEFAULT_TIMEOUT_S = 5.0
# Seconds a freshly started worker may take to import sympy/math_verify.
_WORKER_START_TIMEOUT_S = 120.0
# Recycle a worker after this many items (sympy's caches only grow).
_MAX_TASKS_PER_WORKER = 20_000
# grade_batch sends undecided items to a worker in chunks of at most this many.
_BATCH_CHUNK = 16


def _limit_worker_memory() -> None:  # pragma: no cover - runs in the child process
    """Cap a worker's address space so a runaway sympy computation fails with
    ``MemoryError`` (math_verify then reports a mismatch) instead of exhausting
    the machine before the timeout fires. ``ORION_GRADING_WORKER_MEM_MB``
    (default 4096, 0 = no cap) is added to the worker's current size."""
    if resource is None:
        return
    try:
        extra_mb = int(os.environ.get("ORION_GRADING_WORKER_MEM_MB", "4096"))
        if extra_mb <= 0:
            return
        with open("/proc/self/statm") as fh:
            current = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = current + extra_mb * 1024 * 1024
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except Exception:  # noqa: BLE001 - best effort (non-Linux, no /proc)
        pass


def _worker_main(conn) -> None:  # pragma: no cover - runs in the child process
    """Loop of a math_verify worker: recv (gold, pred, mode) -> send result."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    _limit_worker_memory()
    try:
        import math_verify  # noqa: F401  # deferred: heavy, needed in the worker only (verify_item uses it)
    except BaseException as exc:  # noqa: BLE001
        try:
            conn.send(("fatal", type(exc).__name__))
        finally:
            return
    gold_cache: dict[tuple[str, str], list] = {}
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            break
        if msg is None:
            break
        # msg: a list of (gold, pred, mode). Its receipt is acknowledged first, so a
        # worker that dies before reading it (killed while idle) is told apart
        # from one that an item crashed. Then one result is sent back per
        # item, as soon as it is ready, so the parent can time each item.
        try:
            conn.send(("got", len(msg)))
        except (OSError, ValueError):
            return
        for gold, pred, mode in msg:
            t0 = time.perf_counter()
            try:
                result = ("ok", verify_item(gold, pred, mode, gold_cache), time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001
                result = ("error", type(exc).__name__, time.perf_counter() - t0)
            try:
                conn.send(result)
            except (OSError, ValueError):
                return


class _Worker:
    __slots__ = ("proc", "conn", "tasks")

    def __init__(self, ctx) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child,), daemon=True,
                                name="orion-grading-worker")
        self.proc.start()
        child.close()
        self.conn = parent
        self.tasks = 0
        try:
            if not parent.poll(_WORKER_START_TIMEOUT_S):
                raise TimeoutError("math_verify worker did not start")
            msg = parent.recv()
            if msg[0] != "ready":
                raise RuntimeError(f"math_verify worker failed to start: {msg[1]}")
        except BaseException:
            self.kill()
            raise

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def kill(self) -> None:
        try:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(timeout=5)
        except Exception:  # noqa: BLE001
            pass
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass

    def stop(self) -> None:
        try:
            self.conn.send(None)
            self.proc.join(timeout=1)
        except Exception:  # noqa: BLE001
            pass
        self.kill()


def _mp_context():
    methods = mp.get_all_start_methods()
    if "forkserver" in methods:
        ctx = mp.get_context("forkserver")
        # Import sympy/math_verify once in the fork server; each worker is then
        # a cheap fork of it (the server is single-threaded, so this is safe
        # even when the caller has many threads).
        ctx.set_forkserver_preload([__name__, "math_verify", "sympy"])
        return ctx
    return mp.get_context("spawn")


class _WorkerPool:
    """At most ``size`` math_verify worker processes, started on demand.

    A caller checks out an idle worker (thread-safe, LIFO so caches stay
    warm), sends it one item or a chunk, and waits on the worker's own pipe.
    """

    def __init__(self, size: int) -> None:
        self.size = max(1, int(size))
        self._ctx = _mp_context()
        self._cond = threading.Condition(threading.Lock())
        self._idle: list[_Worker] = []
        self._live: set[_Worker] = set()
        self._starting = 0
        self._closed = False
        self.pid = os.getpid()
        self.stats = {"items": 0, "timeouts": 0, "crashes": 0, "started": 0, "worker_s": 0.0}

    # -- checkout --------------------------------------------------------
    def _acquire(self) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("grading pool is shut down")
                if self._idle:
                    return self._idle.pop()
                if len(self._live) + self._starting < self.size:
                    self._starting += 1
                    break
                self._cond.wait()
        try:
            w = _Worker(self._ctx)
        except BaseException:
            with self._cond:
                self._starting -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._starting -= 1
            self._live.add(w)
            self.stats["started"] += 1
        return w

    def _release(self, w: _Worker, healthy: bool) -> None:
        """Return a worker; an unhealthy one (timed out, crashed) is killed."""
        retire = healthy and w.tasks >= _MAX_TASKS_PER_WORKER
        with self._cond:
            keep = healthy and not retire and not self._closed
            if keep:
                self._idle.append(w)
            else:
                self._live.discard(w)
            self._cond.notify()
        if not keep:
            w.stop() if healthy else w.kill()

    def warm(self, n: int) -> None:
        """Start up to ``n`` workers in parallel (best effort)."""
        n = min(n, self.size)
        with self._cond:
            missing = n - len(self._live) - self._starting
        if missing <= 0:
            return
        ws: list[_Worker] = []
        lock = threading.Lock()

        def start():
            try:
                w = self._acquire()
            except Exception:  # noqa: BLE001
                return
            with lock:
                ws.append(w)

        threads = [threading.Thread(target=start, daemon=True) for _ in range(missing)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for w in ws:
            self._release(w, True)

    # -- items -----------------------------------------------------------
    def run(self, gold: str, pred: str, timeout_s: float, mode: str = MATH_VERIFY) -> tuple[str, object]:
        """``("ok", verdict)`` | ``("timeout", None)`` | ``("error", ExcName)``."""
        return self.run_many([(gold, pred, mode)], timeout_s)[0]

    def run_many(self, items: list[tuple[str, str, str]], timeout_s: float) -> list[tuple[str, object]]:
        """Verify ``items`` on one worker, streamed: the caller waits at most ``timeout_s`` for each result.

        After a timeout or crash the worker is killed and the rest goes to a fresh one. A worker dead
        before acknowledging the list (killed while idle) is replaced and the list resent, at most
        ``size + 2`` times."""
        results: list[tuple[str, object]] = []
        dead_on_checkout = 0
        while len(results) < len(items):
            rest = items[len(results):]
            try:
                w = self._acquire()
            except Exception as exc:  # noqa: BLE001
                results += [("error", type(exc).__name__)] * len(rest)
                break
            receipt = self._send(w, rest, timeout_s)
            if receipt != "ok":
                self._release(w, False)
                if receipt == "timeout":
                    results.append(("timeout", None))
                    self._count("timeouts")
                    continue
                dead_on_checkout += 1
                if dead_on_checkout > self.size + 2:
                    results += [("error", "WorkerCrashed")] * len(rest)
                    break
                continue
            healthy = False
            try:
                for _ in rest:
                    w.tasks += 1
                    try:
                        ready = w.conn.poll(timeout_s)
                        msg = w.conn.recv() if ready else None
                    except (EOFError, OSError, ValueError):
                        ready, msg = True, None
                    if not ready:
                        results.append(("timeout", None))
                        self._count("timeouts")
                        break
                    if msg is None:
                        results.append(("error", "WorkerCrashed"))
                        self._count("crashes")
                        break
                    with self._cond:
                        self.stats["items"] += 1
                        self.stats["worker_s"] += msg[2]
                    results.append((msg[0], msg[1]))
                else:
                    healthy = True
            finally:
                # unhealthy (timeout, crash, caller interrupted): killed here;
                # a fresh worker replaces it on demand
                self._release(w, healthy)
        return results

    @staticmethod
    def _send(w: _Worker, items: list[tuple[str, str, str]], timeout_s: float) -> str:
        """Send ``items``: ``"ok"`` once the worker acknowledges them,
        ``"dead"`` if it is gone before that, ``"timeout"`` if it stays alive
        and silent for ``timeout_s`` (counted against the first item)."""
        try:
            w.conn.send(items)
            if not w.conn.poll(timeout_s):
                return "timeout"
            ack = w.conn.recv()
        except (EOFError, OSError, ValueError):
            return "dead"
        return "ok" if ack[0] == "got" else "dead"

    def _count(self, key: str) -> None:
        with self._cond:
            self.stats[key] += 1

    def worker_pids(self) -> list[int]:
        with self._cond:
            return [w.pid for w in self._live if w.pid is not None]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            live = list(self._live)
            self._live.clear()
            self._cond.notify_all()
        for w in idle:
            w.stop()
        for w in live:
            if w not in idle:
                w.kill()


_POOL: _WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def _get_pool(min_size: int | None = None) -> _WorkerPool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid() or _POOL._closed:
            _POOL = _WorkerPool(os.cpu_count() or 1)
        if min_size and min_size > _POOL.size:
            with _POOL._cond:
                _POOL.size = int(min_size)
        return _POOL


def shutdown_pool() -> None:
    """Stop all math_verify worker processes (a later call starts new ones)."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None and pool.pid == os.getpid():
        pool.close()


atexit.register(shutdown_pool)


def _pool_worker_pids() -> list[int]:
    pool = _POOL
    return pool.worker_pids() if pool is not None else []


def _timeout(timeout_s: float | None) -> float:
    if timeout_s is None or timeout_s <= 0:
        return DEFAULT_TIMEOUT_S
    return float(timeout_s)


def _run_pending(pending: _Pending, timeout_s: float | None) -> tuple[str, object]:
    return _get_pool().run(pending.gold_mv, pending.pred_mv, _timeout(timeout_s), pending.mode)


def grade(output: str, gold: str, benchmark: str | None = None,
          timeout_s: float = DEFAULT_TIMEOUT_S, *, rule: str = "strict",
          truncated: bool = False) -> Verdict:
    """Grade one model output against a gold answer; never hangs, never raises on any output or gold.

    ``rule``: one of ``GRADING_RULES`` (else ``ValueError``). ``truncated`` (``finish_reason: "length"``):
    under "strict" never correct, reason ``"truncated"``, the verdict still showing a closed final answer
    if there is one; the other rules read a cut reply as they read any. Rules: docs/grading.md.
    """
    pre = prepare(check_rule(rule), output, gold, benchmark, bool(truncated))
    if isinstance(pre, Verdict):
        return pre
    return _verdict(pre, *_run_pending(pre, timeout_s))


def grade_batch(
    pairs: Sequence[tuple[str, str]],
    benchmark: str | None | Sequence[str | None] = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    workers: int | None = None,
    *,
    rule: str = "strict",
    truncated: bool | Sequence[bool] = False,
) -> list[Verdict]:
    """Grade many ``(output, gold)`` pairs, in input order; the same verdicts as :func:`grade` on each.

    ``benchmark`` and ``truncated``: one for all pairs or one per pair. The cheap stage runs in the
    calling thread; undecided items, deduplicated by (gold, answer), are streamed in chunks through
    ``workers`` math_verify processes (default ``os.cpu_count()``), each item with its own ``timeout_s``.
    """
    check_rule(rule)
    pairs = list(pairs)
    n = len(pairs)
    if benchmark is None or isinstance(benchmark, str):
        benches: Sequence[str | None] = [benchmark] * n
    else:
        benches = list(benchmark)
        if len(benches) != n:
            raise ValueError(f"got {len(benches)} benchmarks for {n} pairs")
    try:
        cut = [bool(t) for t in truncated]  # type: ignore[union-attr]
    except TypeError:  # one flag for all
        cut = [bool(truncated)] * n
    if len(cut) != n:
        raise ValueError(f"got {len(cut)} truncated flags for {n} pairs")
    out: list[Verdict | None] = [None] * n
    # Undecided items, deduplicated: math_verify only sees (gold, pred), so
    # repeated answers to the same problem (many samples per problem) are
    # verified once.
    groups: dict[tuple[str, str, str], list[tuple[int, _Pending]]] = {}
    for i, ((output, gold), bench, t) in enumerate(zip(pairs, benches, cut)):
        pre = prepare(rule, output, gold, bench, t)
        if isinstance(pre, Verdict):
            out[i] = pre
        else:
            groups.setdefault((pre.gold_mv, pre.pred_mv, pre.mode), []).append((i, pre))
    if groups:
        # Input order is kept: neighbouring items (samples of one problem)
        # share strings, and a worker's parse caches profit from that.
        todo = list(groups.values())
        n_workers = max(1, int(workers or os.cpu_count() or 1))
        pool = _get_pool(n_workers)
        n_threads = min(n_workers, len(todo))
        pool.warm(n_threads)

        # Chunks of distinct items, streamed through one worker each (no
        # round trip per item); several chunks per worker keep the load even.
        chunk = max(1, min(_BATCH_CHUNK, len(todo) // (4 * n_threads) or 1))
        chunks = [todo[k:k + chunk] for k in range(0, len(todo), chunk)]
        tmo = _timeout(timeout_s)

        def settle(batch: list[list[tuple[int, _Pending]]]) -> None:
            items = [(g[0][1].gold_mv, g[0][1].pred_mv, g[0][1].mode) for g in batch]
            for group, (status, value) in zip(batch, pool.run_many(items, tmo)):
                for i, pend in group:
                    out[i] = _verdict(pend, status, value)

        if n_threads == 1:
            for c in chunks:
                settle(c)
        else:
            # n_threads feeder threads pull chunks off one shared iterator;
            # each blocks on its own worker process, so the GIL is no limit.
            it = iter(chunks)
            it_lock = threading.Lock()

            def drain() -> None:
                while True:
                    with it_lock:
                        c = next(it, None)
                    if c is None:
                        return
                    settle(c)

            with ThreadPoolExecutor(max_workers=n_threads,
                                    thread_name_prefix="orion-grade") as ex:
                futs = [ex.submit(drain) for _ in range(n_threads)]
                for f in futs:
                    f.result()
    return [v if v is not None else Verdict(False, None, None, "error:Missing") for v in out]

