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
from ._batch import check_pair, run_model
from ._directions import (
    MODES,
    flat_view,
    restore_buffers,
    snapshot_buffers,
    trainable,
)
from ._tidy import tidy_frame
from .layer_norms import weight_layers


def eta_grid(lr: float, etas=None, num_etas: int = 8) -> list[float]:
    """The step sizes: ``etas`` as given, else ``num_etas`` log-spaced from lr/16 to 2 lr."""
    check_positive("lr", lr, finite=True)  # also sets lr_effective when etas are given
    if etas is None:
        check_positive("num_etas", num_etas, integer=True)
        if num_etas == 1:
            return [float(lr)]
        lo, hi = math.log(lr / 16), math.log(2 * lr)
        return [math.exp(lo + (hi - lo) * i / (num_etas - 1)) for i in range(num_etas)]
    if isinstance(etas, (int, float, str)) or not hasattr(etas, "__iter__"):
        raise ValueError(f"etas must be a list of step sizes (e.g. [{etas!r}]), got {etas!r}")
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
    x, y = check_pair(batch)
    with preserved_state(model, rng=forward_uses_rng(model), grads=False):
        model.train(mode == "train")
        buffers = snapshot_buffers(model)
        loss0 = loss_fn(run_model(model, x), y)
        grads = torch.autograd.grad(loss0, params, allow_unused=True)
        rows, per, _ = smoothness_rows(model, batch, loss_fn, params, layers, buffers, loss0,
                                       grads, etas, lr)
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


def _ratio(a: float, b: float) -> float:
    """``a / b`` as a tensor divides: inf for a nonzero ``a`` over 0, NaN for 0/0 (a zero
    gradient: no direction to move along)."""
    if b != 0:
        return a / b
    return math.nan if a == 0 or math.isnan(a) else math.inf


def _max(values) -> float:
    """``max`` that returns NaN when any value is NaN (as ``torch.max`` does; Python's ``max``
    depends on where the NaN sits)."""
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def _min(values) -> float:
    return math.nan if any(math.isnan(v) for v in values) else min(values)


def smoothness_rows(model, batch, loss_fn, params, layers, buffers, loss0, grads, etas, lr):
    """The probe's rows from the loss ``loss0`` and gradients ``grads`` at the current weights.

    Moves the weights to ``w - eta g`` for every step size (restoring ``buffers`` before each
    forward) and puts them back (the buffers stay as the last forward left them). Returns the
    ``(layer, metric, value)`` rows, the per-step-size ``(layer, metric, value, eta)`` rows and
    ``(weight norms, gradient norms)``, one of each per entry of ``layers`` (for layer_norms).

    Few tensor ops: the probe runs inside training steps (the ``standard`` preset), where on a
    small model each op costs more in dispatch than in arithmetic. Every norm is taken by one
    ``torch._foreach_norm`` (whole-model norms over the concatenated gradients, per-layer ones
    over the layers' pieces, not per parameter); with the trainer's flat buffers the weights
    move with one op per step size.
    """
    x, y = batch
    where = {id(p): i for i, p in enumerate(params)}
    at = [where[id(w)] for _, w in layers]  # each weight layer's place (a tied weight: one)
    g0 = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
    with torch.no_grad():
        w_flat, g_flat = flat_view(params), flat_view(g0)
        flat = w_flat is not None and g_flat is not None
        w0 = w_flat.clone() if flat else [p.detach().clone() for p in params]
    losses, moved = [loss0.detach()], []
    try:
        for eta in etas:
            with torch.no_grad():
                if flat:
                    torch.add(w0, g_flat, alpha=-eta, out=w_flat)
                else:
                    torch._foreach_copy_(params, w0)
                    torch._foreach_add_(params, g0, alpha=-eta)
            restore_buffers(buffers)
            loss = loss_fn(model(x), y)
            g = torch.autograd.grad(loss, params, allow_unused=True)
            losses.append(loss.detach())
            moved += [torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, params)]
    finally:
        with torch.no_grad():
            if flat:
                w_flat.copy_(w0)
            else:
                torch._foreach_copy_(params, w0)
    e = len(etas)
    with torch.no_grad():
        # every step size's gradient change as one (E, P) matrix (the gradients in parameter
        # order, the order of the flat buffers too), then every norm in one op: the whole
        # gradient, and per step size the whole change; per weight layer its gradient, weight
        # and changes (pieces of the rows). Per tensor this would be a norm per parameter and
        # step size, each a dispatched op on CPU.
        g_vec = g_flat if flat else torch.cat([g.reshape(-1) for g in g0])
        change = torch.cat([m.reshape(-1) for m in moved]).view(e, -1).sub_(g_vec)
        starts = [0]
        for p in params:
            starts.append(starts[-1] + p.numel())
        spans = [(starts[i], starts[i + 1]) for i in at]
        norms = torch._foreach_norm([g_vec, *change, *(g0[i] for i in at),
                                     *(w.detach() for _, w in layers),
                                     *(row[a:b] for row in change for a, b in spans)])
    vals = torch.stack([*losses, *norms]).tolist()  # one device sync
    k = len(layers)
    loss_vals, g_norm, changes = vals[:e + 1], vals[e + 1], vals[e + 2:2 * e + 2]
    g_n, w_n = vals[2 * e + 2:2 * e + 2 + k], vals[2 * e + 2 + k:2 * e + 2 + 2 * k]
    at_layer = 2 * e + 2 + 2 * k
    d_n = [vals[at_layer + j * k:at_layer + (j + 1) * k] for j in range(e)]  # per step size
    steps = [eta * g_norm for eta in etas]  # ||eta g||
    beta = [_ratio(c, s) for c, s in zip(changes, steps)]
    rows = [("", "loss", loss_vals[0]), ("", "grad_norm", g_norm),
            ("", "loss_variation", _max(loss_vals) - _min(loss_vals)),
            ("", "grad_predictiveness", _max(changes)), ("", "beta_smoothness", _max(beta))]
    for j, (name, _) in enumerate(layers):
        wn = w_n[j]
        lc = [d[j] for d in d_n]
        rows += [(name, "grad_norm", g_n[j]), (name, "weight_norm", wn),
                 (name, "lr_effective", lr / wn**2 if wn > 0 else math.inf),
                 (name, "grad_predictiveness", _max(lc)),
                 (name, "beta_smoothness", _max([_ratio(c, s) for c, s in zip(lc, steps)]))]
    per = [("", metric, v, eta) for metric, series in
           (("loss_at_eta", loss_vals[1:]), ("grad_change_at_eta", changes), ("beta_at_eta", beta))
           for v, eta in zip(series, etas)]
    return rows, per, (w_n, g_n)


def smoothness_small(model, batch, loss_fn, *, lr: float = 0.05, etas=None, num_etas: int = 2,
                     mode: str = "train", per_eta: bool = False) -> pd.DataFrame:
    """The training-time variant of :func:`smoothness`: two step sizes (lr/16 and 2 lr), three
    gradients per call. A function, not a ``functools.partial``: it pickles by reference, so
    the trainer still recognises it as the registered probe after a trip to another process
    (a dashboard's training process) and runs it together with the other training-time probes."""
    return smoothness(model, batch, loss_fn, lr=lr, etas=etas, num_etas=num_etas, mode=mode,
                      per_eta=per_eta)
