"""Synthetic images of simple shapes at random positions and sizes, with additive noise.

Each image (C, S, S) holds one filled shape of a random colour (each channel uniform in
[0.5, 1]) on a black background, plus ``N(0, noise^2)`` pixel noise. The shape's half-size ``r``
is uniform in [0.15 S, 0.35 S] and its centre uniform over positions where it fits. The class is
the shape, the first ``num_classes`` of ``SHAPES``. Rendered with torch masks, no PIL.
"""
from __future__ import annotations

import torch

from .._validate import check_choice, check_positive
from ._spec import DatasetSpec, generator
from .dataset import Dataset

SHAPES = ("square", "circle", "triangle", "cross", "horizontal_bar", "vertical_bar")
DEFAULTS = {"channels": 1, "image_size": 16, "noise": 0.2, "num_classes": len(SHAPES)}


def check(options: dict) -> None:
    check_choice("shapes option channels", options["channels"], (1, 3))
    check_positive("shapes option image_size", options["image_size"], integer=True)
    if options["image_size"] < 8:
        raise ValueError(f"shapes option image_size must be >= 8, got {options['image_size']!r}")
    check_positive("shapes option noise", options["noise"], allow_zero=True)
    check_choice("shapes option num_classes", options["num_classes"], range(2, len(SHAPES) + 1))


def _masks(dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """(K, N, S, S) boolean masks of every shape; dx, dy (N, S, S) offsets from centre, r (N, 1, 1)."""
    ax, ay = dx.abs(), dy.abs()
    t = (r / 4).clamp(min=0.5)  # bar half-thickness
    hbar = (ay <= t) & (ax <= r)
    vbar = (ax <= t) & (ay <= r)
    return torch.stack([
        (ax <= r) & (ay <= r),  # square
        dx**2 + dy**2 <= r**2,  # circle
        (ay <= r) & (ax <= (dy + r) / 2),  # triangle, apex up (y grows downwards)
        hbar | vbar,  # cross
        hbar,
        vbar,
    ])


def render(labels: torch.Tensor, size: int, channels: int, noise: float,
           g: torch.Generator) -> torch.Tensor:
    """Images (N, channels, size, size) float32 of the shapes ``labels`` (N,) index into SHAPES."""
    n = labels.shape[0]
    r = (0.15 + 0.2 * torch.rand(n, 1, 1, generator=g)) * size
    lo, span = r, (size - 1 - 2 * r)
    cx = lo + span * torch.rand(n, 1, 1, generator=g)
    cy = lo + span * torch.rand(n, 1, 1, generator=g)
    grid = torch.arange(size, dtype=torch.float32)
    dx = grid.view(1, 1, size) - cx  # (N, 1, S) -> broadcast to (N, S, S)
    dy = grid.view(1, size, 1) - cy
    dx, dy = torch.broadcast_tensors(dx, dy)
    mask = _masks(dx, dy, r)[labels, torch.arange(n)]  # (N, S, S)
    colour = 0.5 + 0.5 * torch.rand(n, channels, 1, 1, generator=g)
    images = colour * mask.unsqueeze(1).float()
    return images + noise * torch.randn(n, channels, size, size, generator=g)


def build(n_train: int, n_test: int, seed: int, *, channels: int, image_size: int, noise: float,
          num_classes: int) -> Dataset:
    def sample(n: int, stream: str) -> tuple[torch.Tensor, torch.Tensor]:
        g = generator(seed, stream)
        y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
        return render(y, image_size, channels, noise, g), y

    x_train, y_train = sample(n_train, "train")
    x_test, y_test = sample(n_test, "test")
    return Dataset("shapes", "classification", x_train, y_train, x_test, y_test,
                   input_shape=(channels, image_size, image_size), num_outputs=num_classes,
                   extra={"classes": list(SHAPES[:num_classes])})


SPEC = DatasetSpec("classification", DEFAULTS, check, build,  # float32 image, int64 label
                   example_bytes=lambda o: 4 * o["channels"] * o["image_size"] ** 2 + 8)
