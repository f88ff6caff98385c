"""Shared fixtures: a private data folder, Dagster instance and profile for each test."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

# Nothing in the suite may reach the Hugging Face Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_UPDATE_CHECK", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ORION_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture
def orion_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A fresh ORION_DATA_DIR and DAGSTER_HOME under tmp_path, exported for subprocesses too."""
    data_dir = tmp_path / "data"
    dagster_home = tmp_path / "dagster_home"
    data_dir.mkdir()
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("ORION_DATA_DIR", str(data_dir))
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    return {"data_dir": data_dir, "dagster_home": dagster_home, "tmp": tmp_path}


@pytest.fixture
def write_profile(tmp_path: Path) -> Callable[..., Path]:
    """Write a profile TOML (``extends = "tiny"`` unless given) and return its path."""

    def write(body: str = "", name: str = "profile.toml", extends: str | None = "tiny") -> Path:
        path = tmp_path / name
        head = f'extends = "{extends}"\n' if extends else ""
        path.write_text(head + textwrap.dedent(body))
        return path

    return write
