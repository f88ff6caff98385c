"""The planned work of a run: the LLM-calling stages of the selected assets with upper bounds of
their calls, and per role the calls already cached, the tokens and what sending the rest costs."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from orion_assets.cli.preflight.context import Context
from orion_assets.llm.usage import cost_usd
from orion_assets.method.problems import BENCHMARK_SPECS
from orion_assets.method.variants import skipped_baselines, skipped_modes, skipped_variants
from orion_assets.profiles.schema import EndpointConfig
from orion_assets.records import PACKAGE_DATA, resolve_data_path
from orion_assets.vocabulary import BASELINE_TABLE, MODE_ROLE, MODES, ROLES, TRAINING_VARIANTS

# A solve prompt (instruction, problem, chat template) in tokens: GSM8K and MATH problems run
# 50-300 tokens, AIME statements up to ~400. Used where the cache has no average yet.
SOLVE_PROMPT_TOKENS = 300
JUDGE_PROMPT_EXTRA_TOKENS = 200


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
class Problems:
    """Training problems (``upto``: an upper bound), problems per evaluated benchmark, and the
    training sources whose size is unknown."""

    train: int
    upto: bool
    benchmarks: dict[str, int]
    unsized: list[str] = field(default_factory=list)


def _records_in(path: Path) -> int | None:
    """Rows of a JSONL / JSON array / Parquet file without parsing more than needed."""
    if not path.is_file():
        return None
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return None
        return len(data) if isinstance(data, list) else None
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def problems_planned(ctx: Context) -> Problems:
    data = ctx.cfg.data
    sizes = [_records_in(resolve_data_path(s.path)) if s.path else None for s in data.train_sources]
    pool = sum(n for n in sizes if n is not None)
    unsized = [s.name for s, n in zip(data.train_sources, sizes, strict=True) if n is None]
    # De-duplication and decontamination remove some of the pool: a limit it exceeds is exact.
    if data.train_limit and pool >= data.train_limit:
        train, upto = data.train_limit, False
    else:
        train, upto = (data.train_limit or pool) if unsized else pool, True
    benchmarks = {}
    for name in data.benchmarks:
        size = _records_in(PACKAGE_DATA / "benchmarks" / BENCHMARK_SPECS[name].file) or 0
        benchmarks[name] = min(size, data.benchmark_limit) if data.benchmark_limit else size
    return Problems(train, upto, benchmarks, unsized)


def stages(ctx: Context, problems: Problems) -> list[Stage]:
    """Every LLM-calling step the selected assets run, with an upper bound of its calls."""
    cfg = ctx.cfg
    train, benchmarks = problems.train, problems.benchmarks
    teacher_out = ctx.completion_estimate("teacher", cfg.endpoints.teacher.max_tokens)
    reflect_prompt = (SOLVE_PROMPT_TOKENS + min(cfg.exposure.max_tokens, cfg.reflection.attempt_max_tokens)
                      + teacher_out)
    planned: list[Stage] = []
    if ctx.selected("teacher_cots"):
        planned.append(Stage("teacher_cots", "teacher", train * cfg.teacher.samples,
                             f"{train} problems x {cfg.teacher.samples} sample(s)",
                             cfg.endpoints.teacher.max_tokens, SOLVE_PROMPT_TOKENS))
    students = len(cfg.all_students)
    per_student = f" x {students} students" if students > 1 else ""
    if ctx.selected("student_attempts"):
        planned.append(Stage("student_attempts", "student", train * cfg.exposure.n * students,
                             f"{train} problems x n={cfg.exposure.n}{per_student}", cfg.exposure.max_tokens,
                             SOLVE_PROMPT_TOKENS))
    drawn = cfg.teacher.samples if cfg.reflection.teacher_samples == "all" else 1  # teacher CoTs per problem used
    if ctx.selected("refined_cots"):
        skipped = skipped_modes(cfg)
        tries = cfg.reflection.tries
        per_problem = f" x {drawn} teacher CoTs" if drawn > 1 else ""
        for mode in (m for m in MODES if m not in skipped):
            role = MODE_ROLE[mode]
            max_tokens = cfg.reflection.max_tokens if role == "student" else cfg.endpoints.teacher.max_tokens
            planned.append(Stage(f"refined_cots[{mode}]", role, train * drawn * tries * students,
                                 f"{train} problems{per_problem} x up to {tries} tr{'ies' if tries > 1 else 'y'}"
                                 f"{per_student}",
                                 max_tokens, reflect_prompt, upto=True))
    if ctx.selected("cot_quality") and cfg.endpoints.judge is not None:
        baselines = skipped_baselines(cfg)
        from_teacher = 1 + len([m for m in MODES if m not in skipped_modes(cfg)]) + len(
            [b for b in BASELINE_TABLE if b.variant not in baselines and not b.own_problems])
        own = sum(cfg.exposure.n for b in BASELINE_TABLE if b.variant not in baselines and b.own_problems)
        candidates = train * (drawn * from_teacher + own) * students  # own: up to one per exposure sample
        planned.append(Stage("cot_quality (judge)", "judge", candidates, f"up to {candidates} candidate CoTs",
                             cfg.endpoints.judge.max_tokens, SOLVE_PROMPT_TOKENS + JUDGE_PROMPT_EXTRA_TOKENS + teacher_out,
                             upto=True, budgeted=False))
    if ctx.selected("benchmark_predictions"):
        trained = [v for v in TRAINING_VARIANTS if v not in skipped_variants(cfg)]
        models = students * (1 + len(trained) * len(cfg.sft.all_seeds))  # base once, the others per seed
        per_variant = sum(n * cfg.eval.k_overrides.get(b, cfg.eval.k) for b, n in benchmarks.items())
        planned.append(Stage("benchmark_predictions", "student", per_variant * models,
                             f"{per_variant} samples (benchmark problems x k) x {models} models "
                             f"({1 + len(trained)} variants, {len(cfg.sft.all_seeds)} seed(s), {students} student(s))",
                             cfg.eval.max_tokens, SOLVE_PROMPT_TOKENS, budgeted=False))
    return planned


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


def plan_lines(ctx: Context, problems: Problems, planned: list[Stage]) -> list[str]:
    """The ``planned work`` lines ``orion check`` and ``orion run`` print."""
    out: list[str] = []
    bench = ", ".join(f"{b} {n}" for b, n in problems.benchmarks.items())
    out.append("planned work (upper bounds, from the profile's limits and the shipped data):")
    if ctx.selected("train_problems") or planned:
        unsized = f" (not counting {', '.join(problems.unsized)}: size unknown)" if problems.unsized else ""
        out.append(f"  problems: {'up to ' if problems.upto else ''}{problems.train} training{unsized}; benchmarks {bench}")
    if not planned:
        out.append("  no LLM calls in the selected assets")
        return out
    width = max(len(s.asset) for s in planned)
    for s in planned:
        calls = f"{'<=' if s.upto else '  '}{s.calls:>7,}"
        out.append(f"  {s.asset:<{width}}  {s.role:<7} {calls} calls  ({s.how})")
    stats = ctx.cache_stats()
    out.append(f"  {'role':<7} {'calls':>9} {'cached':>8} {'tokens in':>11} {'tokens out':>11}  cost (to send)")
    for role in ROLES:
        mine = [s for s in planned if s.role == role]
        if not mine:
            continue
        cfg: EndpointConfig = getattr(ctx.cfg.endpoints, role)
        cached = int(stats.get(role, {}).get("calls", 0))
        calls = sum(s.calls for s in mine)
        mean_in = stats.get(role, {}).get("prompt")
        tokens_in = sum(s.calls * int(mean_in or s.prompt_tokens) for s in mine)
        tokens_out = sum(s.calls * ctx.completion_estimate(role, s.max_tokens) for s in mine)
        to_send = max(calls - cached, 0) / calls if calls else 0.0
        cost = _cost(cfg, tokens_in * to_send, tokens_out * to_send)
        out.append(f"  {role:<7} {calls:>9,} {cached:>8,} {_tokens(tokens_in):>11} {_tokens(tokens_out):>11}  "
                   f"{cost if cfg.backend == 'openai' else 'none (' + cfg.backend + ')'}")
    out.append("  (tokens: the cache's mean per call where it has answers, else max_tokens and a "
               f"~{SOLVE_PROMPT_TOKENS}-token prompt; cost for the calls not yet cached, prices from "
               "[endpoints.<role>] price_per_mtok_in / price_per_mtok_out)")
    return out
