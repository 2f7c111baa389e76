"""The step counter of a training loop: a tqdm bar on a terminal, plain log lines with --no-progress.

A disabled tqdm bar prints nothing, so a cluster job's log stayed silent from one validation to the next (1000
steps). The loops call set_postfix() every `train.log_every` steps; without a bar that call logs one line instead:

    transformer (masked) step 40/1300 (3%): loss=4.102, acc=0.03; 2.1 steps/s, about 10 min left
"""
from __future__ import annotations

import time


def step_bar(total: int, initial: int, desc: str, progress: bool, log):
    """tqdm when `progress`, else a PlainSteps that logs through `log` (one line per set_postfix)."""
    if progress:
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc=desc)
    return PlainSteps(total, initial, desc, log)


class PlainSteps:
    """The part of tqdm's interface the training loops use (update, set_postfix, write, close), as log lines."""

    def __init__(self, total: int, initial: int, desc: str, log):
        self.total, self.n, self.desc, self.log = total, initial, desc, log
        self._start_n, self._t0 = initial, time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values) -> None:
        done = self.n - self._start_n
        seconds = time.perf_counter() - self._t0
        rate = done / seconds if seconds > 0 else 0.0
        fields = ", ".join(f"{k}={v}" for k, v in values.items())
        pace = ""
        if rate > 0:
            left = (self.total - self.n) / rate
            pace = f"; {rate:.3g} steps/s, about {_duration(left)} left"
        self.log(f"{self.desc} step {self.n}/{self.total} ({self.n / max(1, self.total):.0%})"
                 + (f": {fields}" if fields else "") + pace)

    def write(self, text: str) -> None:
        self.log(text)

    def close(self) -> None:
        pass


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
