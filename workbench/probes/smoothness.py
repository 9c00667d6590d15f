"""Loss-landscape smoothness along the gradient (Santurkar et al. 2018, "How Does Batch
Normalization Help Optimization?"; the WS paper's "lower Lipschitz constants" made visible).

At the weights w with gradient g = dL/dw on the batch, for every step size eta of a grid reaching
beyond the training learning rate, the probe moves to w - eta * g and measures:

- ``loss_variation``: max - min of L over {w} and every w - eta g (the loss's range along -g);
- ``grad_predictiveness``: max over eta of ||g - dL/dw(w - eta g)||;
- ``beta_smoothness``: max over eta of ||g - dL/dw(w - eta g)|| / ||eta g||, the effective
  beta-smoothness (for a quadratic loss with Hessian H it is ||Hg|| / ||g|| for every eta);
- ``grad_norm``: ||g||, the loss's local Lipschitz constant; ``loss``: L(w).

Per weight layer (``named_layers``): the same three gradient quantities restricted to that
layer's weight (its gradient change, still divided by the whole step ||eta g||), its
``weight_norm`` and ``lr_effective = lr / ||w||**2`` — the step a scale-invariant (normalized)
layer actually takes (van Laarhoven 2017), since the raw Lipschitz numbers of such a layer scale
with its weight norm.
"""
from __future__ import annotations

import math

import pandas as pd
import torch

from .._validate import check_choice, check_positive
from ..utils import forward_uses_rng, preserved_state
from ._directions import (
    MODES,
    assign,
    flat_view,
    flatten,
    restore_buffers,
    snapshot_buffers,
    trainable,
)
from ._tidy import tidy_frame
from .layer_norms import weight_layers


def eta_grid(lr: float, etas=None, num_etas: int = 8) -> list[float]:
    """The step sizes: ``etas`` as given, else ``num_etas`` log-spaced from lr/16 to 2 lr."""
    if etas is None:
        check_positive("lr", lr)
        check_positive("num_etas", num_etas, integer=True)
        if num_etas == 1:
            return [float(lr)]
        lo, hi = math.log(lr / 16), math.log(2 * lr)
        return [math.exp(lo + (hi - lo) * i / (num_etas - 1)) for i in range(num_etas)]
    etas = [float(e) for e in etas]
    if not etas:
        raise ValueError("etas is empty; give at least one positive step size (e.g. [0.01, 0.1])")
    for e in etas:
        if not (e > 0 and math.isfinite(e)):
            raise ValueError(f"every step size in etas must be a finite number > 0, got {e!r}")
    return etas


def smoothness(model, batch, loss_fn, *, lr: float = 0.05, etas=None, num_etas: int = 8,
               mode: str = "train", per_eta: bool = False) -> pd.DataFrame:
    """Loss variation, gradient predictiveness and effective beta-smoothness along -g.

    Args:
        model: any ``nn.Module``; per-layer rows use ``named_layers()`` when it has one.
        batch: ``(inputs, targets)``.
        loss_fn: ``loss_fn(outputs, targets) -> scalar mean loss``.
        lr: the training learning rate (sets the default grid and ``lr_effective``).
        etas: explicit step sizes (positive); default ``num_etas`` log-spaced in [lr/16, 2 lr].
        num_etas: grid size when ``etas`` is None.
        mode: ``"train"`` (batch statistics) or ``"eval"`` (running statistics). Buffers are
            restored before every evaluation, so every point sees the probe's starting buffers.
        per_eta: also return, per step size, ``loss_at_eta``, ``grad_change_at_eta`` and
            ``beta_at_eta`` (whole model) with the step size in an extra ``eta`` column.

    Returns:
        Tidy rows ``probe, metric, layer, value, hvps, iters, converged`` (layer ``""`` for the
        whole model); ``iters`` counts the gradient evaluations.

    Note:
        Cost: ``len(etas) + 1`` forward and backward passes; memory: two copies of the
        parameters and one of the gradient.
    """
    check_choice("mode", mode, MODES)
    etas = eta_grid(lr, etas, num_etas)
    params, layers = smoothness_targets(model)
    x, y = batch
    with preserved_state(model, rng=forward_uses_rng(model), grads=False):
        model.train(mode == "train")
        buffers = snapshot_buffers(model)
        loss0 = loss_fn(model(x), y)
        grads = torch.autograd.grad(loss0, params, allow_unused=True)
        rows, per = smoothness_rows(model, batch, loss_fn, params, layers, buffers, loss0, grads,
                                    etas, lr)
    if not per_eta:
        return tidy_frame("smoothness", rows, iters=len(etas) + 1)
    return tidy_frame("smoothness", [(*r, math.nan) for r in rows] + per, iters=len(etas) + 1,
                      extra=("eta",))


