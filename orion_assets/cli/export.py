"""``orion export``: the run's SFT data, and optionally its checkpoints, in the field's formats (docs/export.md)."""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from orion_assets.cli.common import data_dir_of, open_store, usage_error
from orion_assets.export import FORMATS, ExportError, ExportRequest, ExportUsageError, export
from orion_assets.profiles import ProfileError, load_profile
from orion_assets.store import store_in
from orion_assets.store.ducklake import StoreError

# orion export --help (plain text: argparse prints it as is)
DESCRIPTION = ("Export what a run made, read-only from its store: the SFT data of each student and variant whose "
               "quality gate passed, as a Hugging Face dataset with its card (hf), LLaMA-Factory files "
               "(llamafactory) or OpenAI chat JSONL (jsonl), and with --checkpoints its LoRA adapters or merged "
               "weights with model cards. orion_export.json records what it was made from. Exits 1 when a "
               "variant was refused or nothing could be exported, 2 on a usage error. See docs/export.md.")


def add_export_parser(commands, parents: list[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("export", parents=parents, description=DESCRIPTION,
                                 help="export the SFT data (hf, llamafactory, jsonl) and checkpoints")
    parser.add_argument("--out", required=True, help="the export folder (empty, new, or an earlier export)")
    parser.add_argument("--format", choices=FORMATS, default="hf", help="dataset format (default hf)")
    parser.add_argument("--profile", help="profile name or path (default $ORION_PROFILE or tiny): describes the run")
    parser.add_argument("--student", nargs="+", default=[], help="only these students (default: every one)")
    parser.add_argument("--variants", nargs="+", default=[], help="only these variants (default: every trained one)")
    parser.add_argument("--checkpoints", action="store_true", help="also export each variant's checkpoint")
    parser.add_argument("--merged", action="store_true", help="with --checkpoints: base weights merged with the adapter")
    parser.add_argument("--push-to-hub", metavar="REPO", help="push the hf dataset to this Hub repo (token: $HF_TOKEN)")
    parser.set_defaults(handler=export_command)


def _command(args: argparse.Namespace) -> str:
    """The command as parsed, spelled out (every option that was given), for the provenance file."""
    words = ["orion", *(["--data-dir", args.data_dir] if args.data_dir else []), "export", "--out", args.out,
             "--format", args.format]
    for option in ("profile", "push_to_hub"):
        if getattr(args, option):
            words += [f"--{option.replace('_', '-')}", getattr(args, option)]
    for option in ("student", "variants"):
        if getattr(args, option):
            words += [f"--{option}", *getattr(args, option)]
    words += [f"--{flag}" for flag in ("checkpoints", "merged") if getattr(args, flag)]
    return shlex.join(words)


@contextmanager
def _quiet(request: ExportRequest) -> Iterator[None]:
    """The summary is the command's output: no progress bars from datasets (saving the hf dataset) or transformers
    (saving merged weights), and not the libraries' deprecation notices (FutureWarning), meant for their callers."""
    if request.format == "hf":
        import datasets  # deferred: heavy, and only the hf format uses it

        datasets.disable_progress_bars()
    if request.checkpoints:
        from transformers.utils import logging as transformers_logging  # deferred: heavy

        transformers_logging.disable_progress_bar()  # also huggingface_hub's
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft|datasets)(\.|$)")
        yield


def export_command(args: argparse.Namespace) -> int:
    try:
        profile = load_profile(args.profile)
    except ProfileError as exc:
        print(f"orion export: {exc}; reading the DuckDB file in {data_dir_of(args)}, and the cards will not "
              "describe the run's teacher, student and sources", file=sys.stderr)
        profile = None
    try:
        request = ExportRequest(out=Path(args.out), format=args.format, students=tuple(args.student),
                                variants=tuple(args.variants), checkpoints=args.checkpoints, merged=args.merged,
                                push_to_hub=args.push_to_hub, command=_command(args))
        # a profile that does not load: the DuckDB file in the data folder (as orion report does)
        store = open_store(args, "export", profile) if profile is not None else store_in(data_dir_of(args))
        with _quiet(request):
            result = export(store, request, profile)
    except ExportUsageError as exc:
        return usage_error("export", exc)
    except (ExportError, FileNotFoundError, LookupError, duckdb.Error, StoreError) as exc:
        print(f"orion export: {exc}", file=sys.stderr)
        return 1
    for line in result.summary():
        print(line, file=sys.stderr if line.startswith("refused") else sys.stdout)
    print(result.out)
    return 1 if result.refused else 0
