"""The ``orion`` command: check a profile before a run, run the whole graph, query the DuckDB file."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import duckdb

from orion_assets.vocabulary import BENCHMARKS

BENCHMARK_NAMES = frozenset(BENCHMARKS)
READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN"}


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or os.environ.get("ORION_DATA_DIR", "data")).expanduser().resolve()


def _store(args: argparse.Namespace, command: str, profile=None):
    """The store the active profile's ``[store]`` names; the DuckDB file in the data folder when
    the profile does not load (said on stderr)."""
    from orion_assets.profiles import ProfileError, load_profile
    from orion_assets.store import store_for

    data_dir = _data_dir(args)
    if profile is None:
        try:
            profile = load_profile()
        except ProfileError as exc:
            print(f"orion {command}: {exc}; reading the DuckDB file in {data_dir}", file=sys.stderr)
    return store_for(profile.config.store if profile is not None else None, data_dir)


# -- orion run -----------------------------------------------------------------------------------


def _instance():
    import dagster as dg

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path("dagster_home").resolve())))
    home.mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.get()


def _partition_keys(partitions_def, benchmarks: set[str], skipped_variants: set[str] = frozenset()) -> list[str | None]:
    """Every partition key, leaving out benchmarks that the profile does not evaluate and
    variants it cannot train honestly."""
    if partitions_def is None:
        return [None]
    keys = []
    for key in partitions_def.get_partition_keys():
        values = set(getattr(key, "keys_by_dimension", {"_": key}).values())
        if any(v in BENCHMARK_NAMES and v not in benchmarks for v in values):
            continue
        if values & skipped_variants:
            continue
        keys.append(key)
    return keys


def _apply_env(args: argparse.Namespace) -> None:
    if getattr(args, "profile", None):
        os.environ["ORION_PROFILE"] = args.profile
    if args.data_dir:
        os.environ["ORION_DATA_DIR"] = str(_data_dir(args))


def _definitions():
    """``orion_assets.definitions.defs``, without Dagster's beta-API warnings (for developers, not users)."""
    import warnings

    import dagster as dg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        warnings.simplefilter("ignore", dg.PreviewWarning)
        from orion_assets.definitions import defs
    return defs


def _selectable_keys(graph) -> list:
    return [k for k in graph.toposorted_asset_keys if graph.get(k).is_materializable]


def _unknown_assets(wanted: Sequence[str] | None, keys) -> list[str]:
    return sorted(set(wanted or ()) - {k.to_user_string() for k in keys})


def run(args: argparse.Namespace) -> int:
    _apply_env(args)
    out, err = sys.stdout, sys.stderr
    from orion_assets.profiles import load_profile

    profile = load_profile()
    from orion_assets.cli import console

    data_dir = _data_dir(args)
    # From here on library warnings and log records go to the run's log file, not the terminal.
    log_path = data_dir / "logs" / f"orion-run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    log_handler = console.open_run_log(log_path)
    try:
        return _run(args, profile, data_dir, log_path, out, err)
    finally:
        logging.getLogger().removeHandler(log_handler)
        log_handler.close()


def _run(args: argparse.Namespace, profile, data_dir: Path, log_path: Path, out, err) -> int:
    quiet = args.quiet
    import dagster as dg
    from transformers.utils import logging as hf_logging

    from orion_assets.cli import console
    from orion_assets.method.variants import skipped_variants

    defs = _definitions()

    hf_logging.disable_progress_bar()
    instance = _instance()
    graph = defs.resolve_asset_graph()
    keys = _selectable_keys(graph)
    unknown = _unknown_assets(args.select, keys)
    if unknown:
        print(f"orion run: unknown asset(s): {', '.join(unknown)}", file=err)
        return 2
    if args.select:
        keys = [k for k in keys if k.to_user_string() in set(args.select)]
    skipped = skipped_variants(profile.config)
    steps = [
        (key, pk)
        for key in keys
        for pk in _partition_keys(graph.get(key).partitions_def, set(profile.config.data.benchmarks), set(skipped))
    ]
    if not quiet:
        print(
            f"orion run: profile {profile.name} ({profile.hash}), data {data_dir}, "
            f"DAGSTER_HOME {os.environ['DAGSTER_HOME']}: {len(steps)} materializations",
            file=out, flush=True,
        )
    if not args.no_check:
        from orion_assets.cli.check import run_preflight

        report_ = run_preflight(profile, data_dir, selection=args.select)
        for line in report_.problems:
            print(f"orion run: {line}", file=err)
        if report_.problems:
            print(f"orion run: the preflight check found {len(report_.problems)} problem(s); `orion check` shows "
                  "the whole report (--no-check skips it)", file=err)
            return 2
        if not quiet:
            for line in report_.warnings:
                print(f"orion run: warning: {line}", file=out)
            print("\n".join(report_.plan), file=out, flush=True)
    for variant, why in skipped.items():
        if not quiet:
            print(f"orion run: leaving out variant {variant}: {why}", file=out, flush=True)

    previous_log_env = os.environ.get("ORION_LOG_FILE")
    os.environ["ORION_LOG_FILE"] = str(log_path)  # the SFT process appends its own output there
    bars = console.ProgressBars(out, live=console.is_terminal(out))
    if not quiet:
        bars.install()
    assets = [*(defs.assets or []), *(defs.asset_checks or [])]
    started = time.monotonic()
    try:
        for number, (key, pk) in enumerate(steps, start=1):
            label = key.to_user_string() + (f"[{pk}]" if pk is not None else "")
            prefix = f"[{number}/{len(steps)}] {label}"
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
                return _report_failure(result, key.to_user_string(), label, log_path, args.debug, err,
                                       profile.config.student_model.name_or_path)
            if not quiet:
                rows = [
                    m.metadata.get("dagster/row_count")
                    for m in result.asset_materializations_for_node(key.path[-1])
                ]
                row_text = f"{rows[0].value} rows, " if rows and rows[0] is not None else ""
                print(f"{again}ok ({row_text}{elapsed:.1f}s, {cpu:.1f}s CPU){calls}", file=out, flush=True)
    finally:
        bars.uninstall()
        if previous_log_env is None:
            os.environ.pop("ORION_LOG_FILE", None)
        else:
            os.environ["ORION_LOG_FILE"] = previous_log_env
    print(f"orion run: {len(steps)} materializations in {time.monotonic() - started:.1f}s (log: {log_path})",
          file=out, flush=True)
    return 0


