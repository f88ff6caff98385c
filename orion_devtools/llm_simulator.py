"""A realistic OpenAI-compatible LLM server for tests and benchmarks, over real HTTP (stdlib only).

It plays the servers the pipeline really talks to, with their real response shapes and refusals:
vLLM serving a student with LoRA adapters (persona ``student``; also the ``judge``), the DeepSeek
API serving ``deepseek-reasoner`` (persona ``teacher_reasoning_content``) and an open-weight
R1-distill model on vLLM without a reasoning parser (persona ``teacher_think``). What it answers
is decided per request by hashes, so runs are repeatable; how often a student is right, loops,
or writes its reflection in which shape is set in :class:`SimConfig`.

    from orion_devtools.llm_simulator import SimConfig, Simulator

    with Simulator(SimConfig(persona="student", adapters={"orion": "rev-1"}), port=0) as sim:
        sim.base_url          # "http://127.0.0.1:<port>/v1"
        sim.requests()        # the request log
        sim.restart(adapters={"orion": "rev-2"})   # same port, changed config fields

or ``python -m orion_devtools.llm_simulator --config sim.json --port 0`` (prints ``PORT <n>``); as
vLLM does, ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1`` in its environment turns on ``runtime_lora_updating``
and ``--enable-sleep-mode`` with ``VLLM_SERVER_DEV_MODE=1`` turns on ``sleep_mode``.

Routes: ``GET /v1/models``, ``POST /v1/chat/completions``, ``GET /health``, ``GET /log`` (the
request log), ``POST /log/reset``. HTTP/1.1 keep-alive (the openai SDK's pooled connections). For the
vLLM personas, with ``runtime_lora_updating``: ``POST /v1/load_lora_adapter``, ``POST
/v1/unload_lora_adapter``; with ``sleep_mode``: ``POST /sleep``, ``POST /wake_up``, ``GET /is_sleeping``
(vLLM's bodies, statuses and error texts: :mod:`orion_devtools.vllm_runtime`). A chat request that
arrives while asleep is held until ``/wake_up`` (its log entry has ``held_while_sleeping``).

The request log has one dict per chat request, in answer order: ``model``, ``kind`` (solve |
reflect_with_error | reflect_without_error | judge), ``prompt_tokens`` (the true count),
``max_tokens``, ``status`` (0 for a connection reset), ``finish_reason``, ``completion_tokens``,
``t`` / ``t_done`` (epoch seconds at arrival / answer), ``seed``, ``conn`` (the TCP connection's
number), and when known ``problem_known``, ``outcome`` (correct | wrong | loop | no_answer | copy |
unknown | judged: what the reply was made to be), ``format`` (the answer or reflection format),
``reasoning_tokens``, ``fault``, ``error``, and with ``log_prompts`` the ``prompt`` (the text of
the last message). Faults (``fault_rate``): HTTP 500, HTTP 429 with
``Retry-After: <retry_after_s>``, or a connection reset, drawn per (seed, request body, n-th
arrival of that body), so a retry of a failed request has a fresh chance.

Every random choice is a hash of (seed, served model name, adapter revision, prompt kind, the
problem -- or the prompt for reflection, the judged solution for the judge --, the request's
``seed``): the same request gets the same reply, and restarting with a new revision for one
adapter changes only that adapter's replies. The first draw of each reply decides right or wrong,
so raising a rate only turns wrong replies right.

What is reproduced, and where it was checked
--------------------------------------------
vLLM (personas ``student``, ``teacher_think``, ``judge``): vLLM 0.32.0, checked against its source and
against the real server (``orion_assets_tests/e2e/test_vllm_parity.py``); the refusals, request checks and
the chat budget are in :mod:`orion_devtools.vllm_runtime`, with the source file of each.

* Error envelope: ``{"error": {"message", "type", "param", "code"}}``, HTTP status = ``code``
  (``ErrorResponse``/``ErrorInfo``, ``vllm/entrypoints/serve/engine/protocol.py``; v0.10.0 and older
  sent a flat ``{"object": "error", ...}``). Validation errors end with ``" (parameter=<p>, value=<v>)"``
  and set ``param`` (``VLLMValidationError``, ``vllm/exceptions.py``).
* Context window (``max_model_len``): a prompt over it is a 400 ``This model's maximum context length
  is L tokens. However, your prompt contains at least L+1 input tokens, which exceeds this limit even
  without any output tokens. ...``; otherwise ``max_tokens`` is clamped to what is left (earlier releases,
  from v0.18's source, refused prompt + max_tokens > L instead; all their wordings share the prefix ``This
  model's maximum context length is L tokens``). The pre-tokenization *character* check is not modelled.
* Unknown model: HTTP 404, ``The model `x` does not exist.``, ``NotFoundError``, ``param`` ``model``
  (vLLM 0.32 appends ``Valid aliases: ...``; see :mod:`orion_devtools.vllm_runtime`); no ``model``
  field means the base model.
* ``/v1/models`` (``show_available_models``, ``vllm/entrypoints/openai/models/serving.py``): the base
  model with ``root`` = its path, ``parent`` null, ``max_model_len``; then one card per LoRA adapter
  with ``root`` = the adapter's path (here: its revision string for ``adapters``), ``parent`` = the base
  model and ``max_model_len`` null; ``object`` "model", ``owned_by`` "vllm", ``permission`` one item.
* Replies: the keys of 0.32's ``ChatCompletionResponse`` (``message.reasoning`` null, no ``tool_calls``
  when there are none, ``routed_experts``, ``system_fingerprint`` ``vllm-0.32.0-<hash>``), ``finish_reason``
  "stop"/"length", ``stop_reason`` null, ``usage`` {prompt_tokens, total_tokens, completion_tokens,
  prompt_tokens_details: null, completion_tokens_details: null}. A reply cut at ``max_tokens`` has
  ``completion_tokens == max_tokens`` and ``finish_reason`` "length". Without ``max_tokens`` the budget is
  ``max_model_len - prompt_tokens`` (or 4096 with no limit). ``max_completion_tokens`` wins over
  ``max_tokens``; ``seed``, ``temperature``, ``top_p`` are accepted and only ``seed`` matters (it selects
  the sample, as on a real server).
* Its command line: ``--model``/the positional model, ``--max-model-len``, ``--max-lora-rank``,
  ``--tokenizer`` and ``--enable-sleep-mode`` as vLLM reads them (its other flags are accepted and
  ignored; without ``--tokenizer`` tokens are estimated); ``--device cpu`` (the simulator's own: vLLM
  finds its platform) makes ``--enable-sleep-mode`` stop start-up as vLLM's CPU build does.

DeepSeek API (persona ``teacher_reasoning_content``), checked against api-docs.deepseek.com
(guides/reasoning_model, the current Chinese page) and bodies quoted in public issues:

* ``message.reasoning_content`` (the thinking) beside ``message.content`` (the answer);
  ``max_tokens`` counts both (default 32K, at most 64K); cut while thinking, ``content`` is ""
  with ``finish_reason`` "length". ``usage`` adds ``completion_tokens_details.reasoning_tokens``,
  ``prompt_tokens_details.cached_tokens``, ``prompt_cache_hit_tokens``/``prompt_cache_miss_tokens``.
* Errors: ``{"error": {"message", "type": "invalid_request_error", "param": null, "code":
  "invalid_request_error"}}``. Unknown model: HTTP 400 ``Model Not Exist``. Context overflow:
  HTTP 400 with the classic ``... However, you requested N+M tokens (N in the messages, M in the
  completion). Please reduce the length of the messages or completion.`` A ``reasoning_content``
  in an input message: HTTP 400 (DeepSeek's message). ``max_tokens`` over 65536: HTTP 400.
* ``/v1/models``: ``{"id", "object": "model", "owned_by": "deepseek"}``.

Persona ``teacher_think`` (R1-distill on vLLM without ``--reasoning-parser``): the thinking is in
``content`` as ``<think>\\n...\\n</think>\\n\\n<answer>``; cut mid-think leaves ``<think>`` unclosed.

Prompts are recognised by the marker phrases of ``orion_assets/prompts.py`` (solve, reflection
with and without an error, judge); the problem is found in the prompt and matched to its gold
answer (default: every problem shipped in ``orion_assets/data``, read by the project's own
loaders and cached in the temp folder). Tokens: with ``tokenizer`` a local transformers tokenizer
directory (``tokenizer.json`` loaded as ``PreTrainedTokenizerFast``, else ``AutoTokenizer``; the
prompt is its chat template with the generation prompt, as vLLM renders it); else
``ceil(1.3 * words)`` per text, +4 per message, +3 (the generation prompt).

Not modelled: streaming (``stream: true`` is refused with 400; vLLM streams), ``n > 1``, logprobs, tools,
the EOS token in ``completion_tokens``, vLLM's generation-config defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import importlib.util
import json
import os
import random
import re
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orion_devtools import vllm_runtime
from orion_devtools.vllm_runtime import HttpError, VllmRuntime

PERSONAS = ("student", "teacher_reasoning_content", "teacher_think", "judge")
KINDS = ("solve", "reflect_with_error", "reflect_without_error", "judge")
REFLECTION_FORMATS = (
    "plain", "markdown", "bold", "numbered", "lower", "refined", "think",
    "notes_inner_solution", "solution_inner_solution",
)  # fmt: skip
DEEPSEEK_MAX_TOKENS = 65536
DEEPSEEK_DEFAULT_MAX_TOKENS = 32768
VLLM_DEFAULT_MAX_TOKENS = 4096
REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_VERSION = "1"


# -- configuration -------------------------------------------------------------------------------


@dataclass
class SimConfig:
    """What the server plays; every field is a JSON key of ``--config``."""

    persona: str = "student"
    model: str = "Qwen/Qwen2.5-1.5B-Instruct"
    adapters: dict[str, str] = field(default_factory=dict)  # served LoRA name -> revision
    max_model_len: int | None = 4096
    tokenizer: str | None = None
    correct_rate: float = 0.5
    correct_rate_by_model: dict[str, float] = field(default_factory=dict)
    refine_correct_rate: float = 0.6
    loop_rate: float = 0.15
    # Of the looping attempts, the share that first box the right answer and then keep
    # re-checking until cut (a box seen before the cut must not make the attempt correct).
    loop_after_answer_rate: float = 0.0
    copy_rate: float = 0.0
    unsplittable_rate: float = 0.05
    reasoning_words: int = 600
    teacher_correct_rate: float = 0.9
    latency_s: float = 0.0
    latency_per_token_s: float = 0.0
    fault_rate: float = 0.0
    seed: int = 0
    problems_file: str | None = None
    retry_after_s: int = 1  # the Retry-After of a 429 fault
    log_prompts: bool = False  # the request log keeps each request's last message as ``prompt``
    # vLLM's runtime endpoints (orion_devtools/vllm_runtime.py), off as on a default vLLM server:
    runtime_lora_updating: bool = False  # VLLM_ALLOW_RUNTIME_LORA_UPDATING: /v1/load_lora_adapter, /v1/unload_...
    sleep_mode: bool = False  # --enable-sleep-mode with VLLM_SERVER_DEV_MODE: /sleep, /wake_up, /is_sleeping
    max_lora_rank: int | None = None  # --max-lora-rank: a larger adapter is refused (None: any rank)
    device: str = "cuda"  # the platform vLLM would find: "cpu" refuses sleep mode, as vLLM's CPU build does
    print_log: bool = False  # each request's log entry also as a JSON line on stdout (a managed server's log file)

    def __post_init__(self) -> None:
        if self.persona not in PERSONAS:
            raise ValueError(f"persona must be one of {PERSONAS}, got {self.persona!r}")
        rates = ("correct_rate", "refine_correct_rate", "loop_rate", "loop_after_answer_rate", "copy_rate",
                 "unsplittable_rate", "teacher_correct_rate", "fault_rate")  # fmt: skip
        for name in rates:
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        for name, rate in self.correct_rate_by_model.items():
            if not 0.0 <= float(rate) <= 1.0:
                raise ValueError(f"correct_rate_by_model[{name!r}] must be in [0, 1], got {rate!r}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1 or None, got {self.max_model_len}")
        if self.model in self.adapters:
            raise ValueError(f"adapter name {self.model!r} is the base model's name")
        if self.device not in ("cuda", "cpu"):
            raise ValueError(f"device must be 'cuda' or 'cpu', got {self.device!r}")
        if self.sleep_mode and self.device == "cpu":
            raise ValueError(vllm_runtime.SLEEP_REFUSAL)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SimConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SimConfig key(s) {unknown} (known: {sorted(known)})")
        return cls(**data)


# -- token counting ------------------------------------------------------------------------------

_WORD = re.compile(r"\S+")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return "" if content is None else str(content)


class TokenCounter:
    """Counts and cuts text in tokens: a real tokenizer, or ``ceil(1.3 * words)``."""

    PER_MESSAGE = 4  # <|im_start|>role\n ... <|im_end|>\n
    GENERATION_PROMPT = 3  # <|im_start|>assistant\n

    def __init__(self, tokenizer_dir: str | None = None) -> None:
        self.tokenizer = None
        if tokenizer_dir:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            if (Path(tokenizer_dir) / "tokenizer.json").is_file():
                # The fast tokenizer is tokenizer.json whatever class AutoTokenizer would pick, and
                # loading it directly skips AutoConfig's import of torch (seconds per start).
                from transformers import PreTrainedTokenizerFast

                self.tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
            else:
                from transformers import AutoTokenizer

                self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    @staticmethod
    def _estimate(words: int) -> int:
        return (words * 13 + 9) // 10

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False))
        return self._estimate(len(_WORD.findall(text)))

    def prompt(self, messages: list[dict[str, Any]]) -> int:
        if self.tokenizer is not None:
            chat = [{"role": str(m.get("role", "user")), "content": _content_text(m.get("content"))} for m in messages]
            try:
                ids = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
                if not isinstance(ids, list):  # BatchEncoding / dict
                    ids = ids["input_ids"]
                if ids and isinstance(ids[0], list):
                    ids = ids[0]
                return len(ids)
            except Exception:  # noqa: BLE001 - a tokenizer without a chat template
                pass
        body = sum(self.count(_content_text(m.get("content"))) + self.PER_MESSAGE for m in messages)
        return body + self.GENERATION_PROMPT

    def cut(self, text: str, n: int) -> tuple[str, bool]:
        """The first ``n`` tokens of ``text`` and whether anything was cut."""
        if n <= 0:
            return "", bool(text)
        if self.tokenizer is not None:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            if len(ids) <= n:
                return text, False
            return self.tokenizer.decode(ids[:n], skip_special_tokens=True), True
        words = list(_WORD.finditer(text))
        if self._estimate(len(words)) <= n:
            return text, False
        keep = n * 10 // 13
        while keep > 0 and self._estimate(keep) > n:
            keep -= 1
        return (text[: words[keep - 1].end()] if keep else ""), True


# -- problems ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    text: str
    gold: str
    source: str


def _norm(text: str) -> str:
    return " ".join(text.split())


def _package_dir() -> Path:
    spec = importlib.util.find_spec("orion_assets")  # no import: polars is slow to load
    if spec is None or spec.origin is None:
        raise RuntimeError("orion_assets is not importable")
    return Path(spec.origin).resolve().parent


def _shipped_problems() -> list[Problem]:
    """Every benchmark and training problem shipped in the package, read by the project's own
    loaders (gold answers normalised by ``normalize_gold``); cached in the temp folder, keyed on
    the data files and the loader sources."""
    pkg = _package_dir()
    stamp = hashlib.sha256(CACHE_VERSION.encode())
    loaders = [pkg / "method" / "problems.py", pkg / "records.py", pkg / "profiles" / "schema.py"]
    watched = sorted((pkg / "data").rglob("*")) + sorted((pkg / "method" / "grading").glob("*.py")) + loaders
    for path in watched:
        if path.is_file():
            st = path.stat()
            stamp.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    cache = Path(tempfile.gettempdir()) / "orion-llm-simulator" / f"problems-{stamp.hexdigest()[:20]}.json"
    if cache.is_file():
        try:
            return [Problem(*row) for row in json.loads(cache.read_text(encoding="utf-8"))]
        except (ValueError, TypeError):
            pass
    from orion_assets.method.problems import (
        BENCHMARK_SPECS,
        load_benchmark,
        load_train_source,
    )
    from orion_assets.profiles.schema import DEFAULT_TRAIN_SOURCES

    problems: list[Problem] = []
    for name in BENCHMARK_SPECS:
        frame, _ = load_benchmark(name)
        problems += [Problem(p, g, name) for p, g in zip(frame["problem"], frame["gold_answer"], strict=True)]
    for source in DEFAULT_TRAIN_SOURCES:
        frame, _ = load_train_source(source)
        problems += [Problem(p, g, source.name) for p, g in zip(frame["problem"], frame["gold_answer"], strict=True)]
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps([[p.text, p.gold, p.source] for p in problems]), encoding="utf-8")
    os.replace(tmp, cache)
    for stale in cache.parent.glob("problems-*.json"):
        if stale != cache:
            stale.unlink(missing_ok=True)
    return problems


def _file_problems(path: str) -> list[Problem]:
    from orion_assets.method.grading import normalize_gold

    problems = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            text = row.get("problem", row.get("question"))
            gold = row.get("answer", row.get("gold_answer"))
            if text is None or gold is None:
                raise ValueError(f"{path}: line {number}: needs 'problem' and 'answer'")
            problems.append(Problem(str(text).strip(), normalize_gold(gold), Path(path).stem))
    return problems


# Section headers of the pipeline's templates (orion_assets/prompts.py) and some looser variants.
_TEACHER_HEADERS = ("Here is a correct solution by a stronger solver:\n", "Your solution:\n", "Reference solution:\n")
_ATTEMPT_HEADERS = (
    "Here is your earlier attempt, which reached a wrong answer:\n",
    "A student attempted the problem and reached a wrong answer:\n",
    "Here is your earlier attempt:\n",
)
_NEXT_SECTIONS = (
    "\n\nHere is a correct solution", "\n\nYour solution:", "\n\nReference solution:", "\n\nHere is your earlier attempt",
    "\n\nA student attempted", "\n\nFind the step where", "\n\nRewrite this solution", "\n\nRewrite your solution",
    "\n\nReply in two parts", "\n\nSolution:\n", "\n\nRate the coherence",
)  # fmt: skip


def _section(prompt: str, headers: tuple[str, ...]) -> str | None:
    """The text after the first of ``headers`` up to the next known section (or the end)."""
    for header in headers:
        start = prompt.find(header)
        if start < 0:
            continue
        start += len(header)
        ends = [i for i in (prompt.find(marker, start) for marker in _NEXT_SECTIONS) if i >= 0]
        return prompt[start : min(ends) if ends else len(prompt)].strip()
    return None


def detect_kind(prompt: str) -> str:
    """solve | reflect_with_error | reflect_without_error | judge, from the templates' marker phrases."""
    if "Rate the coherence" in prompt or '"logical_consistency"' in prompt:
        return "judge"
    if "Here is your earlier attempt" in prompt or "A student attempted" in prompt:
        return "reflect_with_error"
    if "Rewrite this solution in your own words" in prompt:
        return "reflect_without_error"
    if re.search(r"^REFLECTION:", prompt, re.M) and re.search(r"^SOLUTION:", prompt, re.M):
        return "reflect_with_error" if "wrong answer" in prompt else "reflect_without_error"
    return "solve"


