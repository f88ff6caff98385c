"""``orion run``: materialize every asset and partition of the active profile, one step at a time,
with progress on the terminal, everything else in the run's log file, and a short reason on failure."""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time
from pathlib import Path

import psutil

from orion_assets.cli import console
from orion_assets.cli.check import run_preflight
from orion_assets.cli.common import data_dir_of, definitions, profile_of, selectable_keys, unknown_assets
from orion_assets.cli.failures import gate_query, report_checks, report_failure
from orion_assets.method.partition_keys import why_not_made
from orion_assets.method.variants import skipped_variants, unused_endpoint_variants
from orion_assets.profiles import Profile
from orion_assets.vocabulary import PARTITION_SEPARATOR as SEPARATOR


def _instance():
    # Deferred: dagster takes about a second to import; orion sql/check/report do not need it.
    import dagster as dg

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path("dagster_home").resolve())))
    home.mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.get()


def _partition_keys(partitions_def) -> list[str | None]:
    """Every partition key: the definitions hold only those the profile makes (io/partitions.py)."""
    return [None] if partitions_def is None else list(partitions_def.get_partition_keys())


def _left_out(config) -> list[str]:
    """What the run leaves out, and why: the variants the profile does not make, one line per reason, and the
    ``[endpoints.student.variants]`` it never asks."""
    by_reason: dict[str, list[str]] = {}
    for variant, why in skipped_variants(config).items():
        by_reason.setdefault(why, []).append(variant)
    lines = [f"leaving out variant{'s' * (len(variants) > 1)} {', '.join(variants)}: {why}"
             for why, variants in by_reason.items()]
    return lines + [f"warning: [endpoints.student.variants.{variant}] is never asked: {why}"
                    for variant, why in unused_endpoint_variants(config).items()]


def _partition_selected(wanted: list[str], profile: Profile, graph, keys) -> list[str]:
    """What to say of ``--select`` names that are ``asset[partition]``: it takes asset keys, and runs every
    partition the profile makes; a partition it does not make is named with the reason."""
    by_name = {k.to_user_string(): k for k in keys}
    said = []
    for name in wanted:
        asset, bracket, rest = name.partition("[")
        if not bracket or asset not in by_name or not rest.endswith("]"):
            continue
        partitions_def, key = graph.get(by_name[asset]).partitions_def, rest[:-1]
        if partitions_def is None:
            why = f"{asset} is not partitioned"
        elif partitions_def.has_partition_key(key):
            why = f"profile {profile.name} makes it: --select {asset} runs it with every other partition of {asset}"
        else:
            why = (f"profile {profile.name} does not make it, so its definitions have no such partition: "
                   f"{why_not_made(profile.config, key) or f'{asset} has no partition {key}'}")
        said.append(f"--select takes asset keys, not partitions: {name}: {why}")
    return said


def _model_part(key) -> str | None:
    """The ``student/variant[/seed]`` part of a partition key (None for a benchmark or student key)."""
    for value in getattr(key, "keys_by_dimension", {"_": key}).values():
        if SEPARATOR in str(value):
            return str(value)
    return None


def _refused_above(key, refused: dict[str, str]) -> str | None:
    """The failed step a step's ``student/variant/seed`` lies under (a refused ``student/variant[/seed]``), if any."""
    part = _model_part(key)
    if part is None:
        return None
    return next((step for model, step in refused.items() if part == model or part.startswith(model + SEPARATOR)), None)


_last_cpu: dict[int, tuple[bool, float]] = {}  # descendant pid -> (a direct child?, CPU seconds when last seen)


def _cpu_seconds() -> float:
    """User + system CPU of this process (all threads), of its child processes that have ended (an
    SFT run) and of its descendants still running (the grading workers, a server and its engine); deltas
    of this sum are a step's CPU.

    A descendant that is not a direct child (a server's engine) is reaped by someone else when it stops,
    so its CPU never reaches this process's counters: it keeps counting at what it was last seen using."""
    own, ended = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + ended.ru_utime + ended.ru_stime
    me, live = os.getpid(), {}
    for child in psutil.Process().children(recursive=True):
        try:
            times, direct = child.cpu_times(), child.ppid() == me
        except psutil.Error:  # it ended meanwhile
            continue
        live[child.pid] = (direct, times.user + times.system)
    for pid, (direct, _) in list(_last_cpu.items()):
        if pid not in live and direct:  # a direct child ends in RUSAGE_CHILDREN once reaped
            del _last_cpu[pid]
    _last_cpu.update(live)
    return total + sum(cpu for _, cpu in _last_cpu.values())


def run(args: argparse.Namespace) -> int:
    out, err = sys.stdout, sys.stderr
    profile = profile_of(args)
    data_dir = data_dir_of(args)
    # From here on library warnings and log records go to the run's log file, not the terminal.
    log_path = data_dir / "logs" / f"orion-run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    log_handler = console.open_run_log(log_path)
    try:
        return _run(args, profile, data_dir, log_path, out, err)
    finally:
        logging.getLogger().removeHandler(log_handler)
        log_handler.close()


def _preflight(args: argparse.Namespace, profile: Profile, data_dir: Path, out, err) -> int | None:
    """``orion check`` before the run: its problems stop it (exit 2), its warnings and plan are shown."""
    report_ = run_preflight(profile, data_dir, selection=args.select)
    for line in report_.problems:
        print(f"orion run: {line}", file=err)
    if report_.problems:
        print(f"orion run: the preflight check found {len(report_.problems)} problem(s); `orion check` shows "
              "the whole report (--no-check skips it)", file=err)
        return 2
    if not args.quiet:
        for line in report_.warnings:
            print(f"orion run: warning: {line}", file=out)
        print("\n".join(report_.plan), file=out, flush=True)
    return None