def smoothness_targets(model) -> tuple[list[torch.Tensor], list[tuple[str, torch.Tensor]]]:
    """The trainable parameters, and ``[(layer name, weight)]`` of the weight layers among them.

    The parameters come in model order, or in memory order when that makes them one flat buffer
    (the trainer's flat parameters, grouped by optimizer group): then the flat weight and gradient
    vectors are views of the trainer's buffers, one copy each instead of one per tensor.
    """
    params = [p for _, p in trainable(model)]
    if not params:
        raise ValueError("smoothness needs a model with trainable parameters")
    in_memory = sorted(params, key=lambda p: p.data_ptr())
    if flat_view(in_memory) is not None:
        params = in_memory
    ids = {id(p) for p in params}
    return params, [(n, w) for n, w in weight_layers(model) if id(w) in ids]


def smoothness_rows(model, batch, loss_fn, params, layers, buffers, loss0, grads, etas, lr):
    """The probe's rows from the loss ``loss0`` and gradients ``grads`` at the current weights.

    Moves the weights to ``w - eta g`` for every step size (restoring ``buffers`` before each
    forward) and puts them back (the buffers stay as the last forward left them). Returns the
    ``(layer, metric, value)`` rows and the per-step-size ``(layer, metric, value, eta)`` rows.
    """
    x, y = batch
    # where each weight layer sits in the flat parameter vector (a tied weight: one place)
    offsets, at = {}, 0
    for p in params:
        offsets[id(p)] = (at, at + p.numel())
        at += p.numel()
    spans = [offsets[id(w)] for _, w in layers]

    def flat_grad(g):  # an unused parameter (None) has a zero gradient
        return flatten([torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, params)])

    def loss_and_grad():
        restore_buffers(buffers)
        loss = loss_fn(model(x), y)
        return loss.detach(), flat_grad(torch.autograd.grad(loss, params, allow_unused=True))

    g0_flat = flat_grad(grads)
    loss0 = loss0.detach()
    w0 = flatten(params)
    losses, diffs = [loss0], []
    for eta in etas:
        assign(params, w0 - eta * g0_flat)
        loss, g = loss_and_grad()
        losses.append(loss)
        diffs.append(g - g0_flat)
    assign(params, w0)
    # norms of g0, w0 and every gradient change, whole and per layer: (2 + E, P) -> (2 + E, L)
    stacked = torch.stack([g0_flat, w0, *diffs])
    total = torch.linalg.vector_norm(stacked, dim=1)
    g_norm = total[0]
    steps = torch.tensor(etas, device=g_norm.device, dtype=g_norm.dtype) * g_norm  # ||eta g||
    losses = torch.stack(losses)
    changes = total[2:]
    beta = changes / steps
    scalars = [loss0, g_norm, losses.max() - losses.min(), changes.max(), beta.max()]
    if layers:
        by_layer = torch.stack([torch.linalg.vector_norm(stacked[:, a:b], dim=1) for a, b in spans], 1)
        lc = by_layer[2:]  # (E, layers)
        scalars += [by_layer[0], by_layer[1], lc.max(0).values, (lc / steps[:, None]).max(0).values]
    vals = torch.cat([s.reshape(-1) for s in scalars] + [losses[1:], changes, beta]).tolist()
    names = ["loss", "grad_norm", "loss_variation", "grad_predictiveness", "beta_smoothness"]
    rows = [("", m, v) for m, v in zip(names, vals)]
    k, n_l = len(names), len(layers)
    for i, (name, _) in enumerate(layers):
        gn, wn, gp, bs = (vals[k + j * n_l + i] for j in range(4))
        rows += [(name, "grad_norm", gn), (name, "weight_norm", wn),
                 (name, "lr_effective", lr / wn**2 if wn > 0 else math.inf),
                 (name, "grad_predictiveness", gp), (name, "beta_smoothness", bs)]
    e, tail = len(etas), vals[k + 4 * n_l:]
    per = [("", metric, tail[j * e + i], eta) for j, metric in
           enumerate(["loss_at_eta", "grad_change_at_eta", "beta_at_eta"])
           for i, eta in enumerate(etas)]
    return rows, per


def smoothness_small(model, batch, loss_fn, *, lr: float = 0.05, etas=None, num_etas: int = 2,
                     mode: str = "train", per_eta: bool = False) -> pd.DataFrame:
    """The training-time variant of :func:`smoothness`: two step sizes (lr/16 and 2 lr), three
    gradients per call. A function, not a ``functools.partial``: it pickles by reference, so
    the trainer still recognises it as the registered probe after a trip to another process
    (a dashboard's training process) and runs it together with the other training-time probes."""
    return smoothness(model, batch, loss_fn, lr=lr, etas=etas, num_etas=num_etas, mode=mode,
                      per_eta=per_eta)
