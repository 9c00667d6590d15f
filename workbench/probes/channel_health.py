"""Elimination singularities: dead, constant, one-sided and duplicated channels, per layer.

A channel that is always off (or constant) gets no gradient into its incoming weights and makes
its outgoing weights unidentifiable; two channels with the same pre-activations are linearly
dependent (the overlap singularity). Learning slows near such points (Wei et al. 2008; Orhan &
Pitkow 2018), and BN/BCN/WS are argued to keep networks away from them while LN/GN let channels
drift there (Qiao et al., "Micro-Batch Training with Batch-Channel Normalization and Weight
Standardization"). On one batch, for every activation layer (ReLU, GELU, tanh, SiLU, ...) and
channel c, over all examples (and positions) of its input ``a_c`` (the pre-activation):

- ``pre_mean``, ``pre_std`` (biased) of ``a_c``;
- ``dead``: the activation's output is exactly zero everywhere (ReLU: ``a_c <= 0`` on the batch);
- ``near_constant``: ``Var(a_c) < constant_threshold``;
- ``elimination_distance``: ``|mean| / std`` (inf for a constant channel); above
  ``elimination_threshold`` the channel is almost always on or almost always off (``one_sided``);
- ``duplicate``: the channel's centered pre-activation has cosine similarity (correlation) above
  ``duplicate_threshold`` with another non-constant channel of the layer;

and for every norm layer with per-channel gains, ``gain`` and whether ``|gain| < gain_threshold``.
Per-layer summaries: ``dead_fraction``, ``constant_fraction``, ``one_sided_fraction``,
``duplicate_fraction``, ``duplicate_pairs``, ``median_elimination_distance``, ``channels``, and for
norm layers ``zero_gain_fraction``; the per-channel rows (with a ``channel`` column) on request.
"""
from __future__ import annotations

import math

import pandas as pd
import torch
from torch import nn

from .._validate import check_choice, check_positive
from ..norms import is_norm_module
from ..utils import preserved_state
from ._directions import MODES
from ._tidy import tidy_frame

ACTIVATIONS = (nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Sigmoid, nn.Softplus)
SUMMARY = ("dead_fraction", "constant_fraction", "one_sided_fraction", "duplicate_fraction",
           "duplicate_pairs", "median_elimination_distance", "channels")


def _by_channel(t: torch.Tensor) -> torch.Tensor:
    """(N, C) / (N, C, H, W) / (N, T, C) -> (C, M): every value of each channel in one row."""
    if t.dim() == 3:
        return t.reshape(-1, t.shape[-1]).T
    return t.transpose(0, 1).reshape(t.shape[1], -1)


def _channel_stats(pre, out, constant_threshold, elimination_threshold, duplicate_threshold):
    a = _by_channel(pre).double()  # (C, M)
    var, mean = torch.var_mean(a, dim=1, unbiased=False)
    std = var.sqrt()
    dead = (_by_channel(out) == 0).all(dim=1)
    constant = var < constant_threshold
    dist = torch.where(std > 0, mean.abs() / std.clamp_min(1e-300),
                       torch.full_like(std, math.inf))
    centered = (a - mean[:, None]) / std.clamp_min(1e-300)[:, None]
    corr = centered @ centered.T / a.shape[1]  # (C, C) correlation of the pre-activations
    ok = ~constant
    pairs = (corr > duplicate_threshold) & ok[:, None] & ok[None, :]
    pairs = pairs.triu(diagonal=1)
    duplicate = pairs.any(dim=0) | pairs.any(dim=1)
    return {"pre_mean": mean, "pre_std": std, "elimination_distance": dist, "dead": dead,
            "near_constant": constant, "one_sided": dist > elimination_threshold,
            "duplicate": duplicate}, pairs.sum()