def _run(args: argparse.Namespace, profile: Profile, data_dir: Path, log_path: Path, out, err) -> int:
    quiet = args.quiet
    # Deferred: dagster and transformers take seconds to import; only orion run needs them.
    import dagster as dg
    from transformers.utils import logging as hf_logging

    defs = definitions(profile, data_dir)

    hf_logging.disable_progress_bar()
    instance = _instance()
    graph = defs.resolve_asset_graph()
    keys = selectable_keys(graph)
    unknown = unknown_assets(args.select, keys)
    if unknown:
        for line in _partition_selected(unknown, profile, graph, keys):
            print(f"orion run: {line}", file=err)
        print(f"orion run: unknown asset(s): {', '.join(unknown)}", file=err)
        return 2
    if args.select:
        keys = [k for k in keys if k.to_user_string() in set(args.select)]
    steps = [(key, pk) for key in keys for pk in _partition_keys(graph.get(key).partitions_def)]
    if not quiet:
        print(
            f"orion run: profile {profile.name} ({profile.hash}), data {data_dir}, "
            f"DAGSTER_HOME {os.environ['DAGSTER_HOME']}: {len(steps)} materializations",
            file=out, flush=True,
        )
    if not args.no_check and (code := _preflight(args, profile, data_dir, out, err)) is not None:
        return code
    for line in [] if quiet else _left_out(profile.config):
        print(f"orion run: {line}", file=out, flush=True)

    previous_log_env = os.environ.get("ORION_LOG_FILE")
    os.environ["ORION_LOG_FILE"] = str(log_path)  # the SFT process appends its own output there
    bars = console.ProgressBars(out, live=console.is_terminal(out))
    if not quiet:
        bars.install()
    assets = [*(defs.assets or []), *(defs.asset_checks or [])]
    started = time.monotonic()
    refused: dict[str, str] = {}  # student/variant[/seed] -> the step that failed for it
    try:
        for number, (key, pk) in enumerate(steps, start=1):
            label = key.to_user_string() + (f"[{pk}]" if pk is not None else "")
            prefix = f"[{number}/{len(steps)}] {label}"
            if pk is not None and (failed := _refused_above(pk, refused)) is not None:
                if not quiet:
                    print(f"{prefix} skipped: {failed} failed", file=out, flush=True)
                continue
            if not quiet:
                print(f"{prefix} ...", end=" ", file=out, flush=True)
            bars.begin(prefix)
            t0, cpu0 = time.monotonic(), _cpu_seconds()
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"== {prefix}\n")
            with console.capture_output(log_path):
                result = dg.materialize(
                    assets,
                    selection=[key],
                    partition_key=str(pk) if pk is not None else None,
                    instance=instance,
                    resources=defs.resources,
                    raise_on_error=False,
                    tags={"orion/launched_by": "orion run"},
                    # Dagster's log lines go to the run's log file (stderr is captured there).
                    run_config={"loggers": {"console": {"config": {"log_level": args.log_level}}}},
                )
            elapsed, cpu = time.monotonic() - t0, _cpu_seconds() - cpu0
            summaries, drew = bars.end()
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"== {prefix}: {'ok' if result.success else 'FAILED'} (Dagster run {result.run_id})\n")
            again = f"\r\x1b[K{prefix} ... " if drew else ""
            calls = "; " + "; ".join(summaries) if summaries else ""
            if not result.success:
                if not quiet:
                    print(f"{again}FAILED after {elapsed:.1f}s (run {result.run_id}){calls}", file=out, flush=True)
                code = report_failure(result, key.to_user_string(), label, log_path, args.debug, err,
                                      profile.config.student_model.name_or_path)
                model = _model_part(pk) if pk is not None else None
                if model is None:
                    return code
                # One variant refused (its gate failed, its SFT failed): the others go on; the run fails at the end.
                refused[model] = label
                continue
            if not quiet:
                rows = [
                    m.metadata.get("dagster/row_count")
                    for m in result.asset_materializations_for_node(key.path[-1])
                ]
                row_text = f"{rows[0].value} rows, " if rows and rows[0] is not None else ""
                print(f"{again}ok ({row_text}{elapsed:.1f}s, {cpu:.1f}s CPU){calls}", file=out, flush=True)
            if report_checks(result, label, err, prefix="warning: "):
                # The gate blocks nothing by itself: each failed variant's SFT is refused, the others train.
                print(f"  those variants' SFT data and checkpoints are refused, the others go on; more: "
                      f"{gate_query(result.run_id)}", file=err, flush=True)
    finally:
        bars.uninstall()
        if previous_log_env is None:
            os.environ.pop("ORION_LOG_FILE", None)
        else:
            os.environ["ORION_LOG_FILE"] = previous_log_env
    print(f"orion run: {len(steps)} materializations in {time.monotonic() - started:.1f}s (log: {log_path})",
          file=out, flush=True)
    if refused:
        print(f"orion run: {len(refused)} model(s) failed and were left out of what followed: "
              + "; ".join(f"{model} ({step})" for model, step in refused.items()), file=err, flush=True)
        return 1
    return 0
