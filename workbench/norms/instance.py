"""Instance normalization (Ulyanov, Vedaldi & Lempitsky, 2016): per example, per channel."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._layout import check_input, init_affine


class InstanceNorm(nn.Module):
    """Normalize each channel of each example over (H, W); conv layout only.

    Exactly ``nn.InstanceNorm2d(C, affine=affine, track_running_stats=...)``. By default no
    running statistics are kept, so train and eval agree; with ``track_running_stats=True``
    eval mode uses running averages of the per-instance statistics, as in torch.

    Args:
        num_channels: C.
        layout: ``"conv"`` (N, C, H, W).
        eps: added to the variance.
        affine: learn a per-channel gain ``weight`` (C,) and shift ``bias`` (C,).
        momentum: running-statistics update rate (used only when tracking).
        track_running_stats: keep ``running_mean``/``running_var`` for eval mode.

    Note:
        Cost: two reductions per example and channel over H*W values.
    """

    def __init__(self, num_channels: int, layout: str = "conv", eps: float = 1e-5,
                 affine: bool = True, momentum: float = 0.1, track_running_stats: bool = False,
                 device=None, dtype=None):
        super().__init__()
        self.num_channels, self.layout, self.eps, self.affine = num_channels, layout, eps, affine
        self.momentum, self.track_running_stats = momentum, track_running_stats
        factory = {"device": device, "dtype": dtype}
        init_affine(self, num_channels, affine, factory=factory)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_channels, **factory))
            self.register_buffer("running_var", torch.ones(num_channels, **factory))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        check_input(x, self.layout, self.num_channels, "instance")
        use_input_stats = self.training or not self.track_running_stats
        return F.instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                               use_input_stats, self.momentum, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_channels}, layout={self.layout}, eps={self.eps}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")
