"""The student's inference server, started and stopped by the pipeline (``[endpoints.student] serve``).

One server per student and process: started on first use (exposure), kept for reflection, put to sleep or
stopped while SFT holds the accelerator, woken or started again for evaluation, and stopped on every exit path
(normal exit, an exception, Ctrl-C, SIGTERM through ``atexit``; SIGKILL of the parent through the kernel's
parent-death signal). Its log is ``$ORION_DATA_DIR/logs/serve-<student>-<kind>-<port>.log``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orion_assets.llm.endpoint import ServerDiedError, register_managed_servers
from orion_assets.progress import TERMINAL
from orion_assets.serving import vllm_client, vllm_host

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
LOG_TAIL_CHARS = 3000
PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_INTERVAL_S = 0.5
UNHEALTHY_GRACE_S = 60.0  # a live server that stops answering /health this long is killed (and restarted)


class ServerStartError(RuntimeError):
    """The managed server exited or did not get ready in time; the message ends with its log's last lines."""


@dataclass(frozen=True)
class ServerPlan:
    """How to start one server: ``command`` (every placeholder filled), its environment additions and log."""

    kind: str  # "transformers" | "vllm"
    model: str  # the weights it serves (a local directory): the base model, or a full fine-tune's
    port: int
    command: tuple[str, ...]
    log_path: Path
    timeout_s: float
    env: Mapping[str, str] = field(default_factory=dict)
    sleep_mode: bool = False  # vLLM: release the GPU with POST /sleep rather than a stop
    max_restarts: int = 0  # started again at most this many times when it dies unbidden

    @property
    def root_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    @property
    def model_name(self) -> str:
        """The name the server knows its base weights by (both servers: the path they were given)."""
        return self.model


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def default_command(kind: str, model: str, port: int, *, device: str, lora_rank: int, vllm_python: str | None = None,
                    host_args: Sequence[str] = (), extra: Sequence[str] = ()) -> list[str]:
    """The command that starts ``kind`` for ``model`` on ``port`` (its environment: :func:`server_env`).

    ``transformers serve`` is started without a pinned model, so that it loads whatever a request names by
    path: the base weights, an adapter directory (through PEFT) or a full fine-tune. vLLM serves the base with
    LoRA enabled and adapters loaded at run time, from ``vllm_python``'s environment through its OpenAI server
    module (the CPU build has no working ``vllm`` script), with ``host_args`` for the host it runs on
    (:func:`orion_assets.serving.vllm_host.host_flags`)."""
    if kind == "transformers":
        return [sys.executable, "-m", "transformers.cli.transformers", "serve", "--host", HOST, "--port", str(port),
                "--device", device, "--log-level", "warning", *extra]
    if kind == "vllm":
        return [vllm_python or sys.executable, "-m", vllm_host.ENTRY_POINT, "--model", model, "--host", HOST,
                "--port", str(port), "--enable-lora", "--max-lora-rank", str(lora_rank), *host_args, *extra]
    raise ValueError(f"[endpoints.student] serve = {kind!r}: expected 'transformers' or 'vllm'")


