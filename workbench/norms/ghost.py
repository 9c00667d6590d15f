"""Ghost batch normalization (Hoffer, Hubara & Soudry, 2017, "Train longer, generalize better").

In training mode the batch is cut along N into consecutive virtual batches ("ghost batches")
of ``virtual_batch_size`` examples, and each is batch-normalized with its own statistics, so
the noise of the normalization is that of a small batch while the gradient step uses the whole
batch. When N is not a multiple of the virtual size the last virtual batch is smaller
(``N % virtual_batch_size`` examples); it must still hold more than one value per channel.

Running statistics: one update per forward (not one per virtual batch), from the mean of the
virtual batches' statistics weighted by their number of examples:
``running_mean <- (1 - m) * running_mean + m * sum_k (n_k / N) * mean_k`` and the same for the
unbiased per-chunk variances. So ``momentum`` means per training step what it means for ordinary
BN, independent of how many chunks there are, and ``virtual_batch_size >= N`` is exactly
``nn.BatchNorm``. Eval mode uses the running statistics on the whole batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from ._layout import check_input, from_ncm, to_ncm


def last_virtual_batch_of_one(examples: int, virtual_batch_size: int) -> bool:
    """Whether ``examples`` split into virtual batches of ``virtual_batch_size`` leave one
    example in the last (one value per channel on (N, C) features: nothing to normalize by)."""
    return examples > virtual_batch_size and examples % virtual_batch_size == 1


class GhostBatchNorm(_BatchNorm):
    """Batch norm with statistics per virtual batch of ``virtual_batch_size`` examples.

    Subclasses torch's ``_BatchNorm`` (same parameter and buffer names as ``nn.BatchNorm1d``),
    so ``torch.func.replace_all_batch_norm_modules_`` and ``reset_running_stats`` apply; with the
    running statistics removed it normalizes per virtual batch in eval mode too.

    Args:
        num_channels: C.
        layout: ``"features"`` (N, C), ``"conv"`` (N, C, H, W) or ``"tokens"`` (N, T, C).
        virtual_batch_size: examples per ghost batch.
        eps: added to the variance.
        momentum: running-statistics update rate per forward, or None for a cumulative average.
        affine: learn a per-channel gain ``weight`` (C,) and shift ``bias`` (C,).

    Note:
        Cost: as batch norm, plus a Python loop over ``ceil(N / virtual_batch_size)`` chunks.
    """

    def __init__(self, num_channels: int, layout: str, virtual_batch_size: int = 8,
                 eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 device=None, dtype=None):
        super().__init__(num_channels, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=True, device=device, dtype=dtype)
        if (not isinstance(virtual_batch_size, int) or isinstance(virtual_batch_size, bool)
                or virtual_batch_size < 1):
            raise ValueError(f"ghost_batch: virtual_batch_size must be a positive integer, "
                             f"got {virtual_batch_size!r}")
        if virtual_batch_size == 1 and layout == "features":
            raise ValueError("ghost_batch: virtual_batch_size=1 on (N, C) features normalizes "
                             "each value by itself (one value per channel): use at least 2")
        self.layout = layout
        self.virtual_batch_size = virtual_batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) / (N, C, H, W) / (N, T, C) -> same shape."""
        check_input(x, self.layout, self.num_features, "ghost_batch")
        x3 = to_ncm(x, self.layout)  # (N, C, M)
        if not self.training and self.running_mean is not None:
            y = F.batch_norm(x3, self.running_mean, self.running_var, self.weight, self.bias,
                             False, 0.0, self.eps)
            return from_ncm(y, self.layout, x.shape)
        chunks = x3.split(self.virtual_batch_size, dim=0)
        if chunks[-1].shape[0] * chunks[-1].shape[2] < 2:
            raise ValueError(
                f"ghost_batch: the last virtual batch of a batch of {x.shape[0]} with "
                f"virtual_batch_size={self.virtual_batch_size} has one value per channel; "
                "use a batch size that is not 1 more than a multiple of virtual_batch_size"
            )
        # Each chunk with its own biased batch statistics; no running buffers inside.
        y = torch.cat([F.batch_norm(c, None, None, self.weight, self.bias, True, 0.0, self.eps)
                       for c in chunks], dim=0)
        if self.training and self.track_running_stats:
            self._update_running(chunks, x3.shape[0])
        return from_ncm(y, self.layout, x.shape)

    @torch.no_grad()
    def _update_running(self, chunks, batch: int) -> None:
        self.num_batches_tracked.add_(1)
        rate = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                else self.momentum)
        mean = sum(c.mean(dim=(0, 2)) * (c.shape[0] / batch) for c in chunks)
        var = sum(c.var(dim=(0, 2), unbiased=True) * (c.shape[0] / batch) for c in chunks)
        self.running_mean.mul_(1 - rate).add_(mean, alpha=rate)
        self.running_var.mul_(1 - rate).add_(var, alpha=rate)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, layout={self.layout}, "
                f"virtual_batch_size={self.virtual_batch_size}")
