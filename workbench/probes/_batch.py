"""A probe's batch: checked, and run through the model with a clear error when it does not fit."""
from __future__ import annotations

import math

import torch
from torch import nn


class NonFiniteError(ValueError):
    """The loss or gradient at the current weights is NaN/inf (a diverged model, or inputs that
    overflow it): curvature there is undefined. A ValueError, so callers that report bad input
    report it too; the trainer tells it apart from a probe's own failure."""


def check_finite(loss: float, grad: torch.Tensor | None = None) -> None:
    """A :class:`NonFiniteError` unless ``loss`` (and every entry of ``grad``) is finite."""
    if not math.isfinite(loss):
        raise NonFiniteError(f"the loss at the current weights is {loss} on this batch: the model "
                             "has diverged (or the batch holds NaN/inf), so its curvature is undefined")
    if grad is not None and not bool(torch.isfinite(grad).all()):
        raise NonFiniteError(f"the gradient at the current weights is not finite on this batch "
                             f"(the loss is {loss:.6g}): the model is diverging, so its curvature "
                             "is undefined")


def check_batch(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` with the same non-zero number of examples, else a ValueError."""
    x, y = check_pair(batch)
    if not (torch.is_tensor(x) and torch.is_tensor(y)):
        raise ValueError("batch must hold two tensors (inputs, targets)")
    if x.dim() == 0 or y.dim() == 0:
        raise ValueError(f"batch tensors need an example axis; got shapes {tuple(x.shape)}, {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("empty batch: inputs have 0 examples")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"batch inputs have {x.shape[0]} examples but targets have {y.shape[0]}")
    return x, y


def check_pair(batch) -> tuple:
    """``(inputs, targets)``: any pair, for the probes that hand both on as they are (a model and a
    loss of the user's may take other types than tensors), else a ValueError."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(f"batch must be an (inputs, targets) pair, got {type(batch).__name__}")
    return batch[0], batch[1]


def on_model_device(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` on the device of the model's parameters (as they are for a model without any)."""
    device = next((p.device for p in model.parameters()), x.device)
    return (x, y) if x.device == device else (x.to(device), y.to(device))


def forward_loss(model: nn.Module, batch, loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """``(outputs, loss)`` for a checked batch; a shape mismatch or a non-scalar loss is a ValueError."""
    x, y = check_batch(batch)
    out = run_model(model, x)
    loss = loss_fn(out, y)
    if not torch.is_tensor(loss) or loss.numel() != 1:
        shape = tuple(loss.shape) if torch.is_tensor(loss) else type(loss).__name__
        raise ValueError(f"loss_fn must return a scalar (mean) loss, got shape {shape}")
    return out, loss.reshape(())


def run_model(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``; inputs that do not fit the model are a ValueError naming their shape."""
    try:
        return model(x)
    except (RuntimeError, ValueError) as err:
        what = f"of shape {tuple(x.shape)}" if torch.is_tensor(x) else f"of type {type(x).__name__}"
        raise ValueError(f"batch inputs {what} do not fit the model: {err}") from err
