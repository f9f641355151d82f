"""Progress output for the command line and the benches, through tqdm.

On a terminal a tqdm bar (steps, rate, ETA, loss); anywhere else (a log file, CI) one plain line
at the start, then at most one every `interval_s` seconds, and one at the end: never carriage
returns in a file.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm

from promptserve.training.loop import Progress

PLAIN_INTERVAL_S = 10.0  # seconds between two plain lines


class StepReporter:
    """A `Progress` callback for one run; a new run (step 1 again, or another total) restarts
    the bar or the line count, so one reporter can follow several seeds in turn."""

    def __init__(
        self, desc: str, file: TextIO | None = None, interval_s: float = PLAIN_INTERVAL_S
    ) -> None:
        self.desc = desc
        self.file = file if file is not None else sys.stderr
        self.interval_s = interval_s
        self.tty = bool(getattr(self.file, "isatty", lambda: False)())
        self._bar: tqdm | None = None
        self._total = 0
        self._last_line = 0.0

    def __call__(self, progress: Progress) -> None:
        if progress.step == 1 or progress.total_steps != self._total:
            self._restart(progress.total_steps)
        if self._bar is not None:
            self._bar.update(progress.step - self._bar.n)
            self._bar.set_postfix_str(_postfix(progress), refresh=False)
            if progress.step == progress.total_steps:
                self.close()
            return
        now = time.monotonic()
        last = progress.step == progress.total_steps
        if progress.step == 1 or last or now - self._last_line >= self.interval_s:
            self._last_line = now
            share = 100 * progress.step / max(1, progress.total_steps)
            line = (
                f"{self.desc}: step {progress.step}/{progress.total_steps} ({share:.0f}%) "
                f"{_postfix(progress)}, eta {progress.eta_s:.0f}s"
            )
            print(line, file=self.file, flush=True)

    def _restart(self, total: int) -> None:
        self.close()
        self._total = total
        self._last_line = 0.0
        if self.tty:
            self._bar = tqdm(total=total, desc=self.desc, file=self.file, unit="step", leave=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _postfix(progress: Progress) -> str:
    epoch = f"epoch {progress.epoch}/{progress.epochs}, " if progress.epochs > 1 else ""
    return f"{epoch}loss {progress.loss:.4f}, lr {progress.lr:.2e}"


@contextmanager
def step_progress(
    desc: str, file: TextIO | None = None, interval_s: float = PLAIN_INTERVAL_S
) -> Iterator[StepReporter]:
    """``with step_progress("train coop") as report: fit(..., progress=report)``"""
    reporter = StepReporter(desc, file, interval_s)
    try:
        yield reporter
    finally:
        reporter.close()