def server_env(kind: str, *, sleep_mode: bool, host_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """What ``kind``'s environment needs beside ours, whatever command starts it: offline for transformers;
    for vLLM, runtime LoRA updating, with ``sleep_mode`` the dev endpoints (``VLLM_SERVER_DEV_MODE``), and
    the host's own settings."""
    if kind == "transformers":
        return {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1"}
    return {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1", "HF_HUB_OFFLINE": "1",
            **({"VLLM_SERVER_DEV_MODE": "1"} if sleep_mode else {}), **(host_env or {})}


def fill_command(template: Sequence[str], **values: str) -> list[str]:
    """``[endpoints.student] serve_command`` with ``{python}``, ``{host}``, ``{port}`` and ``{model}`` filled."""
    return [part.format(python=sys.executable, host=HOST, **values) for part in template]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the process that started it dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process_group(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM the process group of a server started in its own session, then SIGKILL after ``grace_s``; a
    leader that already exited still has its group's leftovers (vLLM's engine and workers) killed."""
    if process.poll() is not None:
        kill_group(process.pid)
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        kill_group(process.pid)
        process.wait(timeout=grace_s)
    kill_group(process.pid)


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class ManagedServer:
    """One running server: :meth:`start` waits for ``/health`` and ``/v1/models``, :meth:`stop` ends its whole
    process group (SIGTERM, then SIGKILL after a grace period). A watchdog thread starts it again on its port
    when it dies unbidden, at most ``plan.max_restarts`` times; :meth:`wait_serving` is how a client that lost
    its connection waits for that, and learns when the watchdog gave up (:class:`ServerDiedError`)."""

    def __init__(self, plan: ServerPlan) -> None:
        self.plan = plan
        self.process: subprocess.Popen | None = None
        self.asleep = False
        self.starts = 0
        self.restarts = 0
        self.failure: ServerDiedError | None = None
        self.adapters: dict[str, str] = {}  # loaded at run time (vLLM): name -> path, loaded again after a restart
        self._lock = threading.RLock()
        self._serving = threading.Event()
        self._watchdog: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self) -> str:
        try:
            return self.plan.log_path.read_bytes()[-LOG_TAIL_CHARS:].decode("utf-8", "replace")
        except OSError:
            return ""

    def _spawn(self) -> subprocess.Popen:
        plan = self.plan
        plan.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **plan.env, "PYTHONUNBUFFERED": "1",
               "NO_PROXY": f"{HOST},localhost," + os.environ.get("NO_PROXY", "")}
        logger.info("starting the %s server for %s on port %d: %s", plan.kind, plan.model, plan.port,
                    " ".join(plan.command))
        with open(plan.log_path, "ab") as log:
            log.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(plan.command)}\n".encode())
            process = subprocess.Popen(list(plan.command), stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                       preexec_fn=_die_with_parent)  # noqa: PLW1509 - prctl only
        self.starts += 1
        return process

    def start(self) -> ManagedServer:
        with self._lock:
            self.failure = None
            self.process = process = self._spawn()
            self.asleep = False
        self._wait_ready(process)
        self._serving.set()
        if self._watchdog is None or not self._watchdog.is_alive():
            self._watchdog = threading.Thread(target=self._watch, name=f"orion-serve-{self.plan.port}", daemon=True)
            self._watchdog.start()
        return self

    def _wait_ready(self, process: subprocess.Popen) -> None:
        plan = self.plan
        deadline = time.monotonic() + plan.timeout_s
        while True:
            if process.poll() is not None:
                raise ServerStartError(
                    f"the {plan.kind} server exited with code {process.returncode} before it was ready "
                    f"(command: {' '.join(plan.command)}; log {plan.log_path}):\n{self.log_tail()}")
            with contextlib.suppress(vllm_client.ServerError, ValueError):
                if vllm_client.is_healthy(plan.root_url) and vllm_client.list_models(plan.base_url) is not None:
                    return
            if time.monotonic() > deadline:
                with self._lock:
                    if self.process is process:
                        self.process = None
                stop_process_group(process)
                raise ServerStartError(
                    f"the {plan.kind} server was not ready after {plan.timeout_s:.0f} s on {plan.root_url} "
                    f"([endpoints.student] serve_timeout_s; command: {' '.join(plan.command)}; log "
                    f"{plan.log_path}):\n{self.log_tail()}")
            time.sleep(0.25)

    def _watch(self) -> None:
        """Start the server again when its process exits while it is meant to run (not stopped by us)."""
        while True:
            time.sleep(WATCH_INTERVAL_S)
            with self._lock:
                process = self.process
                if process is None:  # stopped on purpose
                    return
                if process.poll() is None:
                    continue
                self._serving.clear()
                code = process.returncode
                kill_group(process.pid)  # vLLM's engine and workers, if the API server alone went
                if self.restarts >= self.plan.max_restarts:
                    self.process = None
                    self.failure = ServerDiedError(
                        f"the {self.plan.kind} server on port {self.plan.port} died (exit code {code}) and was "
                        f"restarted {self.restarts} time(s), the most [endpoints.student] serve_restarts allows "
                        f"(log {self.plan.log_path}):\n{self.log_tail()}")
                    logger.error("%s", self.failure, extra={TERMINAL: True})
                    self._serving.set()
                    return
                self.restarts += 1
                logger.warning("the %s server on port %d died (exit code %s): starting it again (restart %d of %d); "
                               "the calls it had not answered are sent again", self.plan.kind, self.plan.port, code,
                               self.restarts, self.plan.max_restarts, extra={TERMINAL: True})
                self.process = process = self._spawn()
                self.asleep = False
            try:
                self._wait_ready(process)
                for name, path in dict(self.adapters).items():  # a new engine has none of them
                    logger.info("loading adapter %s from %s again into the %s server on port %d", name, path,
                                self.plan.kind, self.plan.port)
                    vllm_client.load_adapter(self.plan.base_url, name, path)
            except (ServerStartError, vllm_client.ServerError) as exc:
                with self._lock:
                    if self.process is process:  # not stopped meanwhile on purpose
                        self.process = None
                        self.failure = ServerDiedError(f"the {self.plan.kind} server could not be started again: {exc}")
                        self._serving.set()
                return
            self._serving.set()

    def wait_serving(self) -> bool:
        """For a client whose call failed: wait while the server is being started again. True when it waited
        (the call is worth sending again at once); raises :class:`ServerDiedError` once the watchdog gave up."""
        waited, unhealthy_since = False, None
        deadline = time.monotonic() + self.plan.timeout_s * (self.plan.max_restarts + 1)
        while time.monotonic() < deadline:
            if self.failure is not None:
                raise self.failure
            process = self.process
            if process is None:  # stopped or released on purpose: nothing to wait for
                return waited
            if self._serving.is_set() and process.poll() is None:
                if vllm_client.is_healthy(self.plan.root_url):
                    return waited
                # Alive but not answering: vLLM's API server shutting down after its engine died, or hung.
                unhealthy_since = unhealthy_since or time.monotonic()
                if time.monotonic() - unhealthy_since > UNHEALTHY_GRACE_S:
                    logger.warning("the %s server on port %d has not answered /health for %.0f s: killing it",
                                   self.plan.kind, self.plan.port, UNHEALTHY_GRACE_S, extra={TERMINAL: True})
                    kill_group(process.pid)
            waited = True
            self._serving.wait(WATCH_INTERVAL_S)
            if self._serving.is_set():
                time.sleep(WATCH_INTERVAL_S)  # dead or dying but not yet seen by the watchdog
        return waited

    def load_adapter(self, name: str, path: str) -> None:
        """Serve the LoRA adapter at ``path`` as ``name`` (vLLM's runtime loading), again after any restart."""
        vllm_client.load_adapter(self.plan.base_url, name, path)
        self.adapters[name] = path

    def stop(self, grace_s: float = 20.0) -> None:
        with self._lock:
            process, self.process = self.process, None
            self.adapters.clear()
        if process is not None:
            if process.poll() is None:
                logger.info("stopping the %s server on port %d", self.plan.kind, self.plan.port)
            stop_process_group(process, grace_s)

    def release(self) -> str:
        """Hand the accelerator over (before SFT): vLLM with sleep mode sleeps, anything else stops."""
        if not self.running:
            return "not running"
        if self.asleep:
            return "asleep"
        if self.plan.sleep_mode:
            logger.info("putting the %s server on port %d to sleep", self.plan.kind, self.plan.port)
            vllm_client.sleep(self.plan.base_url)
            self.asleep = True
            return "asleep"
        self.stop()
        return "stopped"

    def ensure(self) -> ManagedServer:
        """Running, awake and answering: started, woken, or waited for while its watchdog starts it again (it may
        have died after the last step's calls were answered, with no call in flight to notice)."""
        if self.process is None:  # never started, stopped or released on purpose, or given up on
            return self.start()
        if self.asleep:
            logger.info("waking the %s server on port %d", self.plan.kind, self.plan.port)
            vllm_client.wake_up(self.plan.base_url)
            self.asleep = False
            return self
        self.wait_serving()
        return self


_LOCK = threading.Lock()
_SERVERS: dict[str, ManagedServer] = {}
_HOOKED: list[bool] = []


def server_for(key: str, make_plan) -> ManagedServer:
    """The process's server under ``key`` (one per student and weights), running and awake; ``make_plan()``
    plans it the first time (or when the weights it serves changed). Any other server of the process is
    released first: one accelerator, one server at a time."""
    with _LOCK:
        server = _SERVERS.get(key)
        if server is None:
            if not _SERVERS and not _HOOKED:
                _HOOKED.append(True)
                _install_exit_hooks()
                register_managed_servers(managed_at)  # an openai endpoint at a server's URL waits for its restarts
            for other in _SERVERS.values():
                other.release()
            server = _SERVERS[key] = ManagedServer(make_plan())
        return server.ensure()


def managed_at(base_url: str) -> ManagedServer | None:
    """The process's managed server that answers at ``base_url`` (None: a server of the user's own)."""
    with _LOCK:
        return next((s for s in _SERVERS.values() if s.plan.base_url == base_url.rstrip("/")), None)


def release_all() -> dict[str, str]:
    """Release every server of the process (before SFT on the same accelerator): what each did."""
    with _LOCK:
        return {key: server.release() for key, server in _SERVERS.items()}


def stop_all() -> None:
    with _LOCK:
        for server in _SERVERS.values():
            server.stop()
        _SERVERS.clear()


def _stop_on_sigterm(signum, frame) -> None:  # noqa: ARG001
    stop_all()
    raise SystemExit(128 + signum)


def _install_exit_hooks() -> None:
    """Once, with the first server: stop every server at exit, and turn a default SIGTERM into an exit."""
    atexit.register(stop_all)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
