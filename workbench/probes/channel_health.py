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

import contextlib
import math

import pandas as pd
import torch
from torch import nn

from .._validate import check_choice, check_positive
from ..norms import is_norm_module
from ..utils import forward_uses_rng, preserved_state
from ._batch import check_pair, run_model
from ._directions import MODES
from ._tidy import tidy_frame

ACTIVATIONS = (nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Sigmoid, nn.Softplus)
SUMMARY = ("dead_fraction", "constant_fraction", "one_sided_fraction", "duplicate_fraction",
           "duplicate_pairs", "median_elimination_distance", "channels")


def _by_channel(t: torch.Tensor) -> torch.Tensor:
    """(N, C) / (N, C, H, W) / (N, T, C) -> (M, C): every value of each channel in one column
    (channels last, so the usual (N, C) and (N, T, C) inputs are views, not copies)."""
    if t.dim() == 2:
        return t
    if t.dim() == 3:
        return t.reshape(-1, t.shape[-1])
    return t.movedim(1, -1).reshape(-1, t.shape[1])


def _channel_stats(pre, out, constant_threshold, elimination_threshold, duplicate_threshold):
    """Per-channel statistics of L layers at once: ``pre``/``out`` are (L, M, C) (values by
    channels). Returns a dict of (L, C) tensors and the (L,) number of duplicate pairs.

    Few, whole-group tensor ops: on a small model every op costs more in dispatch than in
    arithmetic, and this runs inside training steps (the ``standard`` preset)."""
    # float32 (half/bfloat16 go up, float64 stays): enough for the thresholds and correlations,
    # and half the memory traffic of float64 on conv activations
    a = pre.to(torch.promote_types(pre.dtype, torch.float32))
    m = a.shape[1]
    mean = a.mean(dim=1)
    c = a - mean[:, None]
    # sqrt(M) * std, for var, std and scale (a reduction of squares along a strided dim: a
    # third of vector_norm's time on the small channels-last layers of an MLP)
    root = (c * c).sum(dim=1).sqrt_()
    std = root / math.sqrt(m)  # biased
    dead = out.abs().amax(dim=1) == 0  # (cheaper than ~out.any(dim=1) on a middle dim)
    constant = root < math.sqrt(constant_threshold * m)  # Var < constant_threshold
    dist = (mean.abs() / std).nan_to_num_(nan=math.inf, posinf=math.inf)  # 0/0 (constant at 0): inf
    # correlations of the non-constant channels; a near-constant channel's column is zeroed, so
    # it is nobody's duplicate (the threshold is > 0)
    z = c * root.reciprocal().masked_fill_(constant, 0.0)[:, None]
    # (L, C, C), each pair once (i < j); a NaN correlation (a channel with NaN/inf values) is no
    # duplicate and must not hide the others from the maxima below
    corr = (z.transpose(1, 2) @ z).nan_to_num_(nan=0.0).triu_(diagonal=1)
    # channel i has a duplicate when row i or column i holds a correlation above the threshold
    # (> 0, so the zeroed lower triangle never counts); float maxima, not boolean any(): the
    # reductions are several times cheaper
    duplicate = torch.maximum(corr.amax(dim=1), corr.amax(dim=2)) > duplicate_threshold
    return {"pre_mean": mean, "pre_std": std, "elimination_distance": dist, "dead": dead,
            "near_constant": constant, "one_sided": dist > elimination_threshold,
            "duplicate": duplicate}, (corr > duplicate_threshold).sum(dim=(1, 2))


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
    thresholds = health_thresholds(constant_threshold, elimination_threshold, duplicate_threshold,
                                   gain_threshold)
    x, _ = check_pair(batch)  # the targets are not used and may be None
    if not torch.is_tensor(x):
        raise ValueError(f"batch must hold a tensor of inputs, got {type(x).__name__}")
    acts = activation_modules(model)
    with preserved_state(model, rng=forward_uses_rng(model), params=False, grads=False), torch.no_grad():
        model.train(mode == "train")
        with capture_inputs(acts) as seen:
            run_model(model, x)
    summary, channel_rows = health_rows(model, acts, seen, thresholds, per_channel=per_channel)
    if not per_channel:
        return tidy_frame("channel_health", summary)
    return tidy_frame("channel_health", [(*row, -1) for row in summary] + channel_rows,
                      extra=("channel",))


def health_thresholds(constant_threshold: float = 1e-6, elimination_threshold: float = 3.0,
                      duplicate_threshold: float = 0.99, gain_threshold: float = 1e-3) -> tuple:
    """Check the thresholds (see :func:`channel_health`) and return them as a tuple."""
    check_positive("constant_threshold", constant_threshold)
    check_positive("elimination_threshold", elimination_threshold)
    check_positive("gain_threshold", gain_threshold, allow_zero=True)
    check_positive("duplicate_threshold", duplicate_threshold)
    if duplicate_threshold > 1:
        raise ValueError(f"duplicate_threshold must be in (0, 1], got {duplicate_threshold!r}")
    return constant_threshold, elimination_threshold, duplicate_threshold, gain_threshold


def activation_modules(model) -> list[tuple[str, nn.Module]]:
    """``[(name, module)]`` of the model's activation modules; ValueError when there are none."""
    acts = [(n, m) for n, m in model.named_modules() if isinstance(m, ACTIVATIONS)]
    if not acts:
        raise ValueError("channel_health needs activation modules (one of: "
                         f"{', '.join(c.__name__ for c in ACTIVATIONS)}); the model has none")
    return acts