def _cpu_seconds() -> float:
    """User + system CPU of this process (all threads), of its child processes that have ended (an
    SFT run) and of those still running (the grading workers): where a step's time went, beside its
    wall time. Deltas of this sum are a step's CPU."""
    import resource

    import psutil

    own, ended = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + ended.ru_utime + ended.ru_stime
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:  # it ended meanwhile: counted in RUSAGE_CHILDREN once reaped
            continue
        total += times.user + times.system
    return total


# -- explaining a failed step ----------------------------------------------------------------------

# Exceptions that mean the user's input or setup is wrong, not the code: one line, exit 2.
USER_ERRORS = frozenset({"ProfileError", "InputError", "EndpointError"})
HUB_ERRORS = frozenset({"LocalEntryNotFoundError", "OfflineModeIsEnabled", "RepositoryNotFoundError",
                        "GatedRepoError", "RevisionNotFoundError"})
FAILING_IDS_SHOWN = 5


def _error_chain(error) -> list:
    chain = []
    while error is not None and len(chain) < 20:
        chain.append(error)
        error = error.cause or getattr(error, "context", None)
    return chain


def _first_line(message: str, cls_name: str) -> str:
    """The message's first line without Dagster's ``module.ClsName: `` prefix."""
    import re

    text = re.sub(rf"^(?:[\w.]+\.)?{re.escape(cls_name)}: ", "", message.strip())
    return text.splitlines()[0].strip() if text else cls_name


def user_error_message(cls_name: str, message: str, model: str | None = None) -> str | None:
    """The one line to show for a user error (None: not one). ``model``: the profile's student model."""
    if cls_name in USER_ERRORS:
        return _first_line(message, cls_name)
    if cls_name in HUB_ERRORS:
        name = model or "the model"
        why = "HF_HUB_OFFLINE is set" if "outgoing traffic has been disabled" in message else "the Hub refused or could not be reached"
        return (f"{name} is not in the Hugging Face cache and {why} ({cls_name}): download it first "
                f"(hf download {model or '<id>'}) or point [student_model] name_or_path at a local directory")
    return None


def _meta(metadata, key: str, default=None):
    value = metadata.get(key, default)
    return getattr(value, "value", value) if value is not None else default


def _check_failure_lines(event) -> list[str]:
    """Why a blocking check failed, from its evaluation's metadata: per failed variant its
    expectations, counts and a few failing ids (older verdicts: the overall lists)."""
    evaluation = event.event_specific_data
    metadata = evaluation.metadata or {}
    lines = []
    variants = _meta(metadata, "variants") or {}
    for name, verdict in variants.items() if isinstance(variants, dict) else ():
        if isinstance(verdict, dict) and not verdict.get("passed", True):
            lines.append(str(verdict.get("message") or f"variant {name} failed {verdict.get('failed_expectations')}"))
    if not lines:
        failed = _meta(metadata, "failed_expectations") or _meta(metadata, "failed") or []
        ids = list(_meta(metadata, "failing_ids") or [])
        count = _meta(metadata, "failing_id_count", len(ids))
        rows = _meta(metadata, "row_count")
        shown = ", ".join(map(str, ids[:FAILING_IDS_SHOWN])) + (f" (+{count - FAILING_IDS_SHOWN} more)"
                                                                if count > FAILING_IDS_SHOWN else "")
        lines.append(f"failed expectations: {', '.join(map(str, failed)) or '?'}"
                     + (f" on {rows} rows" if rows is not None else "") + (f"; failing ids: {shown}" if ids else ""))
    return lines


