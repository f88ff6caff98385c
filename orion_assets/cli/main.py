"""The orion command: check a profile before a run, run the whole graph, query the DuckDB file, export what a
run made."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from orion_assets.cli.check import check
from orion_assets.cli.common import usage_error
from orion_assets.cli.export import add_export_parser
from orion_assets.cli.failures import user_error_message
from orion_assets.cli.run import run
from orion_assets.cli.sql import report, sql
from orion_assets.serving import vllm_host


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orion", description=__doc__)  # plain text: --help prints it as is
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
    add_export_parser(commands, [common])

    vllm_parser = commands.add_parser("install-vllm", parents=[common],
                                      help="install vLLM's CPU build in an environment of its own, where serve = "
                                           '"vllm" finds it')
    vllm_parser.add_argument("--env", help=f"where (default {vllm_host.default_env()})")
    vllm_parser.set_defaults(handler=install_vllm)
    return parser


def install_vllm(args: argparse.Namespace) -> int:
    """``orion install-vllm``: vLLM's CPU build (pins of its own) in an environment beside this one."""
    vllm_host.install(Path(args.env) if args.env else None, say=lambda line: print(line, flush=True))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except Exception as exc:
        # A user error (a profile, an input file, a missing key) is one line, not a traceback.
        message = None if args.debug else user_error_message(type(exc).__name__, str(exc))
        if message is None:
            raise
        return usage_error(args.command, message)


if __name__ == "__main__":
    raise SystemExit(main())