class _Seen(dict):
    """``{activation module name: (input, output)}`` of a forward pass, and the names of the
    modules called more than once in it (``reused``)."""

    def __init__(self):
        super().__init__()
        self.reused: set[str] = set()


@contextlib.contextmanager
def capture_inputs(acts):
    """Within the block, every forward of each activation module stores ``(input, output)``
    (detached) in the yielded dict under the module's name."""
    seen = _Seen()

    def record(name):
        def hook(module, args, out):
            if name in seen:
                seen.reused.add(name)
            seen[name] = (args[0].detach(), out.detach())
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in acts]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def norm_gains(model) -> list[tuple[str, nn.Module]]:
    """``[(name, module)]`` of the model's norm layers with per-channel gains (``weight``)."""
    return [(name, m) for name, m in model.named_modules()
            if is_norm_module(m) and isinstance(getattr(m, "weight", None), torch.Tensor)]


def health_rows(model, acts, seen, thresholds, *, per_channel: bool = False, gains=None):
    """The summary rows ``(layer, metric, value)`` (and per-channel rows ``(layer, metric, value,
    channel)``) from the captured pre-activations ``seen`` and the model's norm gains
    (``gains``: :func:`norm_gains` of the model, found again when None)."""
    constant_threshold, elimination_threshold, duplicate_threshold, gain_threshold = thresholds
    reused = sorted(getattr(seen, "reused", ()))
    if reused:
        raise ValueError(
            f"channel_health: activation module(s) {', '.join(map(repr, reused))} ran more than once "
            "in one forward pass (one module shared by several layers, as in torchvision's ResNet "
            "blocks), so their layers' pre-activations cannot be told apart; channel_health needs "
            "one activation module per layer")
    # Layers whose pre-activations have the same shape are reduced together, and every summary
    # value of every layer goes into one tensor: one device sync for the frame.
    groups: dict[tuple, list[tuple[str, torch.Tensor, torch.Tensor]]] = {}
    for name, _ in acts:
        if name in seen:
            pre, out = (_by_channel(t) for t in seen[name])
            groups.setdefault((tuple(pre.shape), pre.dtype, pre.device), []).append((name, pre, out))
    per_layer: dict[str, tuple[dict, int, int]] = {}
    values = []  # one (L, 5 + C) block per group, then the zero-gain counts
    for members in groups.values():
        pre = torch.stack([p for _, p, _ in members])
        out = torch.stack([o for _, _, o in members])
        stats, n_pairs = _channel_stats(pre, out, constant_threshold, elimination_threshold,
                                        duplicate_threshold)
        # per layer: the counts of the four flags and of duplicate pairs, then every channel's
        # distance to elimination (the median is taken in Python: no sort kernel)
        counts = torch.stack([stats[k] for k in ("dead", "near_constant", "one_sided", "duplicate")],
                             1).sum(dim=2)
        dist = stats["elimination_distance"]
        # counts travel in dist's float32, exact up to 2**24 (duplicate pairs of a layer with
        # more than ~5800 channels could exceed that: float64 then)
        exact = dist.dtype if dist.shape[1] ** 2 <= 2**25 else torch.float64
        values.append(torch.cat([torch.cat([counts, n_pairs[:, None]], 1).to(exact), dist],
                                1).reshape(-1))
        for i, (n, _, _) in enumerate(members):
            per_layer[n] = (stats, i, len(values) - 1)
    group_values = len(values)
    if gains is None:
        gains = norm_gains(model)
    gains = [(name, m.weight.detach()) for name, m in gains]
    by_size: dict[tuple, list[tuple[str, torch.Tensor]]] = {}
    for name, g in gains:  # zero-gain fractions: one comparison per group of same-sized gains
        by_size.setdefault((g.numel(), g.dtype, g.device), []).append((name, g))
    for group in by_size.values():
        small = torch.stack([g.reshape(-1) for _, g in group]).abs() < gain_threshold
        values.append(small.sum(dim=1))
    flat = torch.cat(values).tolist() if values else []  # one device sync (cat promotes dtypes)
    starts = [0]
    for v in values:
        starts.append(starts[-1] + v.numel())
    rows, channel_rows = [], []
    for name, _ in acts:
        if name not in per_layer:
            continue
        stats, i, g = per_layer[name]
        n_ch = stats["pre_mean"].shape[1]
        at = starts[g] + (5 + n_ch) * i
        dead, constant, one_sided, duplicate, pairs = flat[at:at + 5]
        dist = sorted(flat[at + 5:at + 5 + n_ch])
        rows += zip([name] * len(SUMMARY), SUMMARY,
                    [dead / n_ch, constant / n_ch, one_sided / n_ch, duplicate / n_ch, pairs,
                     dist[(n_ch - 1) // 2], float(n_ch)])  # the lower median, as torch's
        if per_channel:
            channel_rows += [(name, k, float(v), c) for k, t in stats.items()
                             for c, v in enumerate(t[i].tolist())]
    at = starts[group_values]
    for group in by_size.values():
        numel = group[0][1].numel()
        rows += [(name, "zero_gain_fraction", v / numel) for (name, _), v in zip(group, flat[at:])]
        at += len(group)
    if per_channel:
        channel_rows += [(name, "gain", float(v), c) for name, g in gains
                         for c, v in enumerate(g.tolist())]
    return rows, channel_rows
