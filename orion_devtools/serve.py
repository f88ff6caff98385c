"""Start ``transformers serve`` (OpenAI-compatible HTTP server) for tests.

This is a helper module, not a test file.  Use :func:`serve_model` directly::

    with serve_model(built.path) as base_url:
        client = OpenAI(base_url=base_url, api_key="x")
        client.chat.completions.create(model=str(built.path.resolve()), messages=[...], max_tokens=16)

or make a fixture in ``conftest.py`` with :func:`serve_fixture`.

How ``transformers serve`` (transformers 5.x) is driven here
------------------------------------------------------------
Command line (what :func:`serve_model` runs)::

    python -m transformers.cli.transformers serve /abs/path/to/model \\
        --host 127.0.0.1 --port PORT --device cpu --log-level warning

* The positional argument is ``force_model``: the server loads that model (tokenizer via ``AutoProcessor``, weights
  via ``config.architectures[0]``) *before* it starts listening, keeps it loaded (no idle unload), and serves only
  it.  A request's ``model`` field must then be that exact string (we pass the resolved absolute path) or be
  omitted; any other value gets HTTP 400 "Server is pinned to ...".  The OpenAI client always sends ``model``, so
  use ``model=str(Path(model_path).resolve())`` (also yielded as :attr:`ServedModel.model`).
* Without a positional model (``pin=False`` here) the server loads whatever the request's ``model`` names -- an
  existing local directory is used as is, anything else is treated as a Hub id (``org/name[@revision]``) -- on the
  first request (slow), and unloads it after ``--model-timeout`` seconds idle (default 300).
* Health: ``GET /health`` -> ``200 {"status": "ok"}`` (503 only if the continuous-batching worker died).
  ``GET /v1/models`` lists the pinned model.  Endpoints: ``POST /v1/chat/completions``, ``/v1/completions``,
  ``/v1/responses``.
* Request fields: ``max_tokens`` / ``max_completion_tokens`` -> ``max_new_tokens`` (default: the model's
  ``generation_config.max_new_tokens`` raised to at least 1024); ``temperature`` honoured (``0`` -> greedy; any
  other value only matters if the model's generation config has ``do_sample=True``, which the tiny student has);
  ``top_p`` honoured; ``seed`` -> ``torch.manual_seed(seed)`` in the server process before generating (global, so
  reproducible only for sequential requests); ``stop`` -> ``stop_strings``; ``frequency_penalty`` ->
  ``repetition_penalty = 1 + value``.  ``n`` is accepted but **ignored** (logged as unsupported): exactly one
  choice comes back, so ask ``n`` times for ``n`` samples.  Unknown fields get HTTP 422.
* Response: ``choices[0].finish_reason`` is ``"length"`` when ``completion_tokens >= max_tokens``, else
  ``"stop"`` (``"tool_calls"`` if a tool call was parsed); ``usage`` = ``{prompt_tokens, completion_tokens,
  total_tokens}`` counted in model tokens (prompt = chat-templated prompt, completion includes the eos token).
  ``message.content`` is the decode with special tokens skipped.  Generation is sequential (one request at a
  time) unless ``--continuous-batching`` is passed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from orion_assets.serving.managed_server import free_port, stop_process_group

__all__ = ["ServedModel", "ServeStartupError", "free_port", "serve_model", "serve_fixture", "served_model"]


class ServeStartupError(RuntimeError):
    """``transformers serve`` exited or did not get healthy in time; the message ends with its output tail."""


@dataclass(frozen=True)
class ServedModel:
    base_url: str  # e.g. "http://127.0.0.1:41234/v1"
    model: str  # the value to send as the request's `model` field
    path: Path


def _offline_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",  # the CLI entry point otherwise asks PyPI for a newer version
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "127.0.0.1,localhost," + env.get("NO_PROXY", ""),
            "no_proxy": "127.0.0.1,localhost," + env.get("no_proxy", ""),
        }
    )
    if extra:
        env.update(extra)
    return env


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never go through a proxy
    try:
        with opener.open(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def _tail(path: Path, n_chars: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-n_chars:].decode("utf-8", "replace")


@contextlib.contextmanager
def serve_model(
    model_path: Path,
    *,
    port: int | None = None,
    timeout_s: float = 180,
    device: str = "cpu",
    pin: bool = True,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Run ``transformers serve`` for ``model_path`` on 127.0.0.1 and yield its base URL ``http://127.0.0.1:PORT/v1``.

    * ``pin=True`` (default) passes the model as ``force_model``: it is loaded before the server listens, so once
      ``GET /health`` answers 200 the model is ready.  Requests must send ``model=str(Path(model_path).resolve())``
      (anything else -> HTTP 400).  ``pin=False`` starts an empty server that loads the local path / Hub id named
      by each request on first use.
    * Runs offline (``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1``), in its own process group; stdout+stderr go to
      a temporary log file.  On exit the whole process group is terminated and waited for.
    * Raises :class:`ServeStartupError` (with the log tail) if the server exits or is not healthy within
      ``timeout_s``.  An exception raised inside the ``with`` body gets the server's log tail added as a note.

    See the module docstring for what the server does with ``n``, ``seed``, ``temperature``, ``max_tokens`` and
    what it returns as ``finish_reason`` / ``usage``.
    """
    model_path = Path(model_path).resolve()
    if not (model_path / "config.json").is_file():
        raise FileNotFoundError(f"{model_path} is not a model directory (no config.json)")
    host = "127.0.0.1"
    port = port or free_port()
    cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve"]
    if pin:
        cmd.append(str(model_path))
    cmd += ["--host", host, "--port", str(port), "--device", device, "--log-level", "warning", *extra_args]

    log_dir = Path(tempfile.mkdtemp(prefix="transformers-serve-"))
    log_path = log_dir / "server.log"
    base = f"http://{host}:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_offline_env(env),
            cwd=str(log_dir),
            start_new_session=True,  # own process group: we can stop it and its children together
        )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise ServeStartupError(
                    f"transformers serve exited with code {proc.returncode} before getting healthy.\n"
                    f"command: {' '.join(cmd)}\n--- output tail ---\n{_tail(log_path)}"
                )
            try:
                status, body = _http_get(f"{base}/health")
                if status == 200 and json.loads(body).get("status") == "ok":
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise ServeStartupError(
                    f"transformers serve not healthy after {timeout_s:.0f}s on {base}.\n"
                    f"command: {' '.join(cmd)}\n--- output tail ---\n{_tail(log_path)}"
                )
            time.sleep(0.25)
        try:
            yield f"{base}/v1"
        except Exception as exc:  # a failing request (e.g. HTTP 500): show why, from the server's side
            time.sleep(0.5)  # let the server finish writing its traceback
            exc.add_note(f"--- transformers serve output tail ({base}) ---\n{_tail(log_path)}")
            raise
    finally:
        stop_process_group(proc, grace_s=15.0)
        with contextlib.suppress(OSError):
            log_path.unlink()
            log_dir.rmdir()


@contextlib.contextmanager
def served_model(model_path: Path, **kwargs) -> Iterator[ServedModel]:
    """Like :func:`serve_model` but yields a :class:`ServedModel` (base URL + the ``model`` name to send)."""
    path = Path(model_path).resolve()
    with serve_model(path, **kwargs) as base_url:
        yield ServedModel(base_url=base_url, model=str(path), path=path)


def serve_fixture(model_path_fixture: str, *, scope: str = "session", name: str | None = None, **serve_kwargs):
    """Make a pytest fixture serving the model directory returned by fixture ``model_path_fixture``.

    The new fixture yields a :class:`ServedModel`.  In ``conftest.py``::

        from orion_devtools.serve import serve_fixture
        served_tiny_student = serve_fixture("tiny_student_path")   # fixture returning a Path (session-scoped)

    ``model_path_fixture`` may return a ``Path``/``str`` or an object with a ``.path`` (e.g. ``BuiltModel``).
    Its scope must be at least as wide as ``scope``.
    """
    import pytest

    @pytest.fixture(scope=scope, name=name)
    def _served(request):
        value = request.getfixturevalue(model_path_fixture)
        path = getattr(value, "path", value)
        with served_model(Path(path), **serve_kwargs) as served:
            yield served

    return _served
