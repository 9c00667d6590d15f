"""Shared pieces of the data sets: seeded generators and the per-data-set spec."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


def generator(seed: int, stream: str) -> torch.Generator:
    """A fresh CPU generator for one named stream of one seed.

    Separate streams (``"task"``, ``"train"``, ``"test"``) keep, e.g., the teacher and the test set
    unchanged when only ``n_train`` changes, and never touch torch's global RNG.
    """
    key = [seed] + [ord(c) for c in stream]
    state = np.random.SeedSequence(key).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


@dataclass(frozen=True)
class DatasetSpec:
    """How to check options for, and build, one data set.

    Attributes:
        task: ``"classification"``, ``"regression"`` or ``"lm"``.
        defaults: every option the data set takes, with its default.
        check: ``check(options)`` raises ValueError on a bad value (options are complete here).
        build: ``build(n_train, n_test, seed, **options) -> Dataset``.
        max_examples: how many examples exist (``n_train + n_test`` cap), None if unlimited.
        example_bytes: ``example_bytes(options)``, the bytes one example's tensors (input and
            target) take: with it, :func:`~workbench.data.make_dataset` refuses a size whose
            tensors alone exceed the memory available, before generating anything.
    """

    task: str
    defaults: dict
    check: Callable[[dict], None]
    build: Callable
    max_examples: int | None = None
    example_bytes: Callable[[dict], int] | None = None


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
