"""PowerNorm (Shen, Yao, Gholami, Mahoney & Keutzer, "PowerNorm: Rethinking Batch Normalization
in Transformers", ICML 2020, Algorithm 1). Follows the official code line by line
(github.com/sIncerass/powernorm, ``fairseq/modules/norms/mask_powernorm.py``, ``PowerFunction``);
its running gradient statistic ``ema_gz`` is the paper's nu up to the factor (1 - alpha_b).

Per channel, with statistics over N and positions (tokens: N and T) and t the training step
(``num_batches_tracked``, counted from 1), alpha = 1 - momentum, alpha_b = 1 - backward_momentum:

Forward, training::

    psi2_B = mean(x^2)                                  # batch quadratic mean, no centering
    z = x / sqrt(psi2_B + eps)       if t <= warmup_iters
    z = x / sqrt(running_phi + eps)  otherwise          # running psi^2 of the previous step
    if t < warmup_iters: running_phi <- running_phi * (t - 1) / t + psi2_B / t   # cumulative avg
    running_phi <- alpha * running_phi + (1 - alpha) * psi2_B
    y = weight * z + bias

Backward (approximate; ``ema_gz`` is the running gradient statistic Gamma, nu = (1-alpha_b)*Gamma)::

    g = weight * dL/dy
    g_approx = g - (1 - alpha_b) * ema_gz * z           # replaces the batch term mean(g*z)*z
    ema_gz <- ema_gz + mean(g_approx * z)               # i.e. nu <- nu(1-(1-a_b)mean(z^2)) + (1-a_b)mean(g z)
    dL/dx = g_approx / sqrt(psi2_B + eps)               # batch psi, as in the official code
    dL/dweight = sum(dL/dy * z),  dL/dbias = sum(dL/dy)

Eval: ``y = weight * x / sqrt(running_phi + eps) + bias`` (exact autograd).

Differences from the official module: ``momentum``/``backward_momentum`` are torch-style rates
(official ``alpha_fwd = 1 - momentum``, ``alpha_bkw = 1 - backward_momentum``, both 0.9 there);
``warmup_iters`` defaults to 0 (pure Algorithm 1; the official module defaults to 10000 and the
IWSLT14 scripts pass the learning-rate warm-up, 8000 updates); its per-token ``GroupScaling1D``
pre-scaling (dividing each token by its RMS over head-sized channel groups) is not part of
Algorithm 1 and is left out (compose with ``rms``/``group`` if wanted); padding masks are not
supported. The backward is differentiable once more with the statistics held fixed, so
Hessian-vector products see the Jacobian of the approximate gradient.
"""
from __future__ import annotations

import torch
from torch import nn

from ._layout import check_input, from_ncm, init_affine, to_ncm


class _PowerFunction(torch.autograd.Function):
    """y = weight * x * inv_fwd + bias with PowerNorm's approximate backward; x is (N, C, M)."""

    @staticmethod
    def forward(x, weight, bias, inv_fwd, inv_bwd, ema_gz, backward_momentum):
        y = x * inv_fwd[:, None]
        if weight is not None:
            y = y * weight[:, None] + bias[:, None]
        return y

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _bias, inv_fwd, inv_bwd, ema_gz, backward_momentum = inputs
        ctx.save_for_backward(x, weight, inv_fwd, inv_bwd)
        ctx.save_for_forward(x, weight, inv_fwd)
        ctx.ema_gz, ctx.backward_momentum = ema_gz, backward_momentum

    @staticmethod
    def jvp(ctx, dx, dweight, dbias, dinv_fwd, *_):
        """Forward mode is exact (the forward is affine in x; only the backward approximates):
        the tangent of ``weight * x * inv_fwd + bias``."""
        x, weight, inv_fwd = ctx.saved_tensors
        dy = None
        if dx is not None:
            dy = dx * inv_fwd[:, None]
        if dinv_fwd is not None:
            term = x * dinv_fwd[:, None]
            dy = term if dy is None else dy + term
        if weight is not None:
            dy = None if dy is None else dy * weight[:, None]
            if dweight is not None:
                term = x * inv_fwd[:, None] * dweight[:, None]
                dy = term if dy is None else dy + term
            if dbias is not None:
                dy = dbias[:, None].expand_as(x) if dy is None else dy + dbias[:, None]
        return dy if dy is not None else torch.zeros_like(x)

    @staticmethod
    def backward(ctx, dy):
        x, weight, inv_fwd, inv_bwd = ctx.saved_tensors
        z = x * inv_fwd[:, None]
        g = dy if weight is None else dy * weight[:, None]
        # Snapshot Gamma: it is updated in place below and may sit in a double-backward graph.
        approx = g - ctx.backward_momentum * ctx.ema_gz.clone()[:, None] * z
        with torch.no_grad():
            ctx.ema_gz.add_((approx * z).mean(dim=(0, 2)))
        dx = approx * inv_bwd[:, None]
        dw = db = None
        if weight is not None:
            dw, db = (dy * z).sum(dim=(0, 2)), dy.sum(dim=(0, 2))
        return dx, dw, db, None, None, None, None


