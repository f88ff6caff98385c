"""Screenshots of the plots in the Dagster UI: the ``student_checkpoint`` materialization's loss curve and the
``leaderboard``'s pass@1-interval plot, as a user opens them after a run.

``python -m orion_devtools.ui_screenshots --out docs`` starts ``dagster dev`` on the Dagster home and data folder
of a finished run (``DAGSTER_HOME``, ``ORION_DATA_DIR``, ``ORION_PROFILE`` from the environment), opens each
asset's events page in headless Chromium, opens the metadata entry's Markdown (Dagster shows a long one behind a
"[Show Markdown]" link, in a dialog) and saves the page with the image drawn in it: ``ui-loss-curve.png`` and
``ui-leaderboard-plot.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from orion_devtools.ui_browser import Chromium, DagsterDev, find_chromium

LOSS_CURVE_SHOT = "ui-loss-curve.png"
LEADERBOARD_SHOT = "ui-leaderboard-plot.png"
RENDER_TIMEOUT = 90.0

# Where the metadata entry's "[Show Markdown]" link is, scrolled into view (null until the entry is shown). A real
# mouse click opens it (CDP Input events); a click() from script does not reach Dagster's handler.
MARKDOWN_LINK_JS = """
((label) => {
  const row = [...document.querySelectorAll('tr')].find(r => r.innerText.trim().split(/\\s/)[0] === label);
  const link = row && [...row.querySelectorAll('a')].find(a => a.innerText.includes('Show Markdown'));
  if (!link) return null;
  link.scrollIntoView({block: 'center'});
  const box = link.getBoundingClientRect();
  return [box.x + box.width / 2, box.y + box.height / 2];
})(%s)
"""
# The images Dagster drew from data: URLs, with their rendered size (0 x 0 while not decoded).
DRAWN_IMAGES_JS = """
[...document.querySelectorAll('img')].filter(i => i.src.startsWith('data:image/png'))
  .map(i => ({width: i.naturalWidth, height: i.naturalHeight, shown: i.getBoundingClientRect().width}))
"""


@dataclass(frozen=True)
class Shot:
    """A saved screenshot, the materialization page it shows and the inline PNGs drawn on it."""

    path: Path
    url: str
    images: list[dict]


def _env(base: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    for name in ("DAGSTER_HOME", "ORION_DATA_DIR"):
        if not env.get(name):
            raise SystemExit(f"ui_screenshots: set {name} to the finished run's folder")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", DAGSTER_DISABLE_TELEMETRY="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def _asset_url(server: DagsterDev, asset: str, partition: str | None) -> str:
    query = {"view": "events", **({"partition": partition} if partition else {})}
    return f"{server.url}/assets/{asset}?{urllib.parse.urlencode(query)}"


def capture(browser: Chromium, server: DagsterDev, asset: str, partition: str | None, entry: str, path: Path,
            height: int) -> Shot:
    """Open ``asset``'s events page (one ``partition``), open metadata ``entry``'s Markdown, wait for its image
    and save the page, ``height`` pixels high, to ``path``."""
    browser.send("Emulation.setDeviceMetricsOverride",
                 {"width": browser.width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    url = _asset_url(server, asset, partition)
    browser.navigate(url)
    x, y = browser.wait_for(MARKDOWN_LINK_JS % json.dumps(entry), timeout=RENDER_TIMEOUT,
                            describe=lambda: browser.text()[:2000])
    time.sleep(1.0)  # the scroll settles
    x, y = browser.evaluate(MARKDOWN_LINK_JS % json.dumps(entry))
    for kind in ("mousePressed", "mouseReleased"):
        browser.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})
    images = browser.wait_for(f"(() => {{ const i = {DRAWN_IMAGES_JS}; return i.some(x => x.width > 0) ? i : null; }})()",
                              timeout=RENDER_TIMEOUT, describe=lambda: browser.text()[:2000])
    time.sleep(1.0)  # the dialog's animation
    browser.screenshot(path)
    return Shot(path, url, images)


def take(out_dir: Path, partition: str, env: Mapping[str, str] | None = None, chromium: str | None = None) -> list[Shot]:
    """Both screenshots of the run whose Dagster home and data folder ``env`` (default: this process's environment)
    names, ``partition`` the checkpoint shown; ``dagster dev`` logs to the data folder's ``logs/``."""
    binary = chromium or find_chromium()
    if binary is None:
        raise SystemExit("ui_screenshots: no Chromium (apt-get install -y chromium, or set ORION_CHROMIUM)")
    run_env = _env(os.environ if env is None else env)
    log = Path(run_env["ORION_DATA_DIR"]) / "logs" / "ui_screenshots_dagster_dev.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with DagsterDev(run_env, log_path=log) as server, \
            Chromium(binary, width=1500, height=900) as browser:
        return [
            capture(browser, server, "student_checkpoint", partition, "loss_curve_plot", out_dir / LOSS_CURVE_SHOT, 900),
            capture(browser, server, "leaderboard", None, "plot_pass1_intervals", out_dir / LEADERBOARD_SHOT, 1700),
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orion_devtools.ui_screenshots", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for the PNGs (default: docs)")
    parser.add_argument("--partition", default="tiny/orion/0", help="the student_checkpoint partition to open")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for shot in take(args.out, args.partition):
        print(f"{shot.path}: {shot.url} ({len(shot.images)} inline PNG(s): {shot.images})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
