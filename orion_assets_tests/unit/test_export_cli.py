"""``orion export``'s usage errors exit 2 (the README's promise, kept by ``orion sql``) before anything is read or
written, and ``orion --help`` / ``orion export --help`` read as plain text."""

from __future__ import annotations

import pytest

from orion_assets.cli.main import main


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_help_has_no_rest_markup_and_export_has_a_description(capsys) -> None:
    top = _help(capsys)
    assert "``" not in top and "The orion command:" in top
    export = _help(capsys, "export")
    description = export.split("options:")[0].split("\n\n", 1)[1]  # between the usage and the options
    assert "SFT data" in description and "docs/export.md" in description and "``" not in export


@pytest.mark.parametrize(("argv", "message"), [
    (["--merged"], "--merged merges the exported checkpoints: add --checkpoints"),
    (["--format", "jsonl", "--push-to-hub", "me/data"], "--push-to-hub pushes the hf format, not jsonl"),
    (["--variants", "orion", "nonsense"], "unknown variant(s) nonsense"),
    (["--out-is-a-file"], "is a file: --out names a folder"),
    (["--out-is-not-empty"], "is not empty and holds no earlier export"),
])
def test_usage_errors_exit_2_with_one_line(argv, message, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    if argv == ["--out-is-a-file"]:
        out.write_text("mine")
        argv = []
    elif argv == ["--out-is-not-empty"]:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        argv = []
    monkeypatch.setenv("HF_TOKEN", "hf_unused")  # the token is not what is wrong here
    data_dir = tmp_path / "data"  # no store: a usage error is found before the store is read
    assert main(["--data-dir", str(data_dir), "export", "--out", str(out), "--profile", "tiny", *argv]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("orion export: ") and message in err[0], err
    assert not data_dir.exists() and not (tmp_path / ".out.partial").exists()


def test_a_missing_store_is_not_a_usage_error(tmp_path, capsys) -> None:
    """Nothing to export (no store yet) exits 1, as docs/export.md says, and names what to run."""
    assert main(["--data-dir", str(tmp_path / "data"), "export", "--out", str(tmp_path / "out"), "--profile",
                 "tiny"]) == 1
    assert "run `orion run` first" in capsys.readouterr().err
