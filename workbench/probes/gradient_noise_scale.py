"""Gradient noise scale and critical batch size (McCandlish, Kaplan, Amodei et al. 2018, "An Empirical
Model of Large-Batch Training"), and the per-parameter gradient signal-to-noise ratio.

With ``g_i`` the per-example gradients of a batch of N, ``G`` the true gradient, ``Sigma`` the
per-example covariance and ``H`` the Hessian:

- ``b_simple = tr(Sigma) / |G|^2``, with ``tr(Sigma) = sum_i |g_i - gbar|^2 / (N - 1)`` and
  ``|G|^2`` either ``|gbar|^2`` (plug-in) or ``|gbar|^2 - tr(Sigma)/N`` (unbiased,
  ``b_simple_unbiased``; inf when that is not positive);
- the two-batch-size estimator: ``|G|^2 ~ (Bb|G_b|^2 - Bs|G_s|^2)/(Bb - Bs)``,
  ``tr(Sigma) ~ (|G_s|^2 - |G_b|^2)/(1/Bs - 1/Bb)`` with ``G_b`` the gradient of the whole batch
  and ``|G_s|^2`` the mean over its disjoint sub-batches of ``small_batch`` examples;
- ``b_noise = tr(H Sigma) / (G^T H G)`` and the critical batch size ``b_crit ~ b_noise``, with
  numerator and denominator as rows of their own (``trace_hess_cov``, ``grad_hess_grad``):
  ``b_noise`` is inf when ``G^T H G <= 0`` (the step along -G meets no positive curvature, so the
  quadratic model sets no critical batch size), and ``grad_hess_grad`` says which sign it was;
- ``gsnr`` per parameter tensor: the mean over its coordinates of ``gbar_j^2 / var_j(g_ij)``
  (Liu et al. 2020), leaving out noise-free coordinates (variance <= 1e-12 x the largest; NaN if
  all are).

Per-example gradients in train mode: BatchNorm couples the examples, so ``g_i`` is the gradient of
example i's loss *through the batch statistics* (they still average to the batch gradient). They
come from ``torch.func.jacrev`` of the per-example losses on a copy whose BatchNorm layers have no
running buffers (``replace_all_batch_norm_modules_``, environment-notes.md §5); modules
``torch.func`` cannot run (in-place statistic updates, PowerNorm's custom backward) fall back to
one backward per example on the live model.
"""
from __future__ import annotations

import copy
import math

import pandas as pd
import torch
from torch.func import functional_call, jacrev, replace_all_batch_norm_modules_

from .._validate import check_choice, check_integer, check_positive
from ..norms import batch_split_ok, fitting_batch_size
from ..utils import preserved_state
from .hvp import (
    MODES,
    TIDY,
    check_batch,
    curvature_operator,
    forward_loss,
    restored_buffers,
    select_params,
)


def _per_example_losses(out, y, loss_fn):
    return torch.stack([loss_fn(out[i:i + 1], y[i:i + 1]).reshape(()) for i in range(out.shape[0])])


def per_example_grads(model, batch, loss_fn, *, mode: str = "train", params=None) -> tuple[torch.Tensor, str]:
    """``(N, P)`` per-example gradients over the selected parameters, and the method used."""
    names, plist = select_params(model, params)
    x, y = check_batch(batch)
    try:
        probe = copy.deepcopy(model)
        probe.train(mode == "train")
        if mode == "train":
            replace_all_batch_norm_modules_(probe)
        fixed = {n: t.detach() for n, t in list(probe.named_parameters()) + list(probe.named_buffers())
                 if n not in names}

        def losses(p):
            out = functional_call(probe, {**fixed, **p}, (x,))
            return torch.vmap(lambda o, t: loss_fn(o[None], t[None]).reshape(()))(out, y)

        jac = jacrev(losses)({n: p.detach() for n, p in zip(names, plist)})
        return torch.cat([jac[n].reshape(x.shape[0], -1) for n in names], dim=1), "torch.func"
    except (RuntimeError, NotImplementedError, TypeError):
        pass
    with restored_buffers(model), torch.enable_grad():
        model.train(mode == "train")
        out, _ = forward_loss(model, batch, loss_fn)
        ell = _per_example_losses(out, y, loss_fn)
        # a backward may update buffers (PowerNorm): each starts from the same values. Only
        # the changed ones are written back: the graph may hold others (BatchNorm's), and an
        # in-place write to those fails the next backward.
        snap = [[b, b._version, b.detach().clone()] for b in model.buffers()]
        rows = []
        for i in range(ell.shape[0]):
            with torch.no_grad():
                for entry in snap:
                    b, version, value = entry
                    if b._version != version:
                        b.copy_(value)
                        entry[1] = b._version
            g = torch.autograd.grad(ell[i], plist, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(p) if t is None else t).reshape(-1)
                                   for t, p in zip(g, plist)]))
    return torch.stack(rows), "loop"