class ProblemBank:
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        self.index: dict[str, Problem] = {}
        for problem in problems:
            self.index.setdefault(_norm(problem.text), problem)

    def find(self, prompt: str) -> Problem | None:
        candidate = _section(prompt, ("Problem:\n",))
        if candidate is None and "\n\nReason step by step" in prompt:
            candidate = prompt[: prompt.rfind("\n\nReason step by step")]
        if candidate is not None:
            hit = self.index.get(_norm(candidate))
            if hit is not None:
                return hit
            first = candidate.split("\n\n", 1)[0]
            hit = self.index.get(_norm(first))
            if hit is not None:
                return hit
        # A template we don't know: the longest known problem that occurs in the prompt.
        flat = _norm(prompt)
        best = None
        for norm_text, problem in self.index.items():
            if len(norm_text) > 20 and norm_text in flat and (best is None or len(norm_text) > len(_norm(best.text))):
                best = problem
        return best


# -- what the models write -----------------------------------------------------------------------

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _as_number(text: str | None) -> float | None:
    if text is None:
        return None
    text = text.replace(",", "").strip()
    return float(text) if _PLAIN_NUMBER.fullmatch(text) else None


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.2f}".rstrip("0").rstrip(".")


def _numbers(text: str | None, limit: int = 12) -> list[float]:
    out = []
    for match in _NUMBER.finditer(text or ""):
        value = float(match.group(0))
        if abs(value) < 1e9:
            out.append(value)
        if len(out) >= limit:
            break
    return out


