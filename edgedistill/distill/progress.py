"""What a training loop shows while it runs: tqdm's bar on a terminal; without one (output to a log file,
CI) a line every ``EDGEDISTILL_PROGRESS_SECONDS`` seconds (default 30): epoch, step, running loss,
samples/s and the time left for the whole fit."""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

from tqdm import tqdm

DEFAULT_INTERVAL_S = 30.0


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """One fit's progress: ``epoch(...)`` at the start of each epoch, ``step(...)`` after each step."""

    def __init__(self, desc: str, epochs: int, steps_per_epoch: int, stream=None, interval: float | None = None,
                 quiet: bool = False) -> None:
        """``quiet``: say nothing (the ranks other than 0 under torchrun)."""
        self.desc, self.epochs, self.steps_per_epoch, self.quiet = desc, epochs, steps_per_epoch, quiet
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        env = os.environ.get("EDGEDISTILL_PROGRESS_SECONDS")
        self.interval = interval if interval is not None else float(env) if env else DEFAULT_INTERVAL_S
        self.bar = None
        self.t0 = self.last = time.perf_counter()
        self.samples = self.steps = 0

    def epoch(self, epoch: int, start_step: int) -> None:
        self.close()
        self.e = epoch
        if self.tty and not self.quiet:
            self.bar = tqdm(total=self.steps_per_epoch, initial=start_step, desc=f"{self.desc} {epoch + 1}/{self.epochs}",
                            file=self.stream, leave=False)

    def step(self, step: int, n: int, loss: Callable[[], float]) -> None:
        """``loss()`` gives the epoch's running loss per sample; it is called only for a line (reading it waits for
        the device)."""
        self.samples, self.steps = self.samples + n, self.steps + 1
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.perf_counter()
        if self.quiet or now - self.last < self.interval:
            return
        self.last = now
        elapsed = max(now - self.t0, 1e-9)
        steps_left = (self.steps_per_epoch - step - 1) + (self.epochs - self.e - 1) * self.steps_per_epoch
        rate, eta = self.samples / elapsed, steps_left * elapsed / self.steps
        print(f"{self.desc} epoch {self.e + 1}/{self.epochs} step {step + 1}/{self.steps_per_epoch} "
              f"loss {loss():.4f} {rate:,.0f} samples/s ETA {_duration(eta)}",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
