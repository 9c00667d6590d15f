"""Group normalization (Wu & He, 2018): per-example statistics over groups of channels."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._layout import check_input, init_affine


class GroupNorm(nn.Module):
    """Split C into ``groups`` groups and normalize each group per example.

    conv (N, C, H, W): over (C/G, H, W) per example and group, exactly ``nn.GroupNorm(G, C)``.
    features (N, C): over the C/G channels of each group. tokens (N, T, C): per token over the
    C/G channels of each group (the (N*T, C) rows go through ``F.group_norm``).
    ``groups == 1`` is layer norm; ``groups == C`` is instance norm on conv.

    Args:
        num_channels: C.
        layout: ``"features"``, ``"conv"`` or ``"tokens"``.
        groups: G, must divide C.
        eps: added to the variance.
        affine: learn a per-channel gain ``weight`` (C,) and shift ``bias`` (C,).

    Note:
        Cost: two reductions per example and group; no state, no batch dependence.
    """

    def __init__(self, num_channels: int, layout: str, groups: int = 8, eps: float = 1e-5,
                 affine: bool = True, device=None, dtype=None):
        super().__init__()
        self.num_channels, self.layout, self.groups = num_channels, layout, groups
        self.eps, self.affine = eps, affine
        init_affine(self, num_channels, affine, factory={"device": device, "dtype": dtype})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) / (N, C, H, W) / (N, T, C) -> same shape."""
        check_input(x, self.layout, self.num_channels, "group")
        if self.layout == "tokens":  # every token is its own "example": (N*T, C)
            rows = x.reshape(-1, self.num_channels)
            y = F.group_norm(rows, self.groups, self.weight, self.bias, self.eps)
            return y.reshape(x.shape)
        return F.group_norm(x, self.groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_channels}, layout={self.layout}, groups={self.groups}, "
                f"eps={self.eps}, affine={self.affine}")
