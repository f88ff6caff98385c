"""What ``orion run`` shows in the terminal: a tqdm bar per progress label (calls, cache hits,
errors, rate, ETA; training steps with loss) and a summary per step, from the records of
:mod:`orion_assets.progress`. Everything else a run prints goes to the run's log file.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from orion_assets.progress import CALL_FAILED, PROGRESS_ATTR, TERMINAL, progress_log

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass
class _Bar:
    """One label's progress over all of its batches (reflection sends one batch per try)."""

    label: str
    unit: str
    started: float = field(default_factory=time.monotonic)
    finished_total: int = 0  # calls of the batches already done
    batch_total: int | None = None
    batch_done: int = 0
    batch_started: float = 0.0
    batch_first: int = 0
    cached: int = 0
    sent_done: int = 0  # calls answered by the server (not the cache), for the rate
    sent_seconds: float = 0.0
    errors: int = 0
    open: bool = False
    fields: dict[str, Any] = field(default_factory=dict)
    tqdm: Any = None

    @property
    def done(self) -> int:
        return self.finished_total + self.batch_done

    @property
    def total(self) -> int | None:
        planned = self.fields.get("planned")  # the calls planned over all batches (an asset's chunks)
        if not self.open:
            return max(self.finished_total, planned or 0)
        if self.batch_total is None:
            return planned
        return max(self.finished_total + self.batch_total, planned or 0)

    def update(self, done: int, total: int | None, fields: dict[str, Any]) -> None:
        if self.open and self.unit == "calls" and (
            done < self.batch_done or total != self.batch_total
            or (self.batch_total is not None and self.batch_done >= self.batch_total)
        ):
            self.close_batch()
        if not self.open:
            self.open, self.batch_started, self.batch_first = True, time.monotonic(), done
            if self.unit == "calls":
                self.cached += done
        self.batch_done, self.batch_total = done, total
        self.fields.update(fields)

    def close_batch(self) -> None:
        if not self.open:
            return
        self.sent_done += self.batch_done - self.batch_first
        self.sent_seconds += time.monotonic() - self.batch_started
        self.finished_total += self.batch_done
        self.open, self.batch_total, self.batch_done, self.batch_first = False, None, 0, 0

    def rate(self) -> float | None:
        sent = self.sent_done + (self.batch_done - self.batch_first if self.open else 0)
        seconds = self.sent_seconds + (time.monotonic() - self.batch_started if self.open else 0.0)
        return sent / seconds if sent and seconds > 0 else None

    def postfix(self) -> str:
        parts = []
        if self.unit == "calls":
            parts += [f"{self.cached} cached", f"{self.errors} error{'s' if self.errors != 1 else ''}"]
        if self.fields.get("loss") is not None:
            parts.append(f"loss {self.fields['loss']:.4g}")
        rate = self.rate()
        if rate:
            parts.append(f"{rate:.1f} {self.unit}/s")
            if self.total is not None and self.total > self.done:
                parts.append(f"ETA {_clock((self.total - self.done) / rate)}")
        return ", ".join(parts)

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        if self.unit == "calls":
            rate = self.rate()
            speed = f", {rate:.1f} calls/s" if rate else ""
            return (f"{self.label}: {self.done} calls, {self.cached} cached, {self.errors} "
                    f"error{'s' if self.errors != 1 else ''}{speed}")
        loss = f", loss {self.fields['loss']:.4g}" if self.fields.get("loss") is not None else ""
        return f"{self.label}: {self.done} {self.unit}{loss} in {_clock(elapsed)}"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressBars(logging.Handler):
    """Renders progress records as tqdm bars on ``stream`` (when ``live``) and sums them up.

    Attach with :meth:`install`; between :meth:`begin` and :meth:`end` of a step every label gets
    one bar, drawn on the line of the step (``prefix``), and cleared at the end of the step, whose
    line the caller prints again with :meth:`end`'s summaries."""

    def __init__(self, stream: IO[str], live: bool):
        super().__init__(logging.INFO)
        self.stream = stream
        self.live = live
        self.prefix = ""
        self.bars: dict[str, _Bar] = {}
        self.current: _Bar | None = None
        self.drew = False

    def install(self) -> None:
        progress_log.addHandler(self)
        progress_log.setLevel(logging.INFO)
        progress_log.propagate = False  # progress is for the terminal, not the log file
        logging.getLogger("orion_assets").addHandler(_FailedCalls(self))

    def uninstall(self) -> None:
        progress_log.removeHandler(self)
        for handler in list(logging.getLogger("orion_assets").handlers):
            if isinstance(handler, _FailedCalls) and handler.bars is self:
                logging.getLogger("orion_assets").removeHandler(handler)

    def begin(self, prefix: str) -> None:
        self.prefix, self.bars, self.current, self.drew = prefix, {}, None, False

    def end(self) -> tuple[list[str], bool]:
        """The summary of each label of the step, and whether a bar was drawn over its line."""
        with self.lock:
            for bar in self.bars.values():
                bar.close_batch()
                if bar.tqdm is not None:
                    bar.tqdm.close()
                    bar.tqdm = None
            return [bar.summary() for bar in self.bars.values()], self.drew

    def emit(self, record: logging.LogRecord) -> None:
        data = getattr(record, PROGRESS_ATTR, None)
        if data is None:
            return
        try:
            label = data["label"]
            bar = self.bars.get(label)
            if bar is None:
                bar = self.bars[label] = _Bar(label, data.get("unit", "calls"))
            extra = {k: v for k, v in data.items() if k not in {"label", "done", "total", "unit"}}
            bar.update(int(data["done"]), data.get("total"), extra)
            if self.current is not bar and self.current is not None and self.current.tqdm is not None:
                self.current.tqdm.close()
                self.current.tqdm = None
            self.current = bar
            if self.live:
                self._draw(bar)
        except Exception:  # noqa: BLE001 - a display problem must never fail a step
            self.handleError(record)

    def failed_call(self) -> None:
        with self.lock:
            if self.current is not None:
                self.current.errors += 1
                if self.live and self.current.tqdm is not None:
                    self._draw(self.current)

    def notice(self, message: str) -> None:
        """A line of its own in the terminal, above the bar being drawn."""
        with self.lock:
            first, *rest = message.splitlines() or [""]
            text = "  " + first + ("\n" + "\n".join("    " + line for line in rest[-20:]) if rest else "")
            if self.live and self.current is not None and self.current.tqdm is not None:
                self.current.tqdm.write(text, file=self.stream)
            else:
                self.stream.write("\n" + text + "\n")
                self.stream.flush()

    def _draw(self, bar: _Bar) -> None:
        if bar.tqdm is None:
            if not self.drew:
                self.stream.write("\r\x1b[K")  # the bar takes the step's line; end() prints it again
                self.drew = True
            bar.tqdm = tqdm(total=bar.total, initial=bar.done, desc=f"{self.prefix} ({bar.label})", unit=bar.unit,
                            file=self.stream, leave=False, dynamic_ncols=True, mininterval=0.2,
                            bar_format="{desc} {percentage:3.0f}%|{bar:24}| {n_fmt}/{total_fmt} {unit} [{elapsed}{postfix}]")
        bar.tqdm.total = bar.total
        bar.tqdm.n = bar.done
        bar.tqdm.set_postfix_str(bar.postfix(), refresh=False)
        bar.tqdm.refresh()


class _FailedCalls(logging.Handler):
    """Counts the failed-call warnings of the LLM backends against the bar being drawn, and prints the records
    meant for the terminal (a student server that died and is started again)."""

    def __init__(self, bars: ProgressBars):
        super().__init__(logging.WARNING)
        self.bars = bars

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, CALL_FAILED, False):
            self.bars.failed_call()
        if getattr(record, TERMINAL, False):
            self.bars.notice(record.getMessage())


def open_run_log(path: Path) -> logging.Handler:
    """Send this process's Python logging (``orion_assets`` at INFO, the rest at WARNING) and its
    warnings to ``path``; returns the handler (remove it to stop)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.WARNING or root.level == logging.NOTSET:
        root.setLevel(logging.WARNING)
    logging.getLogger("orion_assets").setLevel(logging.INFO)
    logging.captureWarnings(True)
    return handler


@contextlib.contextmanager
def capture_output(path: Path) -> Iterator[None]:
    """Everything written to ``sys.stdout`` / ``sys.stderr`` meanwhile (Dagster's console log,
    library progress bars, ``print``) goes to ``path``; the terminal keeps the saved streams."""
    with open(path, "a", encoding="utf-8", buffering=1) as log, \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        yield


def is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
