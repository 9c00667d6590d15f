"""Input layouts shared by every norm, and the reshapes that bring them to one canonical form.

A norm is built for one layout and checks the rank and channel count of what it is given:

=============  ==============  =========================================
layout         input shape     channel axis
=============  ==============  =========================================
``features``   (N, C)          1  (MLP hidden units)
``conv``       (N, C, H, W)    1  (feature maps)
``tokens``     (N, T, C)       2  (transformer residual stream)
=============  ==============  =========================================

Batch-style norms work on the canonical ``(N, C, M)`` form (``M`` = positions per example:
1, H*W or T), where per-channel statistics are reductions over dims ``(0, 2)``.
"""
from __future__ import annotations

import torch

LAYOUTS = ("features", "conv", "tokens")
SHAPES = {"features": "(N, C)", "conv": "(N, C, H, W)", "tokens": "(N, T, C)"}
_RANKS = {"features": 2, "conv": 4, "tokens": 3}


def check_input(x: torch.Tensor, layout: str, num_channels: int, norm: str) -> None:
    """Raise a ValueError unless ``x`` has the rank and channel count of ``layout``."""
    rank = _RANKS[layout]
    channels = x.shape[-1] if layout == "tokens" else (x.shape[1] if x.dim() > 1 else None)
    if x.dim() != rank or channels != num_channels:
        raise ValueError(
            f"norm {norm!r} with layout {layout!r} expects input of shape {SHAPES[layout]} "
            f"with C={num_channels}; got shape {tuple(x.shape)}"
        )


def to_ncm(x: torch.Tensor, layout: str) -> torch.Tensor:
    """(N, C) / (N, C, H, W) / (N, T, C) -> (N, C, M): a view where possible."""
    if layout == "features":
        return x.unsqueeze(-1)
    if layout == "conv":
        return x.flatten(2)
    return x.transpose(1, 2)


def from_ncm(y: torch.Tensor, layout: str, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`to_ncm` for an input of the original ``shape``."""
    if layout == "features":
        return y.squeeze(-1)
    if layout == "conv":
        return y.reshape(shape)
    return y.transpose(1, 2)


def init_affine(module: torch.nn.Module, num_channels: int, affine: bool, *, bias: bool = True,
                prefix: str = "", factory: dict | None = None) -> None:
    """Register per-channel ``{prefix}weight`` (ones) and ``{prefix}bias`` (zeros), or None."""
    factory = factory or {}
    weight = torch.nn.Parameter(torch.ones(num_channels, **factory)) if affine else None
    shift = torch.nn.Parameter(torch.zeros(num_channels, **factory)) if affine and bias else None
    module.register_parameter(prefix + "weight", weight)
    module.register_parameter(prefix + "bias", shift)