def _same(x: float, gold: float | None) -> bool:
    return gold is not None and abs(x - gold) <= 1e-4 * max(1.0, abs(gold))


def _wrong_answer(rng: random.Random, gold: str | None) -> str:
    """A plausible wrong final answer: near the gold for a number, a small number otherwise."""
    value = _as_number(gold)
    if value is None:  # no gold, or a LaTeX one: a number that appears nowhere in it
        taken = {_fmt(x) for x in _numbers(gold)}
        pick = str(rng.randint(2, 99))
        while pick in taken:
            pick = str(int(pick) + 100)
        return pick
    if value.is_integer():
        g = int(value)
        options = [g + 1, g - 1, 2 * g, g + 10, g // 2, -g if g else 7, g + rng.randint(2, 9)]
        options = [o for o in options if o != g]
        return str(rng.choice(options))
    wrong = value * rng.choice([1.1, 0.9, 2.0, 0.5]) + rng.choice([0.0, 1.0])
    decimals = len(gold.split(".")[1]) if gold and "." in gold else 2
    return f"{wrong:.{min(decimals, 4)}f}"


def _shown_gold(rng: random.Random, gold: str) -> str:
    """How a model writes the gold: GSM-Hard style long floats sometimes rounded ("33.33")."""
    value = _as_number(gold)
    if value is not None and "." in gold and len(gold.split(".")[1]) > 4 and rng.random() < 0.5:
        return f"{value:.2f}"
    return gold


def _steps(rng: random.Random, problem: str | None, avoid: float | None, n: int) -> list[str]:
    """A few plausible step-by-step lines with numbers (never the gold value itself)."""
    nums = [x for x in _numbers(problem) if not _same(x, avoid)] or [float(rng.randint(2, 40)) for _ in range(3)]
    lines = []
    ops = [("+", lambda a, b: a + b), ("-", lambda a, b: a - b), ("\\times", lambda a, b: a * b)]
    templates = [
        "First, {a} {op} {b} = {c}.",
        "Next, we compute {a} {op} {b} = {c}.",
        "Then {a} {op} {b} gives {c}.",
        "Now, combining these, {a} {op} {b} = {c}.",
        "This means we have {a} {op} {b} = {c}.",
    ]
    for i in range(n):
        a, b = rng.choice(nums), rng.choice(nums)
        op, fn = rng.choice(ops)
        if op == "-" and b > a:
            a, b = b, a
        if op == "\\times" and abs(a * b) > 1e6:
            op, fn = ops[0]
        c = fn(a, b)
        if _same(c, avoid):
            c = c + 1
        lines.append(templates[i % len(templates)].format(a=_fmt(a), b=_fmt(b), op=op, c=_fmt(c)))
        nums.append(c)
    return lines


def _opening(rng: random.Random) -> str:
    return rng.choice([
        "Let's solve this step by step.",
        "To solve this problem, let's break it down.",
        "We need to find the answer carefully.",
        "Let me work through this step by step.",
    ])  # fmt: skip


@dataclass
class Reply:
    content: str
    reasoning: str | None = None  # DeepSeek's reasoning_content
    outcome: str = ""  # correct | wrong | loop | no_answer | copy | unknown | judged
    fmt: str = ""
    loop_unit: str | None = None  # a repetition loop: repeated until cut


def student_solve(rng: random.Random, problem: Problem | None, rate: float, loop_rate: float,
                  loop_after_answer_rate: float = 0.0) -> Reply:  # fmt: skip
    gold = problem.gold if problem else None
    gold_value = _as_number(gold)
    correct = rng.random() < rate and problem is not None  # first draw: monotone in the rate
    loops = rng.random() < loop_rate
    style = rng.random()
    lines = [_opening(rng), *_steps(rng, problem.text if problem else None, gold_value, rng.randint(2, 5))]
    body = "\n".join(lines)
    if correct:
        shown = _shown_gold(rng, gold)  # type: ignore[arg-type]
        if style < 0.75:
            return Reply(f"{body}\n\nTherefore, the final answer is $\\boxed{{{shown}}}$.", outcome="correct", fmt="boxed")
        if style < 0.9:
            return Reply(f"{body}\n\nThe answer is {shown}.", outcome="correct", fmt="answer_is")
        return Reply(f"{body}\n\n**Answer:** {shown}", outcome="correct", fmt="bold")
    wrong = _wrong_answer(rng, gold)
    if loops:
        a, b = _steps(rng, problem.text if problem else None, gold_value, 1)[0], rng.randint(2, 9)
        if _same(float(b), gold_value):
            b += 1
        unit = f"Wait, let me recompute that. {a} So we multiply by {b} again. "
        # Drawn last and only when asked for, so the other replies stay as they were.
        if loop_after_answer_rate > 0 and gold is not None and rng.random() < loop_after_answer_rate:
            boxed = f"{body}\n\nSo the final answer is $\\boxed{{{_shown_gold(rng, gold)}}}$.\n"
            return Reply(boxed, outcome="loop", fmt="loop_after_answer", loop_unit=unit)
        return Reply(f"{body}\n", outcome="loop", fmt="loop", loop_unit=unit)
    outcome = "unknown" if problem is None else "wrong"
    if style < 0.35:
        return Reply(f"{body}\n\nSo the final answer is $\\boxed{{{wrong}}}$.", outcome=outcome, fmt="boxed")
    if style < 0.55:
        return Reply(f"{body}\n\nThe answer is {wrong}.", outcome=outcome, fmt="answer_is")
    if style < 0.7:
        return Reply(f"{body}\n\n**Answer:** {wrong}", outcome=outcome, fmt="bold")
    if style < 0.82:
        return Reply(f"{body}\n\nComparing with the options, the answer is (C).", outcome=outcome, fmt="choice")
    tail = rng.choice(["I am not sure how to finish from here.", "This needs one more step that I cannot see.",
                       "Let me double check these values before concluding."])  # fmt: skip
    return Reply(f"{body}\n\n{tail}", outcome="no_answer" if problem else "unknown", fmt="none")


def _paraphrase(rng: random.Random, teacher_cot: str | None, problem: Problem | None, answer: str) -> str:
    """A solution "in the student's own words": some of the teacher's numbers, not its sentences."""
    nums = [x for x in _numbers(teacher_cot, 20) if abs(x) < 1e7]
    if not nums:
        nums = _numbers(problem.text if problem else None) or [float(rng.randint(2, 30)) for _ in range(3)]
    picked = [_fmt(x) for x in rng.sample(nums, k=min(len(nums), rng.randint(2, 4)))]
    lines = [rng.choice(["Let me redo this carefully.", "I will set up the problem again.", "Start from what is given."])]
    verbs = ["We know {n}.", "This gives {n}.", "So the key quantity is {n}.", "Checking this, we get {n}.",
             "Using that, the next value is {n}."]  # fmt: skip
    for i, n in enumerate(picked):
        lines.append(verbs[i % len(verbs)].format(n=n))
    lines.append(f"So the answer is $\\boxed{{{answer}}}$.")
    return "\n".join(lines)


def _notes(rng: random.Random, kind: str, attempt: str | None, gold: str | None) -> str:
    if kind == "reflect_without_error":
        return rng.choice([
            "The solution needs the setup and the main computation; the repeated checks can go.",
            "Every step that computes a new quantity is needed; the restatements can be dropped.",
        ])  # fmt: skip
    step = rng.randint(1, 4)
    text = rng.choice([
        f"My attempt went wrong in step {step}: I combined the quantities in the wrong order.",
        f"In step {step} I used the wrong operation, so every value after it was off.",
        f"I misread the problem at step {step} and solved for the wrong quantity.",
    ])  # fmt: skip
    if rng.random() < 0.35:  # the wrong guess again, boxed, inside the notes
        text += f" That is why I got $\\boxed{{{_wrong_answer(rng, gold)}}}$ instead of the right value."
    return text


def reflection_reply(rng: random.Random, prompt: str, kind: str, problem: Problem | None, cfg: SimConfig,
                     allow_think: bool = True) -> Reply:  # fmt: skip
    gold = problem.gold if problem else None
    correct = rng.random() < cfg.refine_correct_rate and gold is not None
    unsplittable = rng.random() < cfg.unsplittable_rate
    copies = rng.random() < cfg.copy_rate
    formats = REFLECTION_FORMATS if allow_think else tuple(f for f in REFLECTION_FORMATS if f != "think")
    fmt = formats[rng.randrange(len(formats))]
    teacher_cot = _section(prompt, _TEACHER_HEADERS)
    attempt = _section(prompt, _ATTEMPT_HEADERS)
    answer = _shown_gold(rng, gold) if correct else _wrong_answer(rng, gold)  # type: ignore[arg-type]
    if copies and teacher_cot:
        solution, outcome = teacher_cot, "copy"
    else:
        solution, outcome = _paraphrase(rng, teacher_cot, problem, answer), ("correct" if correct else "wrong")
    notes = _notes(rng, kind, attempt, gold)
    if unsplittable:
        return Reply(f"{notes}\n\n{solution}", outcome=outcome, fmt="unsplittable")
    if fmt == "plain":
        text = f"REFLECTION: {notes}\nSOLUTION: {solution}"
    elif fmt == "markdown":
        text = f"### Reflection\n{notes}\n\n### Solution\n{solution}"
    elif fmt == "bold":
        text = f"**Reflection:** {notes}\n\n**Solution:** {solution}"
    elif fmt == "numbered":
        text = f"1. Reflection: {notes}\n2. Solution: {solution}"
    elif fmt == "lower":
        text = f"reflection: {notes}\nsolution: {solution}"
    elif fmt == "refined":
        text = f"Reflection: {notes}\n\nRefined Solution: {solution}"
    elif fmt == "think":
        musing = rng.choice(["Okay, I need to compare my attempt with the correct solution.",
                             "Hmm, where did my attempt diverge? Let me look again."])  # fmt: skip
        text = f"<think>\n{musing}\n</think>\n\nREFLECTION: {notes}\nSOLUTION: {solution}"
    elif fmt == "notes_inner_solution":
        inner = rng.choice([
            " Unlike my attempt, the intended solution: multiplies first and only then adds.",
            "\nCorrect solution: multiply first, then add the remaining amount.",
        ])  # fmt: skip
        text = f"REFLECTION: {notes}{inner}\nSOLUTION: {solution}"
    else:  # solution_inner_solution
        first, _, rest = solution.partition("\n")
        text = f"REFLECTION: {notes}\nSOLUTION: Here is my corrected work.\nSolution: step 1: {first}"
        text += f"\n{rest}" if rest else ""
    return Reply(text, outcome=outcome, fmt=fmt)


_THINK_SENTENCES = (
    "First, the problem gives {a} and {b}.",
    "So {a} + {b} = {s}.",
    "Then {a} times {b} is {p}.",
    "Wait, let me check that again.",
    "Wait, is that right? {a} - {b} = {d}, yes.",
    "Let me check the units here.",
    "Hmm, maybe I should approach this differently.",
    "Let me check: that is consistent with the numbers in the problem.",
    "Okay, so the next step follows from {s}.",
    "Hold on, I should re-read what the question actually asks.",
)


def _thinking(rng: random.Random, problem: Problem | None, words: int, conclusion: str, wrong: str | None) -> str:
    """A reasoning model's thinking: about ``words`` words with "Wait," / "let me check" turns and,
    sometimes, a boxed guess (``wrong``) that it then doubts; it ends in ``conclusion``."""
    nums = _numbers(problem.text if problem else None) or [float(rng.randint(2, 40)) for _ in range(3)]
    target = max(20, int(words * rng.uniform(0.7, 1.3)))
    parts = [rng.choice(["Okay, let's see.", "Alright, so I need to solve this problem.", "Hmm, let me read the problem again."])]
    guess_at = rng.randint(3, 8) if rng.random() < 0.4 and wrong is not None else -1
    count = len(parts[0].split())
    while count < target:
        if len(parts) == guess_at:
            sentence = f"So maybe the answer is \\boxed{{{wrong}}}? Wait, let me check that again, I think I made a mistake."
        else:
            a, b = rng.choice(nums), rng.choice(nums)
            sentence = rng.choice(_THINK_SENTENCES).format(a=_fmt(a), b=_fmt(b), s=_fmt(a + b), p=_fmt(a * b), d=_fmt(a - b))
        parts.append(sentence)
        count += len(sentence.split())
        if len(parts) % 6 == 0:
            parts.append("\n")
    parts.append(f"Wait, let me check once more against the problem. {conclusion}")
    return " ".join(parts).replace(" \n ", "\n\n")


def teacher_solve(rng: random.Random, problem: Problem | None, cfg: SimConfig) -> tuple[str, str, str]:
    """(thinking, final answer text, outcome) of a reasoning teacher on a solve prompt."""
    gold = problem.gold if problem else None
    correct = rng.random() < cfg.teacher_correct_rate and gold is not None
    answer = gold if correct else _wrong_answer(rng, gold)
    conclusion = f"So the final answer should be {answer}."
    thinking = _thinking(rng, problem, cfg.reasoning_words, conclusion, _wrong_answer(rng, gold))
    steps = _steps(rng, problem.text if problem else None, _as_number(gold), rng.randint(2, 3))
    final = "**Solution**\n\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1))
    final += f"\n\nTherefore, the final answer is $\\boxed{{{answer}}}$."
    return thinking, final, "correct" if correct else ("unknown" if problem is None else "wrong")


def judge_reply(rng: random.Random) -> Reply:
    scores = {"coherence": rng.choices(range(1, 6), weights=[1, 2, 4, 6, 4])[0],
              "logical_consistency": rng.choices(range(1, 6), weights=[1, 2, 4, 6, 4])[0]}  # fmt: skip
    raw = json.dumps(scores)
    style = rng.random()
    if style < 0.5:
        return Reply(raw, outcome="judged", fmt="json")
    if style < 0.8:
        return Reply(f"```json\n{json.dumps(scores, indent=2)}\n```", outcome="judged", fmt="fenced")
    lead = rng.choice(["Here is my assessment of the solution:", "The solution is mostly clear."])
    return Reply(f"{lead}\n\n{raw}", outcome="judged", fmt="sentence")


# -- the server ----------------------------------------------------------------------------------

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
VLLM_GET, VLLM_POST = ("/v1/models", "/models", "/health"), ("/v1/chat/completions", "/chat/completions")


class SimServer:
    """The state behind the routes: config, tokenizer, problems, the request log."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.counter = TokenCounter(cfg.tokenizer)
        self.bank = ProblemBank(_file_problems(cfg.problems_file) if cfg.problems_file else _shipped_problems())
        self.log: list[dict[str, Any]] = []
        self.runtime = VllmRuntime(cfg.adapters, cfg.runtime_lora_updating, cfg.sleep_mode, cfg.model, cfg.max_lora_rank)
        self.arrivals: dict[str, int] = defaultdict(int)
        self.connections = 0
        self.created = int(time.time())
        self.fingerprint = hashlib.sha256(json.dumps(cfg.to_json(), sort_keys=True).encode()).hexdigest()[:8]

    @property
    def deepseek(self) -> bool:
        return self.cfg.persona == "teacher_reasoning_content"

    # errors in each server's own shape
    _vllm_error = staticmethod(vllm_runtime.error)

    @staticmethod
    def _deepseek_error(status: int, message: str) -> HttpError:
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_request_error"}}
        return HttpError(status, body)

    def models(self) -> dict[str, Any]:
        if self.deepseek:
            names = [self.cfg.model, *self.runtime.loras]
            return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "deepseek"} for n in names]}

        def card(model_id: str, root: str, parent: str | None, max_len: int | None) -> dict[str, Any]:
            perm = {
                "id": f"modelperm-{hashlib.sha1(model_id.encode()).hexdigest()[:16]}", "object": "model_permission",
                "created": self.created, "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False, "organization": "*",
                "group": None, "is_blocking": False,
            }  # fmt: skip
            return {"id": model_id, "object": "model", "created": self.created, "owned_by": "vllm", "root": root,
                    "parent": parent, "max_model_len": max_len, "permission": [perm]}  # fmt: skip

        data = [card(self.cfg.model, self.cfg.model, None, self.cfg.max_model_len)]
        data += [card(name, root, self.cfg.model, None) for name, root in self.runtime.loras.items()]
        return {"object": "list", "data": data}

    def _rng(self, *parts: Any) -> random.Random:
        digest = hashlib.sha256("\x1f".join(str(p) for p in (self.cfg.seed, *parts)).encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    def _max_tokens(self, request: dict[str, Any], prompt_tokens: int) -> int:
        """The generation budget, or the server's refusal (vLLM's: :func:`vllm_runtime.chat_max_tokens`)."""
        limit = self.cfg.max_model_len
        if not self.deepseek:
            return vllm_runtime.chat_max_tokens(request, prompt_tokens, limit, VLLM_DEFAULT_MAX_TOKENS)
        param = "max_completion_tokens" if request.get("max_completion_tokens") is not None else "max_tokens"
        value = request.get(param)
        if value is None:  # the documented default, within the context window
            value = max(min(DEEPSEEK_DEFAULT_MAX_TOKENS, limit - prompt_tokens if limit else DEEPSEEK_DEFAULT_MAX_TOKENS), 0)
        elif not isinstance(value, int) or isinstance(value, bool):
            raise self._deepseek_error(400, f"Invalid {param} type")
        elif not 1 <= value <= DEEPSEEK_MAX_TOKENS:
            raise self._deepseek_error(
                400, f"Invalid max_tokens value, the valid range of max_tokens is [1, {DEEPSEEK_MAX_TOKENS}]")
        if limit and (prompt_tokens + value > limit or prompt_tokens >= limit):
            raise self._deepseek_error(
                400, f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_tokens + value} tokens ({prompt_tokens} in the messages, {value} in the "
                "completion). Please reduce the length of the messages or completion.")  # fmt: skip
        return value

    def fault(self, body: bytes) -> str | None:
        """Which fault (if any) this arrival of this request body gets: deterministic per
        (seed, body, n-th arrival), so a retry has a fresh chance."""
        if self.cfg.fault_rate <= 0:
            return None
        digest = hashlib.sha256(body).hexdigest()
        n = self.arrivals[digest]
        self.arrivals[digest] += 1
        rng = self._rng("fault", digest, n)
        if rng.random() >= self.cfg.fault_rate:
            return None
        return rng.choice(["500", "429", "reset"])

    def complete(self, request: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
        """The reply body of one chat completion, or raises HttpError; fills ``entry``."""
        cfg = self.cfg
        model = request.get("model") or cfg.model
        entry["model"] = model
        messages = request.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages) or (self.deepseek and not messages):
            raise (self._deepseek_error(400, "messages must be a non-empty list") if self.deepseek
                   else self._vllm_error(400, "messages: a list of messages is required", "BadRequestError"))  # fmt: skip
        prompt = _content_text(messages[-1].get("content")) if messages else ""
        kind = detect_kind(prompt)
        entry["kind"] = kind
        if cfg.log_prompts:
            entry["prompt"] = prompt
        if model != cfg.model and model not in self.runtime.loras:
            if self.deepseek:
                raise self._deepseek_error(400, "Model Not Exist")
            raise self._vllm_error(404, f"The model `{model}` does not exist. Valid aliases: {self.cfg.model}.",
                                   "NotFoundError", "model")
        if not messages:  # transformers' apply_chat_template raises a ValueError; vLLM makes that a 400
            raise self._vllm_error(400, "Cannot apply chat template to an empty conversation. Provide at least one "
                                   "message.", "BadRequestError")  # fmt: skip
        if request.get("stream"):
            raise self._vllm_error(400, "stream is not supported by this simulator", "BadRequestError")
        if self.deepseek and any("reasoning_content" in m for m in messages):
            raise self._deepseek_error(
                400, "The reasoning_content is an intermediate result for display purposes only and will not be "
                "included in the context for inference. Please remove the reasoning_content from your message to "
                "reduce network traffic.")  # fmt: skip
        prompt_tokens = self.counter.prompt(messages)
        entry["prompt_tokens"] = prompt_tokens
        max_tokens = entry["max_tokens"] = self._max_tokens(request, prompt_tokens)

        revision = self.runtime.loras.get(model, "")  # a runtime-loaded adapter's path is its revision
        sample = request.get("seed")
        problem = self.bank.find(prompt) if kind != "judge" else None
        entry["problem_known"] = problem is not None
        if kind == "solve":
            key = _norm(problem.text) if problem else hashlib.sha256(prompt.encode()).hexdigest()
        elif kind == "judge":
            cot = _section(prompt, ("Solution:\n",)) or prompt
            key = hashlib.sha256(cot.encode()).hexdigest()
        else:
            key = hashlib.sha256(prompt.encode()).hexdigest()
        rng = self._rng(model, revision, kind, key, sample)

        reasoning: str | None = None
        if cfg.persona == "judge" or kind == "judge":
            reply = judge_reply(rng)
        elif kind != "solve":
            reply = reflection_reply(rng, prompt, kind, problem, cfg, allow_think=cfg.persona == "student")
            if cfg.persona != "student":
                conclusion = "So the rewrite should name the mistake first and then give the full solution."
                musing = _thinking(rng, problem, max(30, cfg.reasoning_words // 4), conclusion, None)
                if self.deepseek:
                    reasoning = musing
                else:
                    reply.content = f"<think>\n{musing}\n</think>\n\n{reply.content}"
        elif cfg.persona == "student":
            reply = student_solve(rng, problem, cfg.correct_rate_by_model.get(model, cfg.correct_rate), cfg.loop_rate,
                                  cfg.loop_after_answer_rate)  # fmt: skip
        else:
            thinking, final, outcome = teacher_solve(rng, problem, cfg)
            if self.deepseek:
                reply, reasoning = Reply(final, outcome=outcome, fmt="reasoning_content"), thinking
            else:
                reply = Reply(f"<think>\n{thinking}\n</think>\n\n{final}", outcome=outcome, fmt="think")
        entry["outcome"], entry["format"] = reply.outcome, reply.fmt

        content = reply.content
        if reply.loop_unit:  # a repetition loop never stops by itself: generate past the budget
            unit_tokens = max(1, self.counter.count(reply.loop_unit))
            content += reply.loop_unit * (min(max_tokens, 300_000) // unit_tokens + 2)
        reasoning_tokens = 0
        finish = "stop"
        if reasoning is not None:
            reasoning, cut = self.counter.cut(reasoning, max_tokens)
            reasoning_tokens = max_tokens if cut else self.counter.count(reasoning)
            if cut:
                content, finish, content_tokens = "", "length", 0
            else:
                content, cut = self.counter.cut(content, max_tokens - reasoning_tokens)
                content_tokens = max_tokens - reasoning_tokens if cut else self.counter.count(content)
                finish = "length" if cut else "stop"
            completion_tokens = reasoning_tokens + content_tokens
        else:
            content, cut = self.counter.cut(content, max_tokens)
            completion_tokens = max_tokens if cut else self.counter.count(content)
            finish = "length" if cut else "stop"
        entry.update(finish_reason=finish, completion_tokens=completion_tokens)
        if self.deepseek:
            entry["reasoning_tokens"] = reasoning_tokens
        return self._body(request, model, content, reasoning, finish, prompt_tokens, completion_tokens, reasoning_tokens)

    def _body(self, request: dict[str, Any], model: str, content: str, reasoning: str | None, finish: str,
              prompt_tokens: int, completion_tokens: int, reasoning_tokens: int) -> dict[str, Any]:  # fmt: skip
        rid = hashlib.sha256(f"{time.time_ns()}{id(request)}".encode()).hexdigest()
        if self.deepseek:
            return {
                "id": f"{rid[:8]}-{rid[8:12]}-{rid[12:16]}-{rid[16:20]}-{rid[20:32]}", "object": "chat.completion",
                "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content,
                                                     "reasoning_content": reasoning},
                             "logprobs": None, "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens,
                          "prompt_tokens_details": {"cached_tokens": 0},
                          "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
                          "prompt_cache_hit_tokens": 0, "prompt_cache_miss_tokens": prompt_tokens},
                "system_fingerprint": "fp_sim_0001",
            }  # fmt: skip
        # vLLM 0.32's ChatCompletionResponse (vllm/entrypoints/openai/chat_completion/protocol.py; an empty
        # tool_calls is dropped); system_fingerprint as vllm/entrypoints/serve/utils/fingerprint.py builds it.
        message = {"role": "assistant", "content": content, "refusal": None, "annotations": None, "audio": None,
                   "function_call": None, "reasoning": None}  # fmt: skip
        return {
            "id": f"chatcmpl-{rid[:16]}", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish,
                         "stop_reason": None, "token_ids": None, "routed_experts": None}],
            "service_tier": None, "system_fingerprint": f"vllm-{vllm_runtime.VLLM_VERSION}-{self.fingerprint}",
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
                      "completion_tokens": completion_tokens, "prompt_tokens_details": None,
                      "completion_tokens_details": None},
            "prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None, "kv_transfer_params": None,
            "ec_transfer_params": None, "metrics": None,
        }  # fmt: skip


def _response(status: int, payload: bytes, extra: dict[str, str] | None = None, close: bool = False,
              content_type: str | None = "application/json") -> bytes:  # fmt: skip
    lines = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}",
        *([f"content-type: {content_type}"] if content_type else []),
        f"content-length: {len(payload)}",
        f"connection: {'close' if close else 'keep-alive'}",
        "server: uvicorn",
    ]
    lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def _read_request(reader: asyncio.StreamReader, keep_query: bool = False) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            chunks.append(data[:-2])
        body = b"".join(chunks)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
    return method, path if keep_query else path.split("?", 1)[0], headers, body


def _abort(writer: asyncio.StreamWriter) -> None:
    """A connection reset (RST), as a crashed proxy or server gives."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _handle(server: SimServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    server.connections += 1
    conn = server.connections
    try:
        while True:
            parsed = await _read_request(reader, keep_query=True)
            if parsed is None:
                return
            method, target, headers, body = parsed
            path, _, query = target.partition("?")
            close = headers.get("connection", "").lower() == "close"
            if (method, path) in vllm_runtime.ROUTES and not server.deepseek:
                status, payload, content_type = server.runtime.route(path, query, body, headers)
                server.log.append({"kind": "runtime", "path": path, "query": query, "status": status,
                                   "body": body.decode("utf-8", "replace")[:500], "t_done": time.time()})
                if server.cfg.print_log:  # a managed server's stdout is the pipeline's log file
                    print(json.dumps(server.log[-1]), flush=True)
                writer.write(_response(status, payload, close=close, content_type=content_type))
            elif method == "GET" and path in ("/v1/models", "/models"):
                writer.write(_response(200, json.dumps(server.models()).encode(), close=close))
            elif method == "GET" and path == "/health":
                writer.write(_response(200, b"", close=close, content_type=None))
            elif method == "GET" and path == "/log":
                writer.write(_response(200, json.dumps(server.log).encode(), close=close))
            elif method == "POST" and path == "/log/reset":
                server.log.clear()
                writer.write(_response(200, b"{}", close=close))
            elif method == "POST" and path in ("/v1/chat/completions", "/chat/completions"):
                if not await _chat(server, headers, body, writer, conn, close):
                    return
            elif not server.deepseek and (allow := _vllm_allows(server, path)):  # a route, another method
                status, payload, content_type = vllm_runtime.METHOD_NOT_ALLOWED
                writer.write(_response(status, payload, {"allow": allow}, close, content_type))
            else:
                payload = {"detail": "Not Found"}
                writer.write(_response(404, json.dumps(payload).encode(), close=close))
            await writer.drain()
            if close:
                return
    except (ConnectionError, asyncio.CancelledError):
        return
    finally:
        if not writer.transport.is_closing():
            writer.close()


