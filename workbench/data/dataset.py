"""The ``Dataset`` container and the per-task loss and accuracy functions.

The loss functions are module-level (not lambdas or bound methods) so they pickle into process
pools and can be handed to probes as ``loss_fn(outputs, targets)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from .._validate import check_choice

TASKS = ("classification", "regression", "lm")


def cross_entropy_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every predicted position.

    Args:
        outputs: logits, (N, C) for classification or (N, T, V) for language modelling.
        targets: class indices, (N,) or (N, T), int64.

    Returns:
        Scalar: mean over all N (times T) positions of ``-log softmax(outputs)[target]``, in nats.
    """
    return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))


def mse_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element (no 1/2 factor); outputs and targets (N, K)."""
    if outputs.shape != targets.shape:  # broadcasting (N, 1) against (N,) would silently be wrong
        raise ValueError(f"regression outputs shape {tuple(outputs.shape)} does not match "
                         f"targets shape {tuple(targets.shape)}")
    return F.mse_loss(outputs, targets)


def argmax_accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of positions where ``argmax(outputs, -1) == targets``; (N, C)/(N,) or (N, T, V)/(N, T)."""
    return (outputs.argmax(-1) == targets).float().mean()


_LOSSES = {"classification": cross_entropy_loss, "lm": cross_entropy_loss, "regression": mse_loss}
_ACCURACIES = {"classification": argmax_accuracy, "lm": argmax_accuracy, "regression": None}


def loss_for_task(task: str):
    """The picklable mean loss ``fn(outputs, targets) -> scalar`` for a task."""
    check_choice("task", task, TASKS)
    return _LOSSES[task]


def accuracy_for_task(task: str):
    """The picklable accuracy ``fn(outputs, targets) -> scalar`` for a task; None for regression."""
    check_choice("task", task, TASKS)
    return _ACCURACIES[task]


@dataclass
class Dataset:
    """A whole data set held in memory as tensors.

    Attributes:
        name: the data set's name (a key of ``DATASETS``).
        task: ``"classification"``, ``"regression"`` or ``"lm"``.
        x_train, x_test: float32 (N, *input_shape) inputs, or int64 (N, T) tokens for ``"lm"``.
        y_train, y_test: int64 (N,) classes, float32 (N, K) regression targets, or int64 (N, T)
            next tokens for ``"lm"``.
        input_shape: per example: (D,) features, (C, H, W) images or (T,) tokens.
        num_outputs: classes, regression outputs, or vocabulary size.
        vocab_size: vocabulary size for ``"lm"``, else None.
        extra: data-set facts, e.g. ``extra["entropy"]`` (the loss floor, nats/token) for markov.
    """

    name: str
    task: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_shape: tuple
    num_outputs: int
    vocab_size: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        check_choice("task", self.task, TASKS)

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    def loss_fn(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss for this task: cross-entropy (classification, lm) or MSE (regression)."""
        return _LOSSES[self.task](outputs, targets)

    def accuracy(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """Fraction of correct argmax predictions; None for regression."""
        fn = _ACCURACIES[self.task]
        return None if fn is None else fn(outputs, targets)

    def batch(self, idx: torch.Tensor, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """``(x[idx], y[idx])`` from the ``"train"`` or ``"test"`` split."""
        check_choice("split", split, ("train", "test"))
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        idx = idx.to(x.device)
        return x[idx], y[idx]

    def to(self, device) -> Dataset:
        """A copy with every tensor on ``device`` (tensors already there are shared, not copied)."""
        return replace(self, x_train=self.x_train.to(device), y_train=self.y_train.to(device),
                       x_test=self.x_test.to(device), y_test=self.y_test.to(device),
                       extra=dict(self.extra))