def _default_small_batch(model, n: int, mode: str) -> int:
    """``N // 4``, or the largest size below it (or the smallest above it, below N) that the
    model's norms on batch statistics take in train mode (:func:`~workbench.norms.batch_split_ok`:
    at least 2, no ghost virtual batch of one); ``N // 4`` (at least 1) when none does."""
    base = max(1, n // 4)
    return base if mode != "train" else fitting_batch_size(model, base, n)


def _batch_grad_sq(model, batch, loss_fn, mode, params) -> float:
    with restored_buffers(model), torch.enable_grad():
        model.train(mode == "train")
        _, plist = select_params(model, params)
        _, loss = forward_loss(model, batch, loss_fn)
        g = torch.autograd.grad(loss, plist, allow_unused=True)
        return float(sum(t.pow(2).sum() for t in g if t is not None))


def gradient_noise_scale(model, batch, loss_fn, *, mode: str = "train", params=None,
                         small_batch: int | None = None, hessian: bool = True,
                         max_hessian_examples: int = 64, seed: int = 0) -> pd.DataFrame:
    """Simple and Hessian-weighted gradient noise scales, critical batch size and per-parameter GSNR.

    Args:
        model, batch, loss_fn: as every probe; the batch should hold many examples (N >= 2).
        mode: ``"train"`` or ``"eval"`` (which loss, as for the Hessian probes).
        params: None (all trainable parameters) or one module / parameter name.
        small_batch: sub-batch size Bs of the two-batch estimator (default N // 4, at least 1,
            and at least 2 when the model has norms on batch statistics (BatchNorm, ghost,
            Batch-Channel with ``stats="batch"``; :func:`~workbench.norms.batch_split_ok`) in
            train mode; must be < N); the big batch is the whole batch.
        hessian: also compute ``b_noise`` (needs ``min(N, max_hessian_examples) + 1`` HVPs).
        max_hessian_examples: examples whose centred gradients enter ``tr(H Sigma)``.
        seed: picks those examples when N is larger (a local generator).

    Returns:
        Tidy rows (layer ``"all"`` or the subset): ``grad_norm_sq``, ``grad_norm_sq_unbiased``,
        ``trace_cov``, ``b_simple``, ``b_simple_unbiased``, ``grad_norm_sq_two_batch``,
        ``trace_cov_two_batch``, ``b_simple_two_batch``, ``b_noise``, ``b_crit``,
        ``trace_hess_cov`` (tr(H Sigma)), ``grad_hess_grad`` (G^T H G; ``b_noise`` is inf when it is
        not positive), ``gsnr``; the three Hessian quantities are NaN with ``hessian=False``;
        plus ``gsnr`` per parameter tensor (layer = parameter name).

    Note:
        Cost: per-example gradients (about N gradients of one example, vectorized; memory N x P),
        ``N / small_batch + 1`` gradients for the two-batch estimator, and with ``hessian`` one
        forward + double backward and up to ``max_hessian_examples + 1`` HVPs.
    """
    check_choice("mode", mode, MODES)
    check_integer("seed", seed)
    x, y = check_batch(batch)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"gradient_noise_scale needs a batch of at least 2 examples, got {n}")
    small_batch = _default_small_batch(model, n, mode) if small_batch is None else small_batch
    check_positive("small_batch", small_batch, integer=True)
    if small_batch >= n:
        raise ValueError(f"small_batch={small_batch} must be smaller than the batch ({n}); valid: 1..{n - 1}")
    check_positive("max_hessian_examples", max_hessian_examples, integer=True)
    rows, hvps = [], 0
    with preserved_state(model):
        names, plist = select_params(model, params)
        label = "all" if params is None else params
        grads, method = per_example_grads(model, batch, loss_fn, mode=mode, params=params)
        gbar = grads.mean(0)
        centred = grads - gbar
        var = centred.pow(2).sum(0) / (n - 1)                   # (P,) per-coordinate variance
        tr_cov = float(var.sum())
        g2 = float(gbar.pow(2).sum())
        g2_unb = g2 - tr_cov / n
        # Two batch sizes: the whole batch (Bb = n) and its disjoint sub-batches of small_batch.
        gb2 = _batch_grad_sq(model, batch, loss_fn, mode, params)
        subs = [(x[i:i + small_batch], y[i:i + small_batch]) for i in range(0, n - small_batch + 1, small_batch)]
        try:
            gs2 = sum(_batch_grad_sq(model, s, loss_fn, mode, params) for s in subs) / len(subs)
        except ValueError as err:
            hint = ""
            if mode == "train" and not batch_split_ok(model, small_batch):
                hint = ("; the model's norms on batch statistics need sub-batches of at least 2 "
                        "examples in train mode (with ghost batch norm, no virtual batch of one): "
                        f"pass such a small_batch with a batch of at least 3 examples (got {n}), "
                        "or mode='eval'")
            raise ValueError(f"gradient_noise_scale: sub-batches of small_batch={small_batch} "
                             f"examples (of a batch of {n}) do not fit the model: {err}{hint}") from err
        bs, bb = small_batch, n
        g2_two = (bb * gb2 - bs * gs2) / (bb - bs)
        tr_two = (gs2 - gb2) / (1 / bs - 1 / bb)
        b_noise = tr_h_cov = g_hg = float("nan")
        if hessian:
            with curvature_operator(model, batch, loss_fn, mode=mode, params=params) as op:
                pick = torch.arange(n)
                if n > max_hessian_examples:
                    gen = torch.Generator().manual_seed(seed)
                    pick = torch.randperm(n, generator=gen)[:max_hessian_examples]
                d = centred[pick.to(centred.device)]
                hd = torch.cat([op.mm(d[i:i + 32]) for i in range(0, d.shape[0], 32)])
                tr_h_cov = float((hd * d).sum()) / d.shape[0] * n / (n - 1)
                g_hg = float(gbar @ op.mv(gbar))
                hvps = op.hvps
            b_noise = tr_h_cov / g_hg if g_hg > 0 else float("inf")
        # Coordinates with no noise (e.g. a bias right before BatchNorm: gradient ~1e-17) are
        # left out of the means; their ratio is round-off over round-off.
        noisy = var > 1e-12 * var.max()
        gsnr = torch.where(noisy, gbar.pow(2) / var.where(noisy, torch.ones_like(var)), torch.nan)
        values = {
            "grad_norm_sq": g2, "grad_norm_sq_unbiased": g2_unb, "trace_cov": tr_cov,
            "b_simple": tr_cov / g2 if g2 > 0 else math.inf,
            "b_simple_unbiased": tr_cov / g2_unb if g2_unb > 0 else math.inf,
            "grad_norm_sq_two_batch": g2_two, "trace_cov_two_batch": tr_two,
            "b_simple_two_batch": tr_two / g2_two if g2_two > 0 else math.inf,
            "b_noise": b_noise, "b_crit": b_noise, "trace_hess_cov": tr_h_cov,
            "grad_hess_grad": g_hg, "gsnr": float(gsnr.nanmean()),
        }
        rows += [(m, label, float(v), hvps, 1, True, method) for m, v in values.items()]
        i = 0
        for name, p in zip(names, plist):
            rows.append(("gsnr", name, float(gsnr[i:i + p.numel()].nanmean()), 0, 1, True, method))
            i += p.numel()
    frame = pd.DataFrame(rows, columns=TIDY[1:] + ["method"])
    frame.insert(0, "probe", "gradient_noise_scale")
    return frame
