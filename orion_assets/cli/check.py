"""``orion check``: what a run of a profile needs, checked before any money or GPU time is spent.

Each check is cheap (no model is loaded, each server gets one ``GET /models`` with a short
timeout) and ends in a :class:`Finding`: ``ok``, ``warn`` (the run can go on), ``problem`` (it
would fail: ``orion check`` exits non-zero, ``orion run`` does not start) or ``skip``. Only what
the selected assets need is checked, so ``orion run --select train_problems`` does not ask for a
student server. The planned work is an upper bound from the profile's limits and the shipped data
sizes, with what ``orion.llm_calls`` already holds and, when prices are set, what it costs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orion_assets.cli.common import apply_env, data_dir_of, definitions, selectable_keys, unknown_assets
from orion_assets.llm.usage import cost_usd
from orion_assets.profiles import Profile, load_profile
from orion_assets.profiles.schema import EndpointConfig, OrionConfig
from orion_assets.vocabulary import TRAINING_VARIANTS

HTTP_TIMEOUT_S = 5.0
# A solve prompt (instruction, problem, chat template) in tokens: GSM8K and MATH problems run
# 50-300 tokens, AIME statements up to ~400. Used where the cache has no average yet.
SOLVE_PROMPT_TOKENS = 300
JUDGE_PROMPT_EXTRA_TOKENS = 200
MIN_FREE_BYTES = 1 << 30
REAL_RUN_FREE_BYTES = 20 << 30
LLM_ASSETS = ("teacher_cots", "student_attempts", "refined_cots", "cot_quality", "benchmark_predictions")
MARKS = {"ok": "ok  ", "warn": "warn", "problem": "FAIL", "skip": "skip", "info": "    "}


@dataclass
class Finding:
    level: str  # ok | warn | problem | skip | info
    text: str


@dataclass
class Section:
    title: str
    findings: list[Finding] = field(default_factory=list)

    def add(self, level: str, text: str) -> None:
        self.findings.append(Finding(level, text))


@dataclass
class Stage:
    """One LLM-calling step of the plan: ``calls`` of ``role`` (``upto``: at most that many)."""

    asset: str
    role: str
    calls: int
    how: str
    max_tokens: int
    prompt_tokens: int
    upto: bool = False
    budgeted: bool = True  # max_tokens is cut to fit the context window (a known window and a tokenizer)


@dataclass
class Report:
    profile: Profile
    sections: list[Section] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)

    def section(self, title: str) -> Section:
        self.sections.append(Section(title))
        return self.sections[-1]

    def lines(self, level: str) -> list[str]:
        """``section: text`` of every finding at ``level`` (the lines ``orion check`` ends with)."""
        return [f"{s.title.split(':')[0]}: {f.text}" for s in self.sections for f in s.findings if f.level == level]

    @property
    def problems(self) -> list[str]:
        return self.lines("problem")

    @property
    def warnings(self) -> list[str]:
        return self.lines("warn")

    def render(self) -> str:
        out: list[str] = []
        for section in self.sections:
            out.append(section.title)
            out += [f"    {f.text}" if f.level == "info" else f"  {MARKS[f.level]}  {f.text}" for f in section.findings]
        out += self.plan
        return "\n".join(out)


# -- the profile ----------------------------------------------------------------------------------


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _show(value: Any, limit: int = 70) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def profile_differences(config: OrionConfig) -> list[tuple[str, Any, Any]]:
    """(key, value, default) of every effective value that differs from ``OrionConfig()``'s."""
    actual = _flatten(config.model_dump(mode="json"))
    defaults = _flatten(OrionConfig().model_dump(mode="json"))
    endpoint_defaults = _flatten(EndpointConfig().model_dump(mode="json"))
    diffs = []
    for key, value in actual.items():
        if key in defaults:
            default = defaults[key]
        elif key.startswith("endpoints.judge."):  # no judge by default: compare with a bare endpoint
            default = endpoint_defaults.get(key.removeprefix("endpoints.judge."))
        else:
            default = None
        if value != default:
            diffs.append((key, value, default))
    return diffs


# -- HTTP -------------------------------------------------------------------------------------------


def _loopback(url: str) -> bool:
    from orion_assets.llm.openai_backend import is_loopback

    return is_loopback(url)


