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

from orion_assets.llm import served

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
LOG_TAIL_CHARS = 3000
PR_SET_PDEATHSIG = 1  # linux/prctl.h


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


def default_command(kind: str, model: str, port: int, *, device: str, lora_rank: int, gpu_memory_utilization: float,
                    sleep_mode: bool, extra: Sequence[str] = ()) -> list[str]:
    """The command that starts ``kind`` for ``model`` on ``port`` (its environment: :func:`server_env`).

    ``transformers serve`` is started without a pinned model, so that it loads whatever a request names by
    path: the base weights, an adapter directory (through PEFT) or a full fine-tune. vLLM serves the base with
    LoRA enabled, adapters loaded at run time and, with ``sleep_mode``, the dev endpoints that put it to sleep
    while SFT runs (``--enable-sleep-mode``)."""
    if kind == "transformers":
        return [sys.executable, "-m", "transformers.cli.transformers", "serve", "--host", HOST, "--port", str(port),
                "--device", device, "--log-level", "warning", *extra]
    if kind == "vllm":
        return ["vllm", "serve", model, "--host", HOST, "--port", str(port), "--enable-lora", "--max-lora-rank",
                str(lora_rank), "--gpu-memory-utilization", str(gpu_memory_utilization),
                *(["--enable-sleep-mode"] if sleep_mode else []), *extra]
    raise ValueError(f"[endpoints.student] serve = {kind!r}: expected 'transformers' or 'vllm'")


def server_env(kind: str, *, sleep_mode: bool) -> dict[str, str]:
    """What ``kind``'s environment needs beside ours, whatever command starts it: offline for transformers;
    for vLLM, runtime LoRA updating and, with ``sleep_mode``, the dev endpoints (``VLLM_SERVER_DEV_MODE``)."""
    if kind == "transformers":
        return {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1"}
    return {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1", **({"VLLM_SERVER_DEV_MODE": "1"} if sleep_mode else {})}


def fill_command(template: Sequence[str], **values: str) -> list[str]:
    """``[endpoints.student] serve_command`` with ``{python}``, ``{host}``, ``{port}`` and ``{model}`` filled."""
    return [part.format(python=sys.executable, host=HOST, **values) for part in template]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the process that started it dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process_group(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM the process group of a server started in its own session, then SIGKILL after ``grace_s``."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace_s)


class ManagedServer:
    """One running server: :meth:`start` waits for ``/health`` and ``/v1/models``, :meth:`stop` ends its whole
    process group (SIGTERM, then SIGKILL after a grace period)."""

    def __init__(self, plan: ServerPlan) -> None:
        self.plan = plan
        self.process: subprocess.Popen | None = None
        self.asleep = False
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self) -> str:
        try:
            return self.plan.log_path.read_bytes()[-LOG_TAIL_CHARS:].decode("utf-8", "replace")
        except OSError:
            return ""

    def start(self) -> ManagedServer:
        plan = self.plan
        plan.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **plan.env, "PYTHONUNBUFFERED": "1",
               "NO_PROXY": f"{HOST},localhost," + os.environ.get("NO_PROXY", "")}
        logger.info("starting the %s server for %s on port %d: %s", plan.kind, plan.model, plan.port,
                    " ".join(plan.command))
        with open(plan.log_path, "ab") as log:
            log.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(plan.command)}\n".encode())
            self.process = subprocess.Popen(list(plan.command), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                            preexec_fn=_die_with_parent)  # noqa: PLW1509 - prctl only
        self.starts += 1
        self.asleep = False
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        plan = self.plan
        deadline = time.monotonic() + plan.timeout_s
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"the {plan.kind} server exited with code {self.process.returncode} before it was ready "
                    f"(command: {' '.join(plan.command)}; log {plan.log_path}):\n{self.log_tail()}")
            with contextlib.suppress(served.ServerError, ValueError):
                if served.is_healthy(plan.root_url) and served.list_models(plan.base_url) is not None:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(
                    f"the {plan.kind} server was not ready after {plan.timeout_s:.0f} s on {plan.root_url} "
                    f"([endpoints.student] serve_timeout_s; command: {' '.join(plan.command)}; log "
                    f"{plan.log_path}):\n{self.log_tail()}")
            time.sleep(0.25)

    def stop(self, grace_s: float = 20.0) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
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
            served.sleep(self.plan.base_url)
            self.asleep = True
            return "asleep"
        self.stop()
        return "stopped"

    def ensure(self) -> ManagedServer:
        """Running and awake: started (again) or woken as needed."""
        if not self.running:
            return self.start()
        if self.asleep:
            logger.info("waking the %s server on port %d", self.plan.kind, self.plan.port)
            served.wake_up(self.plan.base_url)
            self.asleep = False
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
            for other in _SERVERS.values():
                other.release()
            server = _SERVERS[key] = ManagedServer(make_plan())
        return server.ensure()


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
