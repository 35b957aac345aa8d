"""Progress of a long loop, with an ETA: a tqdm bar on a terminal, a few log lines elsewhere.

On a terminal tqdm redraws one line in place. Written to a log file or a CI console, its
carriage returns pile up into one line many kilobytes long, so there a plain log line goes out
at every tenth of the work (and at least every ``every_seconds``) instead. Either way a last
line says how long the whole loop took, so the run's log keeps the timings.
"""

from __future__ import annotations

import logging
import math
import sys
import time

from tqdm import tqdm

from vaelab.numbers import significant

log = logging.getLogger(__name__)


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``: short enough for a progress line."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """Count work done in a ``with`` block: ``with Progress(n, "scoring", "images") as p: p.update(k)``.

    ``tty`` decides between the bar and the log lines; by default, whether stderr (where tqdm
    draws) is a terminal.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "items",
        *,
        tty: bool | None = None,
        every_seconds: float = 30.0,
        logger: logging.Logger = log,
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.every_seconds, self.logger = every_seconds, logger
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.done, self._tenths = 0, 0
        self._start = self._last = time.monotonic()
        self._bar = None

    def __enter__(self) -> Progress:
        if self.tty:
            self._bar = tqdm(
                total=self.total, desc=self.desc, unit=self.unit, leave=False, dynamic_ncols=True
            )
        else:
            self.logger.info("%s: %d %s ...", self.desc, self.total, self.unit)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._bar is not None:
            self._bar.close()
        if exc_type is None:
            elapsed = time.monotonic() - self._start
            rate = f", {significant(self.done / elapsed)} {self.unit}/s" if elapsed > 0 and self.done else ""
            self.logger.info("%s: %d %s in %s%s", self.desc, self.done, self.unit, duration(elapsed), rate)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units; in log mode, log when a new tenth is reached or time has passed."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        tenths = math.floor(10 * self.done / self.total) if self.total else 10
        if self.done < self.total and (tenths > self._tenths or now - self._last >= self.every_seconds):
            self._tenths, self._last = tenths, now
            self.logger.info("%s", self.line(now - self._start))

    def line(self, elapsed: float) -> str:
        """``scoring: 2000/10000 images (20%), 12 s elapsed, about 48 s left``."""
        left = elapsed * (self.total - self.done) / self.done if self.done else float("nan")
        eta = duration(left) if math.isfinite(left) else "?"
        share = self.done / self.total if self.total else 1.0
        return (
            f"{self.desc}: {self.done}/{self.total} {self.unit} ({share:.0%}), "
            f"{duration(elapsed)} elapsed, about {eta} left"
        )
