"""A scripted OpenAI-compatible student: fixed right or wrong answers per problem and prompt kind.

A real model can't be told to be wrong on problem A and right on problem B, so this server
plays the student for the tests that must drive every branch of exposure and reflection.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Script:
    gold: str
    solve_right: bool | str  # True, False, or "alternate" (right on odd seeds)
    refine_right: bool


def _kind(prompt: str) -> str:
    if "Here is your earlier attempt" in prompt or "A student attempted" in prompt:
        return "reflect_with_error"
    if "Rewrite this solution in your own words" in prompt:
        return "reflect_without_error"
    return "solve"


def _answer(script: Script, kind: str, seed: int) -> str:
    wrong = f"{script.gold}1"  # never equal to the gold
    if kind == "solve":
        right = script.solve_right if script.solve_right != "alternate" else seed % 2 == 1
        return f"Let me add the numbers step by step.\nSo the result is \\boxed{{{script.gold if right else wrong}}}."
    value = script.gold if script.refine_right else wrong
    return (
        "REFLECTION: my attempt added the wrong quantities in the second step.\n"
        f"SOLUTION: First compute each part. Then combine them carefully.\nThe answer is \\boxed{{{value}}}."
    )


@contextmanager
def scripted_student(scripts: dict[str, Script]) -> Iterator[tuple[str, Counter]]:
    """Serve on a free loopback port; yields (base_url, request counts by prompt kind)."""
    counts: Counter = Counter()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][-1]["content"]
            kind = _kind(prompt)
            counts[kind] += 1
            problem = next((p for p in scripts if p in prompt), None)
            text = _answer(scripts[problem], kind, int(body.get("seed") or 0)) if problem else "I don't know."
            reply = {
                "id": "scripted", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()), "total_tokens": 0},
            }
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", counts
    finally:
        server.shutdown()
        server.server_close()