def http_get(url: str, key: str | None, timeout_s: float) -> tuple[int, Any, float]:
    """(status, parsed JSON body or text, seconds); raises ``OSError`` when no answer came."""
    handlers = [urllib.request.ProxyHandler({})] if _loopback(url) else []
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    started = time.monotonic()
    try:
        with opener.open(request, timeout=timeout_s) as reply:
            status, body = reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    text = body.decode("utf-8", "replace")
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        parsed = text
    return status, parsed, time.monotonic() - started


def why_unreachable(exc: BaseException, timeout_s: float) -> str:
    """A short reason for a failed connection (refused, no such host, timeout)."""
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return f"no answer within {timeout_s:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the server running on that port?)"
    if "Name or service not known" in str(reason) or "nodename nor servname" in str(reason) or "getaddrinfo" in str(reason):
        return "the host name does not resolve (no network?)"
    return str(reason)


# -- the checks -------------------------------------------------------------------------------------


class Preflight:
    """The checks of one profile for the assets in ``selection`` (None: the whole graph)."""

    def __init__(self, profile: Profile, data_dir: Path, selection: Iterable[str] | None = None,
                 timeout_s: float = HTTP_TIMEOUT_S):
        self.profile = profile
        self.cfg = profile.config
        self.data_dir = Path(data_dir)
        self.selection = set(selection) if selection else None
        self.timeout_s = timeout_s
        self.report = Report(profile)
        self._cache_stats: dict[str, dict[str, float]] | None = None
        self._checkpoints: set[str] | None = None
        self.unsized_sources: list[str] = []
        self._store_ok = True

    def selected(self, asset: str) -> bool:
        return self.selection is None or asset in self.selection

    def run(self) -> Report:
        self.check_profile()
        self.check_store()
        stages = self.stages()
        roles = {s.role for s in stages}
        for role in ("teacher", "student", "judge"):
            self.check_endpoint(role, needed=role in roles, stages=[s for s in stages if s.role == role])
        if self.selected("student_base_model"):
            self.check_student_model()
        if self.selected("train_problems"):
            self.check_train_sources()
        self.check_disk()
        self.check_cuda()
        self.plan(stages)
        return self.report

    # profile
    def check_profile(self) -> None:
        diffs = profile_differences(self.cfg)
        section = self.report.section(
            f"profile {self.profile.name} ({self.profile.hash}): {len(diffs)} value(s) differ from the defaults"
        )
        for key, value, default in diffs:
            section.add("info", f"{key} = {_show(value)} (default {_show(default)})")

    # the store
    def check_store(self) -> None:
        """Open the store the profile names: an unreachable lake catalog, a missing secret variable or
        an extension wheel of another DuckDB version is a problem found here, not in the first write."""
        from orion_assets.store import store_for

        store = store_for(self.cfg.store, self.data_dir)
        section = self.report.section(f"store: {self.cfg.store.backend}, {store.location}")
        try:
            found = store.exists()
        except Exception as exc:  # noqa: BLE001 - whatever stops it opening is the finding
            self._store_ok = False
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            section.add("problem", f"cannot open it: {first[:300]}")
            return
        section.add("ok", "opened" if found else "nothing written yet: the first materialization creates it")

    # endpoints
    def check_endpoint(self, role: str, *, needed: bool, stages: list[Stage]) -> None:
        cfg: EndpointConfig | None = getattr(self.cfg.endpoints, role)
        if cfg is None:
            if role == "judge":
                self.report.section("judge: none (no LLM-judge scores)")
            return
        if not needed:
            self.report.section(f"{role}: not used by the selected assets")
            return
        if cfg.backend == "replay":
            source = f"file {cfg.replay_file}" if cfg.replay_file else f"the problems' {cfg.replay_field!r} field"
            self.report.section(f"{role}: replay backend (answers from {source}): no endpoint to check")
            return
        if cfg.backend == "hf":
            self.report.section(f"{role}: hf backend (local generation, device {cfg.device}): no server to check")
            return
        section = self.report.section(f"{role}: openai backend at {cfg.base_url}, model {cfg.model}")
        if not cfg.base_url or not cfg.model:
            section.add("problem", f"set [endpoints.{role}] base_url and model (the openai backend needs both)")
            return
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if key:
            section.add("ok", f"API key: ${cfg.api_key_env} is set")
        elif _loopback(cfg.base_url) or not cfg.api_key_env:
            what = f"${cfg.api_key_env} is not set" if cfg.api_key_env else "no api_key_env"
            section.add("ok", f"API key: {what} (a loopback server needs none)")
        else:
            section.add("problem", f"set the environment variable {cfg.api_key_env}: the server at {cfg.base_url} "
                                   f"needs an API key ([endpoints.{role}] api_key_env)")
            return
        url = cfg.base_url.rstrip("/") + "/models"
        try:
            status, body, seconds = http_get(url, key, self.timeout_s)
        except (OSError, ValueError) as exc:
            section.add("problem", f"cannot reach {url}: {why_unreachable(exc, self.timeout_s)}")
            return
        if status in (401, 403):
            section.add("problem", f"GET {url}: HTTP {status}: the server refused the key in ${cfg.api_key_env}")
            return
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("data"), list):
            hint = " (base_url usually ends in /v1)" if status == 404 else ""
            section.add("problem", f"GET {url}: HTTP {status}, not a model list{hint}")
            return
        cards = {str(c.get("id")): c for c in body["data"] if isinstance(c, dict)}
        section.add("ok", f"GET /models answered in {seconds:.2f} s: {len(cards)} model(s)")
        if cfg.model in cards:
            section.add("ok", f"serves {cfg.model}")
        else:
            shown = ", ".join(sorted(cards)[:5]) or "none"
            section.add("problem", f"the server does not list model {cfg.model} (it lists: {shown})")
        if role == "student" and any(s.asset == "benchmark_predictions" for s in stages):
            self._check_variants(section, set(cards))
        served_len = cards.get(cfg.model, {}).get("max_model_len")
        self._check_window(section, role, cfg, served_len if isinstance(served_len, int) else None, stages)

    def _check_variants(self, section: Section, served: set[str]) -> None:
        """Evaluation asks the student server for each trained variant by name (vLLM LoRA modules)."""
        from orion_assets.method.variants import skipped_variants

        wanted = [v for v in TRAINING_VARIANTS if v not in skipped_variants(self.cfg)]
        missing = [v for v in wanted if v not in served]
        present = [v for v in wanted if v in served]
        if not missing:
            section.add("ok", f"serves every variant: {', '.join(present)}")
            return
        trained_here = self.selected("student_checkpoint")
        stale = [v for v in missing if v in self.checkpoints() and not trained_here]
        fresh = [v for v in missing if v not in stale]
        if present:
            section.add("ok", f"serves variant(s) {', '.join(present)}")
        if fresh:
            section.add("warn", f"does not serve variant(s) {', '.join(fresh)} yet: no checkpoint before this run; "
                                "restart the server with --lora-modules <variant>=<checkpoint> before evaluation")
        if stale:
            section.add("problem", f"does not serve variant(s) {', '.join(stale)}, which have checkpoints: start "
                                   "vLLM with --lora-modules <variant>=<path> (orion sql \"SELECT variant, path FROM "
                                   "orion.student_checkpoint\")")

    def _check_window(self, section: Section, role: str, cfg: EndpointConfig, served_len: int | None,
                      stages: list[Stage]) -> None:
        configured = cfg.context_window
        if configured is not None and served_len is not None and configured > served_len:
            section.add("problem", f"[endpoints.{role}] context_window = {configured} but the server's max_model_len "
                                   f"is {served_len}: set context_window = {served_len}")
            return
        window = configured or served_len
        if window is None:
            section.add("warn", f"context window unknown (the server does not say): set [endpoints.{role}] "
                                "context_window to its --max-model-len so long prompts are fitted, not refused")
            return
        where = "the profile" if configured is not None else "max_model_len from /models"
        worst = max(stages, key=lambda s: s.max_tokens + s.prompt_tokens) if stages else None
        if worst is None:
            section.add("ok", f"context window {window} ({where})")
            return
        over = [s for s in stages if s.max_tokens + s.prompt_tokens > window]
        if not over:
            section.add("ok", f"context window {window} ({where}): max_tokens {worst.max_tokens} + a "
                              f"~{worst.prompt_tokens}-token prompt fits ({worst.asset})")
            return
        for stage in over:
            text = (f"{stage.asset}: max_tokens {stage.max_tokens} + a ~{stage.prompt_tokens}-token prompt "
                    f"exceeds the {window}-token context window ({where})")
            if stage.budgeted and configured is not None:
                section.add("warn", text + "; max_tokens is cut to fit each prompt")
            elif stage.asset.startswith("refined_cots"):
                section.add("warn", text + f"; set [endpoints.{role}] context_window so that prompts are fitted")
            else:
                section.add("problem", text + "; the server refuses such requests: lower that max_tokens")

    # the student's weights
    def check_student_model(self) -> None:
        spec = self.cfg.student_model
        if spec.source == "build_tiny":
            self.report.section("student model: tiny random Qwen2, built by student_base_model (offline)")
            return
        name = spec.name_or_path
        section = self.report.section(f"student model: {name}")
        if not name:
            section.add("problem", "set [student_model] name_or_path (source = 'pretrained' needs it)")
            return
        local = Path(name).expanduser()
        if local.is_dir():
            level = "ok" if (local / "config.json").is_file() else "problem"
            section.add(level, f"local directory {local.resolve()}" + ("" if level == "ok" else " has no config.json"))
            return
        if local.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
            section.add("problem", f"no directory at {local} (and not a Hugging Face id)")
            return
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json", revision=spec.revision)
        if isinstance(cached, str):
            section.add("ok", f"in the Hugging Face cache ({Path(cached).parent})")
            return
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
            section.add("problem", f"{name} is not in the Hugging Face cache and HF_HUB_OFFLINE is "
                                   f"set: download it first (hf download {name}) or set [student_model] "
                                   "name_or_path to a local directory")
            return
        url = f"https://huggingface.co/api/models/{name}"
        try:
            status, _, _ = http_get(url, os.environ.get("HF_TOKEN"), self.timeout_s)
        except (OSError, ValueError) as exc:
            section.add("problem", f"{name} is not in the Hugging Face cache and huggingface.co cannot be reached: "
                                   f"{why_unreachable(exc, self.timeout_s)}")
            return
        if status == 200:
            section.add("ok", "on the Hugging Face Hub: student_base_model downloads it")
        else:
            section.add("problem", f"the Hub answers HTTP {status} for {name} (a typo, or a gated model "
                                   "that needs HF_TOKEN?)")

    def check_train_sources(self) -> None:
        from orion_assets.records import resolve_data_path

        for source in self.cfg.data.train_sources:
            if source.path is None:
                continue
            path = resolve_data_path(source.path)
            if not path.is_file():
                self.report.section(f"training data {source.name}").add("problem", f"no file at {path}")

    # the machine
    def check_disk(self) -> None:
        where = self.data_dir
        while not where.exists() and where != where.parent:
            where = where.parent
        free = shutil.disk_usage(where).free
        section = self.report.section(f"disk: {free / (1 << 30):.1f} GiB free under {self.data_dir}")
        if free < MIN_FREE_BYTES:
            section.add("problem", f"under 1 GiB free under {self.data_dir}: checkpoints and the DuckDB file need room")
        elif free < REAL_RUN_FREE_BYTES and self.cfg.student_model.source == "pretrained":
            section.add("warn", "under 20 GiB free: a pretrained student's checkpoints (one per variant) may not fit")

    def check_cuda(self) -> None:
        asked = [role for role in ("teacher", "student", "judge")
                 if (c := getattr(self.cfg.endpoints, role)) is not None and c.backend == "hf"
                 and c.device.startswith("cuda")]
        if not asked:
            self.report.section("CUDA: not asked for by the profile")
            return
        import torch

        section = self.report.section(f"CUDA: asked for by [endpoints.{'/'.join(asked)}] device")
        if torch.cuda.is_available():
            section.add("ok", f"{torch.cuda.device_count()} device(s): {torch.cuda.get_device_name(0)}")
        else:
            section.add("problem", "device = \"cuda\" but torch sees no CUDA device")

    # the plan
    def problems_planned(self) -> tuple[int, bool, dict[str, int]]:
        """(training problems, whether that is an upper bound, problems per evaluated benchmark)."""
        from orion_assets.method.problems import BENCHMARK_SPECS
        from orion_assets.records import PACKAGE_DATA, resolve_data_path

        data = self.cfg.data
        sizes = [_records_in(resolve_data_path(s.path)) if s.path else None for s in data.train_sources]
        pool = sum(n for n in sizes if n is not None)
        self.unsized_sources = [s.name for s, n in zip(data.train_sources, sizes, strict=True) if n is None]
        # De-duplication and decontamination remove some of the pool: a limit it exceeds is exact.
        if data.train_limit and pool >= data.train_limit:
            train, upto = data.train_limit, False
        else:
            train, upto = (data.train_limit or pool) if self.unsized_sources else pool, True
        benchmarks = {}
        for name in data.benchmarks:
            size = _records_in(PACKAGE_DATA / "benchmarks" / BENCHMARK_SPECS[name].file) or 0
            benchmarks[name] = min(size, data.benchmark_limit) if data.benchmark_limit else size
        return train, upto, benchmarks

    def stages(self) -> list[Stage]:
        """Every LLM-calling step the selected assets run, with an upper bound of its calls."""
        from orion_assets.method.variants import skipped_modes, skipped_variants
        from orion_assets.vocabulary import MODE_ROLE, MODES

        cfg = self.cfg
        train, _, benchmarks = self.problems_planned()
        teacher_out = self._completion_estimate("teacher", cfg.endpoints.teacher.max_tokens)
        reflect_prompt = (SOLVE_PROMPT_TOKENS + min(cfg.exposure.max_tokens, cfg.reflection.attempt_max_tokens)
                          + teacher_out)
        stages: list[Stage] = []
        if self.selected("teacher_cots"):
            stages.append(Stage("teacher_cots", "teacher", train * cfg.teacher.samples,
                                f"{train} problems x {cfg.teacher.samples} sample(s)",
                                cfg.endpoints.teacher.max_tokens, SOLVE_PROMPT_TOKENS))
        if self.selected("student_attempts"):
            stages.append(Stage("student_attempts", "student", train * cfg.exposure.n,
                                f"{train} problems x n={cfg.exposure.n}", cfg.exposure.max_tokens, SOLVE_PROMPT_TOKENS))
        if self.selected("refined_cots"):
            skipped = skipped_modes(cfg)
            for mode in (m for m in MODES if m not in skipped):
                role = MODE_ROLE[mode]
                max_tokens = cfg.reflection.max_tokens if role == "student" else cfg.endpoints.teacher.max_tokens
                stages.append(Stage(f"refined_cots[{mode}]", role, train * cfg.reflection.tries,
                                    f"{train} problems x up to {cfg.reflection.tries} tr{'ies' if cfg.reflection.tries > 1 else 'y'}", max_tokens,
                                    reflect_prompt, upto=True))
        if self.selected("cot_quality") and cfg.endpoints.judge is not None:
            candidates = train * (cfg.teacher.samples + len([m for m in MODES if m not in skipped_modes(cfg)]))
            stages.append(Stage("cot_quality (judge)", "judge", candidates, f"up to {candidates} candidate CoTs",
                                cfg.endpoints.judge.max_tokens, SOLVE_PROMPT_TOKENS + JUDGE_PROMPT_EXTRA_TOKENS + teacher_out,
                                upto=True, budgeted=False))
        if self.selected("benchmark_predictions"):
            variants = ["base", *(v for v in TRAINING_VARIANTS if v not in skipped_variants(cfg))]
            per_variant = sum(n * cfg.eval.k_overrides.get(b, cfg.eval.k) for b, n in benchmarks.items())
            stages.append(Stage("benchmark_predictions", "student", per_variant * len(variants),
                                f"{per_variant} samples (benchmark problems x k) x {len(variants)} variants",
                                cfg.eval.max_tokens, SOLVE_PROMPT_TOKENS, budgeted=False))
        return stages

    def cache_stats(self) -> dict[str, dict[str, float]]:
        """Per role: answered calls in ``orion.llm_calls`` and their mean prompt/completion tokens."""
        if self._cache_stats is None:
            self._cache_stats = {}
            from orion_assets.store import SCHEMA, store_for

            store = store_for(self.profile.config.store, self.data_dir)
            if self._store_ok and store.exists():
                if store.table_exists("llm_calls"):
                    with store.connect(read_only=True) as con:
                        rows = con.execute(
                            f"SELECT role, count(*), avg(prompt_tokens), avg(completion_tokens) "
                            f"FROM {SCHEMA}.llm_calls WHERE status = 'ok' GROUP BY role"
                        ).fetchall()
                    self._cache_stats = {r[0]: {"calls": r[1], "prompt": r[2], "completion": r[3]} for r in rows}
        return self._cache_stats

    def checkpoints(self) -> set[str]:
        if self._checkpoints is None:
            self._checkpoints = set()
            from orion_assets.store import store_for

            store = store_for(self.profile.config.store, self.data_dir)
            if self._store_ok and store.exists():
                if store.table_exists("student_checkpoint"):
                    self._checkpoints = set(store.read("student_checkpoint")["variant"].to_list())
        return self._checkpoints

    def _completion_estimate(self, role: str, max_tokens: int) -> int:
        mean = self.cache_stats().get(role, {}).get("completion")
        return int(min(mean, max_tokens)) if mean else max_tokens

    def plan(self, stages: list[Stage]) -> None:
        train, upto, benchmarks = self.problems_planned()
        out = self.report.plan
        bench = ", ".join(f"{b} {n}" for b, n in benchmarks.items())
        out.append("planned work (upper bounds, from the profile's limits and the shipped data):")
        if self.selected("train_problems") or stages:
            unsized = f" (not counting {', '.join(self.unsized_sources)}: size unknown)" if self.unsized_sources else ""
            out.append(f"  problems: {'up to ' if upto else ''}{train} training{unsized}; benchmarks {bench}")
        if not stages:
            out.append("  no LLM calls in the selected assets")
            return
        width = max(len(s.asset) for s in stages)
        for s in stages:
            calls = f"{'<=' if s.upto else '  '}{s.calls:>7,}"
            out.append(f"  {s.asset:<{width}}  {s.role:<7} {calls} calls  ({s.how})")
        stats = self.cache_stats()
        out.append(f"  {'role':<7} {'calls':>9} {'cached':>8} {'tokens in':>11} {'tokens out':>11}  cost (to send)")
        for role in ("teacher", "student", "judge"):
            mine = [s for s in stages if s.role == role]
            if not mine:
                continue
            cfg: EndpointConfig = getattr(self.cfg.endpoints, role)
            cached = int(stats.get(role, {}).get("calls", 0))
            calls = sum(s.calls for s in mine)
            mean_in = stats.get(role, {}).get("prompt")
            tokens_in = sum(s.calls * int(mean_in or s.prompt_tokens) for s in mine)
            tokens_out = sum(s.calls * self._completion_estimate(role, s.max_tokens) for s in mine)
            to_send = max(calls - cached, 0) / calls if calls else 0.0
            cost = _cost(cfg, tokens_in * to_send, tokens_out * to_send)
            out.append(f"  {role:<7} {calls:>9,} {cached:>8,} {_tokens(tokens_in):>11} {_tokens(tokens_out):>11}  "
                       f"{cost if cfg.backend == 'openai' else 'none (' + cfg.backend + ')'}")
        out.append("  (tokens: the cache's mean per call where it has answers, else max_tokens and a "
                   f"~{SOLVE_PROMPT_TOKENS}-token prompt; cost for the calls not yet cached, prices from "
                   "[endpoints.<role>] price_per_mtok_in / price_per_mtok_out)")


