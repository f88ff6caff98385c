"""`orion run`'s per-step CPU: a server's engine process counted while it ran, then stopped and reaped outside this
process (so its CPU leaves every counter), must not make the next step's CPU negative (measured: -193 s)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from orion_assets.cli import run as orion_run_cli


def test_an_engine_that_vanishes_does_not_take_its_cpu_back():
    # A parent (the API server) whose child (the engine) burns CPU; the parent dies first, so the engine is
    # re-parented away from this process and reaped by someone else, as when a stopped server's group is killed.
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'while True: pass']);"
                               " time.sleep(60)"], start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            engines = psutil.Process(parent.pid).children()
            if engines and engines[0].cpu_times().user > 0.5:
                break
            time.sleep(0.1)
        assert engines, "the engine did not start"
        during = orion_run_cli._cpu_seconds()
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()
        psutil.wait_procs(engines, timeout=10)
        after = orion_run_cli._cpu_seconds()
        assert after >= during, (during, after)
        # and what runs next is counted from there, not swallowed by the engine's lost CPU
        burn = subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 1: pass"])
        assert burn.returncode == 0 and orion_run_cli._cpu_seconds() - after >= 0.9
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
