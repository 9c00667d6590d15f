"""Layer normalization (Ba, Kiros & Hinton, 2016): per-example statistics, same in train and eval."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._layout import check_input, init_affine


class LayerNorm(nn.Module):
    """Normalize each example over its channels (features, tokens) or its whole map (conv).

    features (N, C) and tokens (N, T, C): mean and variance over C per example (per token),
    exactly ``nn.LayerNorm(C)``. conv (N, C, H, W): over (C, H, W) per example with a
    per-channel affine, exactly ``nn.GroupNorm(1, C)``.

    Args:
        num_channels: C.
        layout: ``"features"``, ``"conv"`` or ``"tokens"``.
        eps: added to the variance.
        affine: learn a per-channel gain ``weight`` (C,) and shift ``bias`` (C,).

    Note:
        Cost: two reductions per example (per token); no state, no batch dependence.
    """

    def __init__(self, num_channels: int, layout: str, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None):
        super().__init__()
        self.num_channels, self.layout, self.eps, self.affine = num_channels, layout, eps, affine
        init_affine(self, num_channels, affine, factory={"device": device, "dtype": dtype})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) / (N, C, H, W) / (N, T, C) -> same shape."""
        check_input(x, self.layout, self.num_channels, "layer")
        if self.layout == "conv":
            return F.group_norm(x, 1, self.weight, self.bias, self.eps)
        return F.layer_norm(x, (self.num_channels,), self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, layout={self.layout}, eps={self.eps}, affine={self.affine}"
