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
from ..utils import preserved_state
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
    named = model.named_layers() if hasattr(model, "named_layers") else [
        (n, m) for n, m in model.named_modules() if getattr(m, "weight", None) is not None]
    weights = [(name, m.weight) for name, m in named if m.weight.requires_grad]
    x, y = batch
    with preserved_state(model):
        model.train(mode == "train")
        grads = torch.autograd.grad(loss_fn(model(x), y), [w for _, w in weights], allow_unused=True)
    rows = []
    for (name, w), g in zip(weights, grads):
        wn = float(torch.linalg.vector_norm(w.detach()))
        gn = 0.0 if g is None else float(torch.linalg.vector_norm(g))
        rows += [(name, "weight_norm", wn), (name, "grad_norm", gn),
                 (name, "grad_to_weight", gn / wn if wn > 0 else float("inf")),
                 (name, "inv_weight_norm_sq", 1.0 / wn**2 if wn > 0 else float("inf"))]
    return tidy_frame("layer_norms", rows)
