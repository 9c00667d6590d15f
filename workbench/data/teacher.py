"""Teacher-student regression: targets from a fixed random two-layer tanh network plus noise.

``x ~ N(0, I_dim)``, ``y = W2 tanh(W1 x + b1) + noise * eps`` with ``W1 ~ N(0, 1/dim)``,
``b1 ~ N(0, 0.1^2)``, ``W2 ~ N(0, 1/width)``, so hidden pre-activations are O(1) (the clean
targets have variance about 0.45 with the defaults). The best achievable test MSE is
``noise**2`` (``extra["noise_floor"]``).
"""
from __future__ import annotations

import math

import torch

from .._validate import check_positive
from ._spec import DatasetSpec, generator
from .dataset import Dataset

DEFAULTS = {"dim": 32, "width": 64, "outputs": 1, "noise": 0.1}


def check(options: dict) -> None:
    for name in ("dim", "width", "outputs"):
        check_positive(f"teacher option {name}", options[name], integer=True)
    check_positive("teacher option noise", options["noise"], allow_zero=True)


def build(n_train: int, n_test: int, seed: int, *, dim: int, width: int, outputs: int,
          noise: float) -> Dataset:
    g = generator(seed, "task")
    w1 = torch.randn(width, dim, generator=g) / math.sqrt(dim)
    b1 = 0.1 * torch.randn(width, generator=g)
    w2 = torch.randn(outputs, width, generator=g) / math.sqrt(width)

    def sample(n: int, stream: str) -> tuple[torch.Tensor, torch.Tensor]:
        gs = generator(seed, stream)
        x = torch.randn(n, dim, generator=gs)  # (N, D)
        y = torch.tanh(x @ w1.T + b1) @ w2.T  # (N, outputs)
        return x, y + noise * torch.randn(n, outputs, generator=gs)

    x_train, y_train = sample(n_train, "train")
    x_test, y_test = sample(n_test, "test")
    return Dataset("teacher", "regression", x_train, y_train, x_test, y_test,
                   input_shape=(dim,), num_outputs=outputs,
                   extra={"noise_floor": float(noise) ** 2})


SPEC = DatasetSpec("regression", DEFAULTS, check, build,
                   example_bytes=lambda o: 4 * (o["dim"] + o["outputs"]))  # float32 x and y