def _records_in(path: Path) -> int | None:
    """Rows of a JSONL / JSON array / Parquet file without parsing more than needed."""
    if not path.is_file():
        return None
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return None
        return len(data) if isinstance(data, list) else None
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def _tokens(n: float) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.1f}G"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return str(int(n))


def _cost(cfg: EndpointConfig, tokens_in: float, tokens_out: float) -> str:
    usd = cost_usd(cfg, tokens_in, tokens_out)
    if usd is None:
        return "no prices set"
    return f"<= ${usd:,.2f}" if usd >= 0.01 or usd == 0 else f"<= ${math.ceil(usd * 1e4) / 1e4:.4f}"


def run_preflight(profile: Profile, data_dir: Path, selection: Iterable[str] | None = None,
                  timeout_s: float = HTTP_TIMEOUT_S) -> Report:
    return Preflight(profile, data_dir, selection, timeout_s).run()


def check(args: argparse.Namespace) -> int:
    apply_env(args)
    profile = load_profile()
    if args.select:
        unknown = unknown_assets(args.select, selectable_keys(definitions().resolve_asset_graph()))
        if unknown:
            print(f"orion check: unknown asset(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
    report_ = run_preflight(profile, data_dir_of(args), selection=args.select, timeout_s=args.timeout)
    print(report_.render(), flush=True)
    warnings = f", {len(report_.warnings)} warning(s)" if report_.warnings else ""
    if report_.problems:
        for line in report_.problems:
            print(f"orion check: {line}", file=sys.stderr)
        return 2
    print(f"orion check: ok{warnings}", flush=True)
    return 0