def _vllm_allows(server: SimServer, path: str) -> str | None:
    """The method vLLM serves ``path`` with (FastAPI answers 405 to another), None for no such route."""
    return "GET" if path in VLLM_GET else "POST" if path in VLLM_POST else server.runtime.allowed(path)


async def _chat(server: SimServer, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter, conn: int,
                close: bool) -> bool:  # fmt: skip
    cfg = server.cfg
    arrived = time.time()
    entry: dict[str, Any] = {
        "t": arrived, "conn": conn, "model": None, "kind": None, "prompt_tokens": None, "max_tokens": None,
        "status": None, "finish_reason": None, "completion_tokens": None, "seed": None,
    }  # fmt: skip
    fault = server.fault(body)
    try:
        if not server.deepseek:  # vLLM's content-type and pydantic checks (orion_devtools/vllm_runtime.py)
            request: dict[str, Any] | None = vllm_runtime.json_body(headers, body, required=("messages",))
        elif not isinstance(request := json.loads(body), dict):
            raise ValueError("not an object")
    except HttpError as exc:
        request, error = None, exc
    except ValueError as exc:
        request, error = None, server._vllm_error(400, f"Invalid JSON body: {exc}", "BadRequestError")
    if request is not None:
        entry["seed"] = request.get("seed")
        entry["model"] = request.get("model")
    if fault is not None:
        entry.update(status=0 if fault == "reset" else int(fault), fault=fault, t_done=time.time())
        server.log.append(entry)
        if fault == "reset":
            _abort(writer)
            return False
        if fault == "429":
            message = {"error": {"message": "Rate limit reached, retry later", "type": "rate_limit_error",
                                 "param": None, "code": 429}}  # fmt: skip
            writer.write(_response(429, json.dumps(message).encode(), {"retry-after": str(cfg.retry_after_s)}, close))
        else:
            message = {"error": {"message": "EngineCore encountered an issue. See stack trace (above) for the root cause.",
                                 "type": "InternalServerError", "param": None, "code": 500}}  # fmt: skip
            writer.write(_response(500, json.dumps(message).encode(), close=close))
        return True
    if server.runtime.sleeping:  # vLLM's paused scheduler holds the request until /wake_up
        entry["held_while_sleeping"] = True
        await server.runtime.awake_event().wait()
    status, payload = 200, None
    if request is not None:
        try:
            payload = server.complete(request, entry)
        except HttpError as exc:
            status, payload = exc.status, exc.body
        except Exception as exc:  # noqa: BLE001 - a bug here must reach the client as a 500, not hang it
            status = 500
            payload = {"error": {"message": f"{type(exc).__name__}: {exc}", "type": "InternalServerError",
                                 "param": None, "code": 500}}  # fmt: skip
    else:
        status, payload = error.status, error.body
    if status == 200:
        delay = cfg.latency_s + cfg.latency_per_token_s * (entry.get("completion_tokens") or 0)
        if delay > 0:
            await asyncio.sleep(delay)
    entry.update(status=status, t_done=time.time())
    if status != 200:
        entry["error"] = (payload.get("error") or {}).get("message") if isinstance(payload, dict) else None
    server.log.append(entry)
    if cfg.print_log:
        print(json.dumps({k: entry.get(k) for k in ("kind", "model", "status", "held_while_sleeping")}), flush=True)
    writer.write(_response(status, json.dumps(payload).encode(), close=close))
    return True


