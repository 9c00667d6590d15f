"""Batch-Channel Normalization (Qiao, Wang, Liu, Shen & Yuille, "Micro-Batch Training with
Batch-Channel Normalization and Weight Standardization", arXiv:1903.10520).

BCN = a batch-normalization step (per channel, affine ``batch_weight``/``batch_bias``) followed
by a channel normalization (group norm with ``groups`` groups, affine ``weight``/``bias``).
The batch step keeps the activations away from elimination singularities; the channel step
makes the layer work at any batch size.

``stats="estimated"`` (micro-batch BCN, the paper's algorithm; default) follows the authors'
``EstBN`` (github.com/joe-siyuan-qiao/Batch-Channel-Normalization, README). In training, with
no gradient:

    mu_b   = mean of x per channel over (N, positions)
    var_b  = mean of (x - running_mean_old)^2 per channel     # centred on the previous estimate
    running_mean <- (1 - r) * running_mean + r * mu_b         # r = momentum
    running_var  <- (1 - r) * running_var  + r * var_b

then ``x_hat = (x - running_mean) / sqrt(running_var + eps)`` with the *updated* estimates as
constants (no gradient through the statistics, so a batch of one is fine). Eval mode uses the
estimates without updating them.

``stats="batch"`` (large-batch BCN, the authors' ImageNet code: a plain ``BatchNorm2d``): batch
statistics in training (biased variance to normalize, unbiased into the running variance, as
torch), running statistics in eval.

Deviation from the authors' code, on purpose: their channel step has one gain/shift per *group*
(shape (1, G, 1)); here it has one per *channel* like ``nn.GroupNorm``, which contains theirs
(equal gains within a group) and lets probes read per-channel gains from ``.weight``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._layout import check_input, from_ncm, init_affine, to_ncm


class BatchChannelNorm(nn.Module):
    """Batch step on (estimated or batch) statistics, then group norm; features and conv layouts.

    Args:
        num_channels: C.
        layout: ``"features"`` (N, C) or ``"conv"`` (N, C, H, W).
        groups: G of the channel (group-norm) step; must divide C.
        stats: ``"estimated"`` (micro-batch) or ``"batch"`` (large-batch), see the module doc.
        eps: added to the variances of both steps.
        momentum: update rate r of the running (estimated) statistics.
        affine: learn ``batch_weight``/``batch_bias`` (C,) for the batch step and
            ``weight``/``bias`` (C,) for the channel step (``weight`` is the layer's output gain).

    Note:
        Cost: a batch norm plus a group norm; ``"estimated"`` adds two no-grad reductions.
    """

    def __init__(self, num_channels: int, layout: str, groups: int = 8,
                 stats: str = "estimated", eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, device=None, dtype=None):
        super().__init__()
        self.num_channels, self.layout, self.groups, self.stats = num_channels, layout, groups, stats
        self.eps, self.momentum, self.affine = eps, momentum, affine
        factory = {"device": device, "dtype": dtype}
        init_affine(self, num_channels, affine, factory=factory)  # channel step: the output gain
        init_affine(self, num_channels, affine, prefix="batch_", factory=factory)
        self.register_buffer("running_mean", torch.zeros(num_channels, **factory))
        self.register_buffer("running_var", torch.ones(num_channels, **factory))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) / (N, C, H, W) -> same shape."""
        check_input(x, self.layout, self.num_channels, "batch_channel")
        x3 = to_ncm(x, self.layout)  # (N, C, M)
        if self.training:
            self.num_batches_tracked.add_(1)
        if self.stats == "batch":
            y = F.batch_norm(x3, self.running_mean, self.running_var, self.batch_weight,
                             self.batch_bias, self.training, self.momentum, self.eps)
        else:
            if self.training:
                self._update_estimates(x3)
            # (x - mean) / sqrt(var + eps) * batch_weight + batch_bias with the estimates as
            # constants: batch norm's inference kernel, one op forward and back. Copies, because
            # the next forward updates the estimates in place before this one's backward may run.
            y = F.batch_norm(x3, self.running_mean.clone(), self.running_var.clone(),
                             self.batch_weight, self.batch_bias, False, 0.0, self.eps)
        # Channel step: group norm per example over (C/G channels x M positions).
        y = F.group_norm(y, self.groups, self.weight, self.bias, self.eps)
        return from_ncm(y, self.layout, x.shape)

    @torch.no_grad()
    def _update_estimates(self, x3: torch.Tensor) -> None:
        r = self.momentum
        x3 = x3.detach()  # no_grad does not stop forward-mode AD: keep tangents out of the estimates
        mean = x3.mean(dim=(0, 2))
        var = (x3 - self.running_mean[:, None]).pow(2).mean(dim=(0, 2))  # about the old estimate
        self.running_mean.mul_(1 - r).add_(mean, alpha=r)
        self.running_var.mul_(1 - r).add_(var, alpha=r)

    def extra_repr(self) -> str:
        return (f"{self.num_channels}, layout={self.layout}, groups={self.groups}, "
                f"stats={self.stats}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}")
