"""A scripted, OpenAI-compatible chat server on 127.0.0.1 for tests and benchmarks (stdlib only).

``POST /v1/chat/completions`` answers like a chat server. A prompt can carry a script, in its
last message, as ``[[fault:STEP,STEP,...]]``: the n-th request for that prompt (and seed) plays
step n; after the script, requests are answered normally. Steps:

    ok            a normal reply                    429@2    HTTP 429 with ``Retry-After: 2``
    500, 503, 4xx HTTP error with a JSON body       hang     no answer for 120 s
    reset         the connection reset (RST)        nonjson  200, JSON content type, HTML body
    empty         200 with ``choices: []``          reason   a reply with ``reasoning_content``
    length        finish_reason "length"            slow@0.5 a normal reply after 0.5 s
    echo          HTTP 401 whose message quotes the bearer token back (as some APIs do)
    mct           HTTP 400 if the body has ``max_tokens`` (wants ``max_completion_tokens``), else ok

``--latency L`` delays every normal reply by L seconds (the benchmark's fixed-latency mode).
``GET /stats`` returns counts (requests received and answered, per prompt) and arrival times;
``POST /reset`` clears them. Bearer tokens are recorded only as SHA-256 digests.

Run it as ``python -m orion_devtools.fault_server --port 0`` (prints ``PORT <n>``) or with
:class:`FaultServer` (a subprocess, as a context manager).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from typing import Any

from orion_devtools.llm_simulator import _abort, _read_request, _response

SCRIPT = re.compile(r"\[\[fault:([^\]]*)\]\]")


class State:
    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.reset()

    def reset(self) -> None:
        self.total = 0
        self.answered = 0
        self.received: dict[str, int] = defaultdict(int)
        self.answered_by: dict[str, int] = defaultdict(int)
        self.times: dict[str, list[float]] = defaultdict(list)
        self.attempts: dict[str, int] = defaultdict(int)
        self.token_digests: set[str] = set()
        self.started = time.monotonic()

    def stats(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "answered": self.answered,
            "received": dict(self.received),
            "answered_by": dict(self.answered_by),
            "times": {k: [round(t - self.started, 4) for t in v] for k, v in self.times.items()},
            "token_digests": sorted(self.token_digests),
        }


def _completion(request: dict[str, Any], text: str, finish: str = "stop", reasoning: str | None = None) -> bytes:
    prompt_words = sum(len(str(m.get("content", "")).split()) for m in request.get("messages", []))
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return json.dumps(
        {
            "id": "chatcmpl-fault",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", "fault"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": prompt_words,
                "completion_tokens": len(text.split()) + len((reasoning or "").split()),
                "total_tokens": prompt_words + len(text.split()),
            },
        }
    ).encode()


async def _handle(state: State, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            parsed = await _read_request(reader)
            if parsed is None:
                return
            method, path, headers, body = parsed
            if method == "GET" and path == "/stats":
                writer.write(_response(200, json.dumps(state.stats()).encode()))
            elif method == "POST" and path == "/reset":
                state.reset()
                writer.write(_response(200, b"{}"))
            elif method == "POST" and path.endswith("/chat/completions"):
                keep = await _chat(state, headers, body, writer)
                if not keep:
                    return
            else:
                writer.write(_response(404, b'{"error": {"message": "not found"}}'))
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        return
    finally:
        if not writer.transport.is_closing():
            writer.close()


async def _chat(state: State, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter) -> bool:
    request = json.loads(body)
    messages = request.get("messages") or [{}]
    content = str(messages[-1].get("content", ""))
    seed = request.get("seed")
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        state.token_digests.add(hashlib.sha256(auth[7:].encode()).hexdigest())
    state.total += 1
    state.received[content] += 1
    state.times[content].append(time.monotonic())
    attempt_key = f"{content}\0{seed}"
    attempt = state.attempts[attempt_key]
    state.attempts[attempt_key] += 1
    match = SCRIPT.search(content)
    steps = [s.strip() for s in match.group(1).split(",")] if match else []
    step = steps[attempt] if attempt < len(steps) else "ok"
    name, _, arg = step.partition("@")
    reply_text = f"Reply to {content[:60]!r} (seed {seed}). The answer is \\boxed{{42}}."

    if name == "hang":
        await asyncio.sleep(120)
        return False
    if name == "reset":
        _abort(writer)
        return False
    if name.isdigit():
        status = int(name)
        extra = {"Retry-After": arg} if arg else None
        payload = {"error": {"message": f"scripted {status}", "type": "fault", "code": status}}
        writer.write(_response(status, json.dumps(payload).encode(), extra=extra))
        return True
    if name == "mct" and "max_tokens" in request:
        message = "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
        writer.write(_response(400, json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()))
        return True
    if name == "echo":
        payload = {"error": {"message": f"Incorrect API key provided: {auth[7:]}", "type": "invalid_request_error"}}
        writer.write(_response(401, json.dumps(payload).encode()))
        return True
    if name == "nonjson":
        writer.write(_response(200, b"<html>502 Bad Gateway (but said 200)</html>"))
        return True
    if name == "empty":
        writer.write(_response(200, json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode()))
        return True
    delay = float(arg) if name == "slow" and arg else state.latency
    if delay > 0:
        await asyncio.sleep(delay)
    if name == "reason":
        payload = _completion(request, "So the answer is \\boxed{42}.", reasoning="Let me think. 6*7=42. Wait, check: yes.")
    elif name == "length":
        payload = _completion(request, reply_text[:20], finish="length")
    else:
        payload = _completion(request, reply_text)
    state.answered += 1
    state.answered_by[content] += 1
    writer.write(_response(200, payload))
    return True


async def serve(port: int, latency: float, ready: Any = None) -> None:
    state = State(latency)
    server = await asyncio.start_server(lambda r, w: _handle(state, r, w), "127.0.0.1", port, backlog=1024)
    actual = server.sockets[0].getsockname()[1]
    if ready is not None:
        ready(actual)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args(argv)

    def ready(port: int) -> None:
        print(f"PORT {port}", flush=True)

    try:
        asyncio.run(serve(args.port, args.latency, ready))
    except KeyboardInterrupt:
        pass


class FaultServer:
    """The server in a subprocess: ``with FaultServer(latency=0.1) as s: s.base_url, s.stats()``."""

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> FaultServer:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orion_devtools.fault_server", "--port", "0", "--latency", str(self.latency)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"fault server did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _call(self, method: str, path: str) -> dict[str, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/stats")

    def reset(self) -> None:
        self._call("POST", "/reset")


if __name__ == "__main__":
    main()
