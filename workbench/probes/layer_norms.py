"""Per-layer weight and gradient norms, and their ratio (the LARS view of a network).

For every weight layer ``l``: ``weight_norm`` ``||w_l||``, ``grad_norm`` ``||dL/dw_l||`` on the
batch, and ``grad_to_weight`` ``||g_l|| / ||w_l||`` — the relative step SGD takes per unit of
learning rate, which LARS equalizes across layers (You et al. 2017). Normalized layers are
scale-invariant, so ``lr / ||w||**2`` (``lr_effective`` per unit lr: ``inv_weight_norm_sq``) is
what actually sets their step (van Laarhoven 2017).
"""
from __future__ import annotations

import pandas as pd
import torch

from .._validate import check_choice
from ..utils import forward_uses_rng, preserved_state
from ._batch import check_pair, run_model
from ._tidy import tidy_frame

MODES = ("train", "eval")


def layer_norms(model, batch, loss_fn, *, mode: str = "train") -> pd.DataFrame:
    """Weight norm, gradient norm and their ratio for every weight layer of ``model``.

    Args:
        model: a workbench model (uses ``named_layers()``) or any ``nn.Module``.
        batch: ``(inputs, targets)``.
        loss_fn: ``loss_fn(outputs, targets) -> scalar mean loss``.
        mode: ``"train"`` (batch statistics: the loss SGD optimizes) or ``"eval"`` (running
            statistics). BatchNorm running buffers are left untouched either way.

    Returns:
        Tidy rows ``probe, metric, layer, value`` (metrics ``weight_norm``, ``grad_norm``,
        ``grad_to_weight``, ``inv_weight_norm_sq``) plus ``hvps=0, iters=1, converged=True``.

    Note:
        Cost: one forward and one backward pass.
    """
    check_choice("mode", mode, MODES)
    weights = weight_layers(model)
    x, y = check_pair(batch)
    with preserved_state(model, rng=forward_uses_rng(model), params=False, grads=False):
        model.train(mode == "train")
        grads = torch.autograd.grad(loss_fn(run_model(model, x), y), [w for _, w in weights],
                                    allow_unused=True)
    return tidy_frame("layer_norms", norm_rows(weights, grads))


def weight_layers(model) -> list[tuple[str, torch.Tensor]]:
    """``[(layer name, weight)]`` of every trainable weight layer (``named_layers()`` when the
    model has it, else every module with a ``weight``)."""
    named = model.named_layers() if hasattr(model, "named_layers") else model.named_modules()
    return [(name, m.weight) for name, m in named
            if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.requires_grad]


def norm_rows(weights, grads) -> list[tuple[str, str, float]]:
    """The probe's ``(layer, metric, value)`` rows from the weights and their gradients (None:
    unused), with one device sync."""
    if not weights:
        return []
    with torch.no_grad():  # one foreach op for every norm, one stack, one sync
        used = [g for g in grads if g is not None]
        norms = torch.stack(torch._foreach_norm([w for _, w in weights] + used)).tolist()
    wn, used_n = norms[:len(weights)], iter(norms[len(weights):])
    gn = [0.0 if g is None else next(used_n) for g in grads]
    return rows_from_norms([name for name, _ in weights], wn, gn)


def rows_from_norms(names, weight_norms, grad_norms) -> list[tuple[str, str, float]]:
    """The probe's rows from each layer's weight and gradient norm (taken elsewhere: the
    smoothness probe run together with this one has them already)."""
    rows = []
    for name, w, g in zip(names, weight_norms, grad_norms):
        rows += [(name, "weight_norm", w), (name, "grad_norm", g),
                 (name, "grad_to_weight", g / w if w > 0 else float("inf")),
                 (name, "inv_weight_norm_sq", 1.0 / w**2 if w > 0 else float("inf"))]
    return rows