def _report_failure(result, asset: str, label: str, log_path: Path, debug: bool, err, model: str | None = None) -> int:
    """Print why a step failed, from the run's events, and where to look further; the exit code."""
    run_id = result.run_id
    failed_checks = [
        e for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.event_specific_data.passed
    ]
    failures = [e for e in result.all_events if e.is_step_failure]
    more = [f"the log: {log_path}",
            f"the run in the Dagster UI (dagster dev): http://127.0.0.1:3000/runs/{run_id}"]
    code = 1
    if failed_checks:
        for event in failed_checks:
            evaluation = event.event_specific_data
            variants = _meta(evaluation.metadata or {}, "failed_variants") or []
            scope = f" for variant(s) {', '.join(variants)}" if variants else ""
            kind = "blocking check" if evaluation.blocking else "check"
            print(f"orion run: {label}: the {kind} {evaluation.check_name} failed{scope}", file=err)
            for line in _check_failure_lines(event):
                print(f"  {line}", file=err)
        if any(e.event_specific_data.check_name == "quality_gate" for e in failed_checks):
            more.insert(0, f"orion sql \"SELECT * FROM orion.quality_gate_results WHERE dagster_run_id = '{run_id}'\"")
    elif failures:
        data = failures[0].step_failure_data
        error = data.error
        chain = _error_chain(error)
        user = next((m for e in chain if (m := user_error_message(e.cls_name, e.message, model)) is not None), None)
        if user is not None and not debug:
            print(f"orion run: {asset}: {user}", file=err)
            return 2
        if data.user_failure_data is not None and data.user_failure_data.description:
            reason = data.user_failure_data.description
        else:
            inner = chain[-1] if chain else None
            reason = f"{inner.cls_name}: {_first_line(inner.message, inner.cls_name)}" if inner else "unknown error"
        print(f"orion run: {label}: {reason}", file=err)
        code = 2 if user is not None else 1
    else:
        print(f"orion run: {label}: the run failed without a step failure (see the log)", file=err)
    if debug:
        for event in failures:
            if event.step_failure_data.error is not None:
                print(event.step_failure_data.error.to_string(), file=err)
    print("  more: " + "\n        ".join(more), file=err)
    return code


# -- orion check -----------------------------------------------------------------------------------


