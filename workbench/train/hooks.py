"""When probes run during training, and how a run is cancelled."""
from __future__ import annotations

import numbers
import threading

import numpy as np


def _integer(value) -> bool:
    """An integer (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


class every:
    """Run at steps 0, n, 2n, ... and at the last step: ``every(50)``."""

    def __init__(self, n: int, *, last: bool = True):
        if not _integer(n) or n <= 0:
            raise ValueError(f"every(n) needs a positive integer n, got {n!r}")
        self.n, self.last = int(n), last

    def __call__(self, step: int, total_steps: int) -> bool:
        return step % self.n == 0 or (self.last and step == total_steps - 1)

    def __repr__(self) -> str:
        return f"every({self.n})"


class log_spaced:
    """Run at about ``k`` steps spaced evenly in log(step), always including 0 and the last step.

    Early training changes fastest, so this spends the probe budget where things happen.
    """

    def __init__(self, k: int):
        if not _integer(k) or k < 2:
            raise ValueError(f"log_spaced(k) needs an integer k >= 2, got {k!r}")
        self.k = int(k)
        self._cache: tuple[int, frozenset] | None = None

    def steps(self, total_steps: int) -> frozenset:
        """The steps it runs at in a run of ``total_steps`` (>= 1) steps."""
        if not _integer(total_steps) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
        if self._cache is None or self._cache[0] != total_steps:
            pts = np.unique(np.round(np.geomspace(1, total_steps, self.k)).astype(int) - 1)
            self._cache = (total_steps, frozenset(int(p) for p in pts) | {0, total_steps - 1})
        return self._cache[1]

    def __call__(self, step: int, total_steps: int) -> bool:
        return step in self.steps(total_steps)

    def __repr__(self) -> str:
        return f"log_spaced({self.k})"


class CancelToken:
    """Thread-safe flag a trainer checks between steps: ``token.cancel()`` stops it cleanly."""

    def __init__(self, event=None):
        # any object with set/is_set/clear: a multiprocessing.Event lets another process cancel
        self._event = threading.Event() if event is None else event

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def reset(self) -> None:
        self._event.clear()
