"""Batch normalization (Ioffe & Szegedy, 2015) on every layout, as a real torch BatchNorm.

``BatchNorm`` subclasses torch's ``_BatchNorm`` (the base of ``nn.BatchNorm1d/2d``) and keeps
its parameter and buffer names, so ``torch.func.replace_all_batch_norm_modules_``,
``reset_running_stats`` and ``load_state_dict`` from/into ``nn.BatchNorm1d/2d`` all work.
"""
from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from ._layout import check_input


class BatchNorm(_BatchNorm):
    """Per-channel batch normalization for the ``features``, ``conv`` and ``tokens`` layouts.

    Training mode normalizes each channel with the batch's mean and biased variance over
    N (features), N,H,W (conv) or N,T (tokens), and updates the running mean and unbiased
    running variance with ``momentum`` (None: cumulative average). Eval mode uses the running
    statistics. Exactly ``nn.BatchNorm1d`` on (N, C) and on (N, T, C) transposed to (N, C, T),
    and ``nn.BatchNorm2d`` on (N, C, H, W).

    Args:
        num_channels: C.
        layout: ``"features"``, ``"conv"`` or ``"tokens"``.
        eps: added to the variance.
        momentum: running-statistics update rate, or None for a cumulative average.
        affine: learn a per-channel gain ``weight`` (C,) and shift ``bias`` (C,).

    Note:
        Cost: two reductions over the batch per channel; the tokens layout adds two transposes.
    """

    def __init__(self, num_channels: int, layout: str, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True, device=None, dtype=None):
        super().__init__(num_channels, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=True, device=device, dtype=dtype)
        self.layout = layout

    def _check_input_dim(self, input: torch.Tensor) -> None:
        pass  # forward checks the layout's rank and channel count before any transpose

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) / (N, C, H, W) / (N, T, C) -> same shape."""
        check_input(x, self.layout, self.num_features, "batch")
        if self.training and x.shape[0] == 1 and x.numel() == self.num_features:
            raise ValueError(
                "batch norm in train mode needs more than one value per channel, and a batch of "
                "1 example has one: use a batch size (and micro_batch) of at least 2, or a norm "
                "without batch statistics (layer, group, rms, batch_channel, power, none)")
        if self.layout == "tokens":  # (N, T, C) -> (N, C, T): channel axis 1, as torch wants
            return super().forward(x.transpose(1, 2)).transpose(1, 2)
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, layout={self.layout}"
