"""The loss curves and pass@1 intervals of a whole ``orion run`` (the session's ``tiny_run``): in the store's
``student_checkpoint.loss_curve``, in the report folder, in the materializations' metadata, and drawn by the
Dagster UI in headless Chromium (``orion_devtools.ui_screenshots``).

With ``ORION_UPDATE_SCREENSHOT=1`` the screenshots replace ``docs/ui-loss-curve.png`` and
``docs/ui-leaderboard-plot.png``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from orion_assets.training import find_resume_checkpoint
from orion_assets.training.checkpoints import loss_curve
from orion_devtools.ui_browser import REPO_ROOT, find_chromium
from orion_devtools.ui_screenshots import LEADERBOARD_SHOT, LOSS_CURVE_SHOT, take

pytestmark = [pytest.mark.timeout(1800), pytest.mark.slow]

PARTITION = "tiny/orion/0"
DATA_URL = "data:image/png;base64,"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


def _inline_png(markdown: str) -> bytes:
    assert DATA_URL in markdown, markdown[:200]
    return base64.b64decode(markdown.split(DATA_URL, 1)[1].rstrip(")"))


def _latest_metadata(home: Path, asset: str) -> dict[str | None, dict]:
    """The latest materialization's metadata values of each partition of ``asset`` (None: unpartitioned)."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.fetch_materializations(dg.AssetKey(asset), limit=1000).records
    latest: dict[str | None, dict] = {}
    for record in sorted(records, key=lambda r: r.timestamp):
        event = record.asset_materialization
        latest[event.partition] = {k: v.value for k, v in event.metadata.items()}
    return latest


def test_a_run_s_curves_and_intervals_reach_the_store_the_metadata_and_the_ui(tiny_run, tmp_path):
    data_dir, home = tiny_run["data_dir"], tiny_run["home"]
    with duckdb.connect(str(data_dir / "orion_store.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT variant, seed, path, steps, loss_curve FROM orion.student_checkpoint").fetchall()
    trained = [r for r in rows if r[0] != "base"]
    assert trained and all(r[4] is None for r in rows if r[0] == "base")
    for variant, _seed, path, steps, curve in trained:
        # the column is the run's whole log_history, as its last checkpoint saved it
        last = find_resume_checkpoint(Path(path).parent)
        history = json.loads((last / "trainer_state.json").read_text())["log_history"]
        assert curve == loss_curve(history) and [p["step"] for p in curve] == list(range(1, steps + 1)), variant

    reports = data_dir / "reports"
    for name in ("loss_curves.png", "pass1_intervals.png"):
        assert _png_size((reports / name).read_bytes())[0] > 500
        assert f"]({name})" in (reports / "leaderboard.md").read_text()

    checkpoints = _latest_metadata(home, "student_checkpoint")
    plot = _inline_png(checkpoints[PARTITION]["loss_curve_plot"])
    assert _png_size(plot) == (704, 374) and len(plot) > 10_000
    assert "loss_curve_plot" not in checkpoints["tiny/base/0"]  # nothing trained, no curve
    (board,) = _latest_metadata(home, "leaderboard").values()
    intervals = _inline_png(board["plot_pass1_intervals"])
    assert _png_size(intervals) == _png_size((reports / "pass1_intervals.png").read_bytes())
    assert _png_size(_inline_png(board["plot_loss_curves"]))[0] > 500

    if find_chromium() is None:
        pytest.fail("Chromium is required for the UI screenshots (apt-get install -y chromium)", pytrace=False)
    if not (home / "dagster.yaml").exists():  # no "join the community" dialog over the page
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")
    curve_shot, board_shot = take(tmp_path, PARTITION, env=tiny_run["env"])
    # the UI drew each inline PNG at its own size: the image decoded, in the dialog the metadata entry opens
    assert [(i["width"], i["height"]) for i in curve_shot.images] == [_png_size(plot)]
    assert [(i["width"], i["height"]) for i in board_shot.images] == [_png_size(intervals)]
    for shot in (curve_shot, board_shot):
        assert 50_000 < shot.path.stat().st_size < 1_500_000, shot
    if os.environ.get("ORION_UPDATE_SCREENSHOT") == "1":
        for shot, name in ((curve_shot, LOSS_CURVE_SHOT), (board_shot, LEADERBOARD_SHOT)):
            shutil.copyfile(shot.path, REPO_ROOT / "docs" / name)