async def serve(cfg: SimConfig, port: int, ready: Any = None) -> None:
    state = SimServer(cfg)
    server = await asyncio.start_server(lambda r, w: _handle(state, r, w), "127.0.0.1", port, backlog=1024,
                                        reuse_address=True, limit=2**26)  # fmt: skip
    actual = server.sockets[0].getsockname()[1]
    if ready is not None:
        ready(actual)
    async with server:
        await server.serve_forever()


def _env_flag(name: str) -> bool:
    """A boolean environment variable: "1" or "true" (any case), as ``vllm/envs.py`` reads
    VLLM_ALLOW_RUNTIME_LORA_UPDATING (it reads VLLM_SERVER_DEV_MODE as an int: "1" works for both)."""
    return os.environ.get(name, "0").strip().lower() in ("1", "true")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("model", nargs="?", help="vLLM's positional model: the base model's name (SimConfig.model)")
    parser.add_argument("--model", dest="model_flag", help="vLLM's --model: the same")
    parser.add_argument("--max-model-len", type=int, help="vLLM's flag (SimConfig.max_model_len)")
    parser.add_argument("--max-lora-rank", type=int, help="vLLM's flag: larger adapters are refused (SimConfig.max_lora_rank)")
    parser.add_argument("--tokenizer", help="vLLM's flag: count tokens with this tokenizer (SimConfig.tokenizer)")
    parser.add_argument("--device", choices=("cuda", "cpu"),
                        help="not vLLM's: the platform vLLM would find there (SimConfig.device); cpu refuses sleep mode")
    parser.add_argument("--config", help="JSON file whose keys are SimConfig fields")
    parser.add_argument("--host", default="127.0.0.1", help="accepted as vLLM's; the simulator listens on loopback")
    parser.add_argument("--print-log", action="store_true", help="each request's log entry as a JSON line on stdout")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--enable-sleep-mode", action="store_true",
                        help="vLLM's flag: with VLLM_SERVER_DEV_MODE=1, serve /sleep, /wake_up, /is_sleeping")  # fmt: skip
    args, _ = parser.parse_known_args(argv)  # vLLM's other flags (--enable-lora, ...) are accepted, unused
    data = json.loads(Path(args.config).read_text(encoding="utf-8")) if args.config else {}
    flags = {"model": args.model_flag or args.model, "max_model_len": args.max_model_len, "device": args.device,
             "max_lora_rank": args.max_lora_rank, "tokenizer": args.tokenizer, "print_log": args.print_log or None}
    cfg = SimConfig.from_json({**data, **{k: v for k, v in flags.items() if v is not None}})
    if args.enable_sleep_mode and cfg.device == "cpu":  # vLLM's CPU build stops here (vllm_runtime.SLEEP_REFUSAL)
        print(vllm_runtime.SLEEP_REFUSAL, file=sys.stderr, flush=True)
        raise SystemExit(1)
    if _env_flag("VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
        cfg.runtime_lora_updating = True
    if args.enable_sleep_mode and _env_flag("VLLM_SERVER_DEV_MODE"):
        cfg.sleep_mode = True

    def ready(port: int) -> None:
        print(f"PORT {port}", flush=True)

    try:
        asyncio.run(serve(cfg, args.port, ready))
    except KeyboardInterrupt:
        pass


# -- the client-side handle ----------------------------------------------------------------------


class Simulator:
    """The server in a subprocess (like a real one): ``with Simulator(cfg, port=0) as sim: ...``."""

    def __init__(self, cfg: SimConfig | None = None, port: int = 0, startup_timeout_s: float = 120.0) -> None:
        self.cfg = cfg or SimConfig()
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self._dir = tempfile.mkdtemp(prefix="orion-llm-sim-")
        self._earlier: list[dict[str, Any]] = []  # the log of the processes before a restart

    # lifecycle
    def start(self) -> Simulator:
        config = Path(self._dir) / "sim.json"
        config.write_text(json.dumps(self.cfg.to_json()), encoding="utf-8")
        stderr = open(Path(self._dir) / "stderr.log", "w", encoding="utf-8")  # noqa: SIM115 - owned by the child
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orion_devtools.llm_simulator", "--config", str(config), "--port", str(self.port)],
            stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=str(REPO_ROOT),
        )  # fmt: skip
        stderr.close()
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            ready = sel.select(self.startup_timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("PORT "):
            self.proc.kill()
            self.proc.wait()
            tail = (Path(self._dir) / "stderr.log").read_text(encoding="utf-8", errors="replace")[-3000:]
            raise RuntimeError(f"LLM simulator did not start (got {line!r}):\n{tail}")
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None

    def restart(self, **changes: Any) -> None:
        """Stop and start again on the same port, with ``changes`` applied to the config."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self._earlier += self._call("GET", "/log")
            except OSError:
                pass
        self.stop()
        self.cfg = dataclasses.replace(self.cfg, **changes)
        self.start()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    # addresses and the log
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def _call(self, method: str, path: str) -> Any:
        req = urllib.request.Request(f"{self.url}{path}", method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def requests(self) -> list[dict[str, Any]]:
        """Every request answered since the start (or the last reset), across restarts."""
        return self._earlier + self._call("GET", "/log")

    def reset_log(self) -> None:
        self._earlier = []
        self._call("POST", "/log/reset")


if __name__ == "__main__":
    main()