def check(args: argparse.Namespace) -> int:
    _apply_env(args)
    from orion_assets.cli.check import run_preflight
    from orion_assets.profiles import load_profile

    profile = load_profile()
    if args.select:
        unknown = _unknown_assets(args.select, _selectable_keys(_definitions().resolve_asset_graph()))
        if unknown:
            print(f"orion check: unknown asset(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
    report_ = run_preflight(profile, _data_dir(args), selection=args.select, timeout_s=args.timeout)
    print(report_.render(), flush=True)
    warnings = f", {len(report_.warnings)} warning(s)" if report_.warnings else ""
    if report_.problems:
        for line in report_.problems:
            print(f"orion check: {line}", file=sys.stderr)
        return 2
    print(f"orion check: ok{warnings}", flush=True)
    return 0


# -- orion sql -----------------------------------------------------------------------------------


def check_read_only(sql: str) -> list[str]:
    """Split ``sql`` into statements and refuse any that is not a query.

    Besides queries, only statements that choose the default schema are let through (``USE
    orion``, ``SET schema``/``search_path = '...'``): the files in ``sql/`` start with ``USE
    orion;`` so that they also run in a plain DuckDB client (see ``sql/README.md``). Every other
    ``SET`` is refused: some write files (``SET profiling_output``, ``SET log_query_path``).
    """
    import re

    ident = r'(?:[A-Za-z_][\w$]*|"[^"]+")'
    namespace = re.compile(
        rf"USE\s+{ident}(?:\s*\.\s*{ident})?|SET\s+(?:SESSION\s+)?(?:schema|search_path)\s*(?:=|TO)\s*'[^';]*'",
        re.IGNORECASE,
    )
    statements = duckdb.extract_statements(sql)
    if not statements:
        raise ValueError("no SQL statement given")
    for statement in statements:
        kind = statement.type.name
        if kind == "SET":
            bare = re.sub(r"--[^\n]*|/\*.*?\*/", " ", statement.query, flags=re.DOTALL).strip().rstrip(";").strip()
            if namespace.fullmatch(bare):
                continue
        if kind not in READ_ONLY_STATEMENTS:
            raise PermissionError(f"orion sql is read-only: refusing a {kind} statement: {statement.query.strip()[:80]}")
    return [s.query for s in statements]


def _is_file(text: str) -> bool:
    """Whether ``orion sql``'s argument names a file (a long query is no file name: the OS refuses it)."""
    try:
        return Path(text).is_file()
    except OSError:
        return False


def sql(args: argparse.Namespace) -> int:
    from orion_assets.store.ducklake import StoreError

    text = args.query
    if text.endswith(".sql") or _is_file(text):
        path = Path(text)
        if not path.is_file():
            print(f"orion sql: no such file {path}", file=sys.stderr)
            return 2
        text = path.read_text(encoding="utf-8")
    try:
        statements = check_read_only(text)
    except (PermissionError, ValueError, duckdb.Error) as exc:
        print(f"orion sql: {exc}", file=sys.stderr)
        return 2
    try:
        store = _store(args, "sql")
        with store.connect(read_only=True) as con:
            for statement in statements:
                relation = con.sql(statement)
                if relation is None:
                    continue
                frame = relation.pl()
                if args.format == "csv":
                    sys.stdout.write(frame.write_csv())
                elif args.format == "json":
                    sys.stdout.write(frame.write_ndjson())
                else:
                    import polars as pl

                    with pl.Config(tbl_rows=args.max_rows, tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=200):
                        print(frame)
    except (duckdb.Error, FileNotFoundError, StoreError) as exc:
        print(f"orion sql: {exc}", file=sys.stderr)
        return 1
    return 0


# -- orion report --------------------------------------------------------------------------------


def report(args: argparse.Namespace) -> int:
    from orion_assets.method.evaluation.report import build_report, prices_of
    from orion_assets.profiles import ProfileError, load_profile
    from orion_assets.store import store_in
    from orion_assets.store.ducklake import StoreError

    data_dir = _data_dir(args)
    out_dir = Path(args.out).expanduser().resolve() if args.out else data_dir / "reports"
    try:  # the active profile's prices turn tokens into dollars, its [store] says where the tables are
        profile = load_profile()
    except ProfileError:
        profile = None
    prices = prices_of(profile.config) if profile is not None else None
    try:
        # a profile that does not load: the DuckDB file in the data folder, as before [store] existed
        store = _store(args, "report", profile) if profile is not None else store_in(data_dir)
        result = build_report(store, out_dir, prices=prices)
    except (FileNotFoundError, ValueError, duckdb.Error, StoreError) as exc:
        print(f"orion report: {exc}", file=sys.stderr)
        return 1
    print(result.markdown_path)
    return 0


# -- entry point ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orion", description=__doc__)
    parser.add_argument("--data-dir", help="the data folder (default $ORION_DATA_DIR or data/)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors and failed steps")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)

    run_parser = commands.add_parser("run", parents=[common],
                                     help="materialize every asset and partition of the active profile")
    run_parser.add_argument("--profile", help="profile name or path (default $ORION_PROFILE or tiny)")
    run_parser.add_argument("--select", nargs="+", help="only these asset keys (default: all)")
    run_parser.add_argument("--no-check", action="store_true", help="skip the preflight check (orion check)")
    run_parser.add_argument("-q", "--quiet", action="store_true", help="print only the summary (and errors)")
    run_parser.add_argument("--log-level", default="INFO",
                            help="level of Dagster's log lines in the run's log file (default INFO)")
    run_parser.set_defaults(handler=run)

    check_parser = commands.add_parser("check", parents=[common],
                                       help="check the profile, endpoints, model, disk and planned work before a run")
    check_parser.add_argument("--profile", help="profile name or path (default $ORION_PROFILE or tiny)")
    check_parser.add_argument("--select", nargs="+", help="check only what these asset keys need (default: all)")
    check_parser.add_argument("--timeout", type=float, default=5.0, help="seconds per HTTP request (default 5)")
    check_parser.set_defaults(handler=check)

    sql_parser = commands.add_parser("sql", parents=[common],
                                     help="run read-only SQL (a query or a .sql file) on the DuckDB file")
    sql_parser.add_argument("query", help="a SQL query or the path of a .sql file")
    sql_parser.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sql_parser.add_argument("--max-rows", type=int, default=50)
    sql_parser.set_defaults(handler=sql)

    report_parser = commands.add_parser("report", parents=[common],
                                        help="write the leaderboard report (Markdown and plots)")
    report_parser.add_argument("--out", help="the report folder (default <data dir>/reports)")
    report_parser.set_defaults(handler=report)

    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except Exception as exc:
        # A user error (a profile, an input file, a missing key) is one line, not a traceback.
        message = None if args.debug else user_error_message(type(exc).__name__, str(exc))
        if message is None:
            raise
        print(f"orion {args.command}: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
