"""RMS normalization (Zhang & Sennrich, 2019): rescale by the root mean square, no centering."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._layout import check_input, init_affine


class RMSNorm(nn.Module):
    """Divide each example (token) by its root mean square; no mean subtraction, no shift.

    features (N, C) and tokens (N, T, C): ``x / sqrt(mean_C(x^2) + eps) * weight``, exactly
    ``nn.RMSNorm(C, eps)``. conv (N, C, H, W): the mean of x^2 is over (C, H, W) per example and
    the gain is per channel. There is no shift: ``bias`` is always None.

    Args:
        num_channels: C.
        layout: ``"features"``, ``"conv"`` or ``"tokens"``.
        eps: added to the mean square.
        affine: learn a per-channel gain ``weight`` (C,).

    Note:
        Cost: one reduction per example (per token); no state, no batch dependence.
    """

    def __init__(self, num_channels: int, layout: str, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None):
        super().__init__()
        self.num_channels, self.layout, self.eps, self.affine = num_channels, layout, eps, affine
        init_affine(self, num_channels, affine, bias=False,
                    factory={"device": device, "dtype": dtype})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) / (N, C, H, W) / (N, T, C) -> same shape."""
        check_input(x, self.layout, self.num_channels, "rms")
        if self.layout != "conv":
            return F.rms_norm(x, (self.num_channels,), self.weight, self.eps)
        y = F.rms_norm(x, x.shape[1:], None, self.eps)  # mean square over (C, H, W)
        return y if self.weight is None else y * self.weight.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, layout={self.layout}, eps={self.eps}, affine={self.affine}"