class PowerNorm(nn.Module):
    """PowerNorm: divide by a running quadratic mean, approximate backward; all three layouts.

    Args:
        num_channels: C.
        layout: ``"features"`` (N, C), ``"conv"`` (N, C, H, W) or ``"tokens"`` (N, T, C).
        eps: added to the quadratic means.
        momentum: update rate of ``running_phi`` (psi^2), 1 - alpha_fwd.
        backward_momentum: weight of the running gradient statistic, 1 - alpha_bkw.
        warmup_iters: for t <= warmup_iters normalize by the batch's psi^2 instead of the
            running one, and (t < warmup_iters) build ``running_phi`` as a cumulative average.
        affine: learn a per-channel gain ``weight`` (C,) and shift ``bias`` (C,).

    Buffers: ``running_phi`` (C,) psi^2, ``ema_gz`` (C,) the backward statistic Gamma (updated in
    every backward pass through a training forward), ``num_batches_tracked`` t.

    Note:
        Cost: one reduction over the batch per channel forward and one backward; no batch
        dependence of the output after warm-up (only through the running statistics).
    """

    def __init__(self, num_channels: int, layout: str, eps: float = 1e-5,
                 momentum: float = 0.1, backward_momentum: float = 0.1, warmup_iters: int = 0,
                 affine: bool = True, device=None, dtype=None):
        super().__init__()
        self.num_channels, self.layout, self.eps, self.affine = num_channels, layout, eps, affine
        self.momentum, self.backward_momentum = momentum, backward_momentum
        self.warmup_iters = warmup_iters
        factory = {"device": device, "dtype": dtype}
        init_affine(self, num_channels, affine, factory=factory)
        self.register_buffer("running_phi", torch.ones(num_channels, **factory))
        self.register_buffer("ema_gz", torch.zeros(num_channels, **factory))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) / (N, C, H, W) / (N, T, C) -> same shape."""
        check_input(x, self.layout, self.num_channels, "power")
        x3 = to_ncm(x, self.layout)  # (N, C, M)
        if not self.training:
            y = x3 * (self.running_phi + self.eps).rsqrt()[:, None]
            if self.weight is not None:
                y = y * self.weight[:, None] + self.bias[:, None]
            return from_ncm(y, self.layout, x.shape)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            t = int(self.num_batches_tracked)
            batch_phi = x3.pow(2).mean(dim=(0, 2))  # psi_B^2, (C,)
            inv_bwd = (batch_phi + self.eps).rsqrt()
            inv_fwd = inv_bwd if t <= self.warmup_iters else (self.running_phi + self.eps).rsqrt()
            if t < self.warmup_iters:
                self.running_phi.mul_((t - 1) / t).add_(batch_phi / t)
            self.running_phi.mul_(1 - self.momentum).add_(batch_phi, alpha=self.momentum)
        y = _PowerFunction.apply(x3, self.weight, self.bias, inv_fwd, inv_bwd, self.ema_gz,
                                 self.backward_momentum)
        return from_ncm(y, self.layout, x.shape)

    def extra_repr(self) -> str:
        return (f"{self.num_channels}, layout={self.layout}, eps={self.eps}, "
                f"momentum={self.momentum}, backward_momentum={self.backward_momentum}, "
                f"warmup_iters={self.warmup_iters}, affine={self.affine}")