def channel_health(model, batch, loss_fn=None, *, mode: str = "train", per_channel: bool = False,
                   constant_threshold: float = 1e-6, elimination_threshold: float = 3.0,
                   duplicate_threshold: float = 0.99, gain_threshold: float = 1e-3) -> pd.DataFrame:
    """Dead, near-constant, one-sided and duplicated channels of every activation layer.

    Args:
        model: any ``nn.Module`` with activation modules (``ACTIVATIONS``); inputs of shape
            (N, C), (N, C, H, W) or (N, T, C) (channels last for 3-D, tokens).
        batch: ``(inputs, targets)``; only the inputs are used.
        loss_fn: unused (probe signature).
        mode: ``"train"`` (batch statistics) or ``"eval"`` (running statistics).
        per_channel: also return one row per channel and quantity, with a ``channel`` column.
        constant_threshold: pre-activation variance below which a channel is near-constant (> 0).
        elimination_threshold: ``|mean|/std`` above which a channel is one-sided (> 0).
        duplicate_threshold: correlation above which two channels are duplicates, in (0, 1].
        gain_threshold: ``|gain|`` below which a norm layer's gain counts as zero (>= 0).

    Returns:
        Tidy rows ``probe, metric, layer, value, hvps, iters, converged`` (+ ``channel``).

    Note:
        Cost: one forward pass without gradients; per layer O(C^2 M) for the correlations
        (M = examples x positions) and the layer's pre-activations held once in memory.
    """
    check_choice("mode", mode, MODES)
    check_positive("constant_threshold", constant_threshold)
    check_positive("elimination_threshold", elimination_threshold)
    check_positive("gain_threshold", gain_threshold, allow_zero=True)
    check_positive("duplicate_threshold", duplicate_threshold)
    if duplicate_threshold > 1:
        raise ValueError(f"duplicate_threshold must be in (0, 1], got {duplicate_threshold!r}")
    acts = [(n, m) for n, m in model.named_modules() if isinstance(m, ACTIVATIONS)]
    if not acts:
        raise ValueError("channel_health needs activation modules (one of: "
                         f"{', '.join(c.__name__ for c in ACTIVATIONS)}); the model has none")
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(name):
        def hook(module, args, out):
            seen[name] = (args[0].detach(), out.detach())
        return hook

    with preserved_state(model), torch.no_grad():
        model.train(mode == "train")
        handles = [m.register_forward_hook(record(n)) for n, m in acts]
        try:
            model(batch[0])
        finally:
            for h in handles:
                h.remove()
    # Every summary value of every layer goes into one tensor: one device sync for the frame.
    names, metrics, values, channel_rows = [], [], [], []
    for name, _ in acts:
        if name not in seen:
            continue
        stats, n_pairs = _channel_stats(*seen[name], constant_threshold, elimination_threshold,
                                        duplicate_threshold)
        dist = stats["elimination_distance"]
        names += [name] * len(SUMMARY)
        metrics += list(SUMMARY)
        flags = [stats[k].double().mean() for k in ("dead", "near_constant", "one_sided", "duplicate")]
        values.append(torch.stack(flags + [n_pairs.double(), dist.median(),
                                           torch.full_like(dist[0], len(dist))]))
        if per_channel:
            channel_rows += [(name, k, float(v), c) for k, t in stats.items()
                             for c, v in enumerate(t.tolist())]
    for name, norm in model.named_modules():
        gain = getattr(norm, "weight", None)
        if is_norm_module(norm) and isinstance(gain, torch.Tensor):
            names.append(name)
            metrics.append("zero_gain_fraction")
            values.append((gain.detach().abs() < gain_threshold).double().mean().reshape(1))
            if per_channel:
                channel_rows += [(name, "gain", float(v), c) for c, v in enumerate(gain.detach().tolist())]
    summary = zip(names, metrics, torch.cat(values).tolist())
    if not per_channel:
        return tidy_frame("channel_health", summary)
    return tidy_frame("channel_health", [(*row, -1) for row in summary] + channel_rows,
                      extra=("channel",))
