"""Gaussian-mixture classification: one isotropic unit-variance cluster per class.

Class centres are drawn ``N(0, separation^2 / (2 dim) I)``, so two centres lie about
``separation`` noise standard deviations apart whatever ``dim`` is. Labels are balanced
(``n // num_classes`` per class, the remainder spread over the first classes) and shuffled.
With the defaults a small MLP reaches about 90% test accuracy in a few hundred steps; the Bayes
accuracy is a little higher, so 100% is out of reach.
"""
from __future__ import annotations

import math

import torch

from .._validate import check_positive
from ._spec import DatasetSpec, generator
from .dataset import Dataset

DEFAULTS = {"num_classes": 10, "dim": 32, "separation": 5.0}


def check(options: dict) -> None:
    check_positive("gaussian_mixture option dim", options["dim"], integer=True)
    check_positive("gaussian_mixture option num_classes", options["num_classes"], integer=True)
    if options["num_classes"] < 2:
        raise ValueError(f"gaussian_mixture option num_classes must be >= 2, "
                         f"got {options['num_classes']!r}")
    check_positive("gaussian_mixture option separation", options["separation"], allow_zero=True)


def build(n_train: int, n_test: int, seed: int, *, num_classes: int, dim: int,
          separation: float) -> Dataset:
    centres = torch.randn(num_classes, dim, generator=generator(seed, "task"))
    centres *= separation / math.sqrt(2 * dim)  # (K, D)

    def sample(n: int, stream: str) -> tuple[torch.Tensor, torch.Tensor]:
        gs = generator(seed, stream)
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=gs)]  # (N,)
        return centres[y] + torch.randn(n, dim, generator=gs), y

    x_train, y_train = sample(n_train, "train")
    x_test, y_test = sample(n_test, "test")
    return Dataset("gaussian_mixture", "classification", x_train, y_train, x_test, y_test,
                   input_shape=(dim,), num_outputs=num_classes)


SPEC = DatasetSpec("classification", DEFAULTS, check, build,
                   example_bytes=lambda o: 4 * o["dim"] + 8)  # float32 x, int64 label
