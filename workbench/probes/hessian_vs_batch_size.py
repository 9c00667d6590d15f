"""Mini-batch Hessian spectra against batch size, beside the full-data Hessian (papers.md §2.2).

For each batch size B, ``num_batches`` disjoint random mini-batches of the data source: the top
and bottom eigenvalues and the trace of ``H_B``, their mean and spread, and the largest stable
SGD learning rate ``2 / lambda_max(H_B)``. The random-matrix model (Granziol et al., "Learning
Rates as a Function of Batch Size") predicts ``lambda_max(H_B) ~ lambda_full + c / B`` (a
BBP-type outlier shift), so ``2/lambda_max`` grows about linearly in B until it saturates; with
Adam's diagonal preconditioner ``P_B = diag(sqrt(v_B) + eps)``, ``v_B`` the mean squared
mini-batch gradient, the same for ``P^-1/2 H_B P^-1/2`` (square-root scaling).

The largest stable learning rate is that of the optimizer's iteration on the local quadratic
(:func:`stable_lr_factor`): ``2 / lambda`` for plain gradient descent, ``2 (1 + beta) / lambda``
with heavy-ball momentum ``beta`` (PyTorch's SGD), ``2 (1 + beta) / ((1 + 2 beta) lambda)`` with
Nesterov momentum, and ``2 (1 + beta1) / ((1 - beta1) lambda)`` for Adam's exponential moving
average with a frozen preconditioner (Cohen et al. 2022, "Adaptive Gradient Methods at the Edge
of Stability": 38 / lambda at beta1 = 0.9).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .._validate import check_choice, check_integer, check_positive
from ..norms import fitting_batch_size
from ..utils import preserved_state
from ._batch import on_model_device
from .exact_trace import ExactTraceUnavailable, exact_trace, unsupported_reason
from .hessian_density import broadened_density
from .hessian_trace import trace_estimate
from .hvp import KINDS, MODES, TIDY, check_batch, curvature_operator, random_vectors, select_params
from .lanczos import lanczos_eigs, lanczos_quadrature

COLUMNS = TIDY[1:] + ["batch_size", "eigenvalue"]


def stable_lr_factor(momentum: float = 0.0, *, nesterov: bool = False, ema: bool = False,
                     name: str = "momentum") -> float:
    """``k`` such that the iteration is stable on a quadratic of curvature ``lambda`` exactly when
    ``lr * lambda < k``.

    With ``h = lr * lambda``, PyTorch's SGD (``buf = momentum * buf + g``, step ``lr * buf``) is the
    linear map ``(w, lr * buf) -> ((1 - h) w - momentum lr buf, h w + momentum lr buf)``; its
    eigenvalue reaches -1 at ``h = 2 (1 + momentum)``, with Nesterov's step ``lr (g + momentum buf)``
    at ``h = 2 (1 + momentum) / (1 + 2 momentum)``. ``ema``: the momentum buffer is an exponential
    moving average (``buf = momentum * buf + (1 - momentum) g``, Adam's first moment), i.e. the
    heavy ball with ``h (1 - momentum)``: ``2 (1 + momentum) / (1 - momentum)``.
    """
    if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
        raise ValueError(f"{name} must be a number in [0, 1), got {momentum!r}")
    if nesterov and ema:
        raise ValueError("nesterov and ema (Adam's moving average) do not combine")
    if nesterov:
        return 2 * (1 + momentum) / (1 + 2 * momentum)
    if ema:
        return 2 * (1 + momentum) / (1 - momentum)
    return 2 * (1 + momentum)


def optimizer_lr_options(config) -> dict:
    """The keywords of :func:`hessian_vs_batch_size` that make its largest stable learning rates
    those of a run's optimizer (``config``: a ``TrainConfig.to_dict()``): SGD's momentum and
    Nesterov flag; for Adam/AdamW the preconditioned Hessian with the run's beta1; none for
    LARS/LAMB, whose trust ratios are not modeled (plain gradient descent's rates)."""
    if config["optimizer"] == "sgd":
        return {"momentum": config["momentum"], "nesterov": config["nesterov"]}
    if config["optimizer"] in ("adam", "adamw"):
        return {"adam": True, "adam_beta1": config["betas"][0]}
    return {}


class _Preconditioned:
    """``D H D`` with ``D = diag(d)``: a symmetric operator with the same products as ``op``."""

    def __init__(self, op, d):
        self.op, self.d, self.dim, self.device, self.dtype = op, d, op.dim, op.device, op.dtype

    def mv(self, v):
        return self.d * self.op.mv(self.d * v)

    def mm(self, vs):
        return self.d * self.op.mm(self.d * vs)


def _spectrum(op, *, max_iter, tol, trace_matvecs, density_steps, seed):
    v0 = random_vectors(1, op.dim, seed=seed, device=op.device, dtype=op.dtype)[0]
    res = lanczos_eigs(op.mv, v0, k=1, bottom_k=1, max_iter=max_iter, tol=tol)
    out = {"lambda_max": float(res.top[0]), "lambda_min": float(res.bottom[0]), "converged": res.converged}
    if trace_matvecs:
        out["trace"] = trace_estimate(op, "auto", trace_matvecs, seed)[0]
    if density_steps:
        out["quadrature"] = lanczos_quadrature(
            op.mm, random_vectors(2, op.dim, seed=seed + 7, device=op.device, dtype=op.dtype), density_steps)
    return out


def _source(model, batch):
    if hasattr(batch, "x_train") and hasattr(batch, "y_train"):  # a workbench Dataset
        # make_dataset builds on the CPU: its training split goes where the model is
        return on_model_device(model, batch.x_train, batch.y_train)
    return check_batch(batch)


def hessian_vs_batch_size(model, batch, loss_fn, *, batch_sizes=None, num_batches: int = 3,
                          mode: str = "train", kind: str = "hessian", params=None, max_iter: int = 40,
                          tol: float = 1e-2, trace_matvecs: int = 9, density_steps: int = 0,
                          density_points: int = 60, adam: bool = True, adam_eps: float = 1e-8,
                          momentum: float = 0.0, nesterov: bool = False, adam_beta1: float = 0.0,
                          seed: int = 0) -> pd.DataFrame:
    """Extremal eigenvalues, trace (and density) of mini-batch Hessians for several batch sizes.

    Args:
        model, loss_fn: as every probe.
        batch: the data source: an ``(inputs, targets)`` pair of N examples (the "full data") or
            a workbench ``Dataset`` (its training split).
        batch_sizes: sizes B < N (default: N // 8, N // 4 and N // 2, at least 2; in train
            mode each moved to the nearest size the model's norms on batch statistics take,
            :func:`~workbench.norms.fitting_batch_size`: no ghost virtual batch of one).
        num_batches: disjoint random mini-batches per size (fewer when N / B is smaller).
        mode, kind, params: which matrix (see :func:`~.hvp.curvature_operator`); one subset.
        max_iter, tol: Lanczos budget per Hessian (top and bottom eigenvalue from one run); the
            residual bound ``tol * max|lambda|`` (default 1e-2) is far below the batch-to-batch spread.
        trace_matvecs: products per Hessian for the trace (``method="adaptive"`` of
            :func:`~.hessian_trace.hessian_trace`; 0: no trace). Where the network allows the
            exact trace (``method="exact"``: Linear/Conv parameters, and for the Hessian a
            network piecewise linear in each parameter) it is used instead, at no products.
        density_steps: SLQ steps (2 runs) per Hessian, averaged into a density per B (0: none).
        adam: also the Adam-preconditioned Hessian ``P^-1/2 H P^-1/2``, ``P = diag(sqrt(v_B)+eps)``.
        momentum, nesterov: SGD's, for ``lr_max_sgd`` (:func:`stable_lr_factor`; default: plain
            gradient descent, ``2 / lambda_max``). Weight decay ``wd`` would add ``wd`` to every
            eigenvalue; it is not included.
        adam_beta1: Adam's first-moment decay, for ``lr_max_adam`` (default 0: ``2 / lambda``).
        seed: of the batch draws and probe vectors (local generators).

    Returns:
        Tidy rows with a ``batch_size`` column (N for the full data): per B ``lambda_max_mean``,
        ``lambda_max_std``, ``lambda_min_mean``/``_std``, ``trace_mean``/``_std``,
        ``lr_max_sgd`` (``k / lambda_max_mean``, ``k = 2`` without momentum),
        ``adam_lambda_max_mean``/``_std``,
        ``lr_max_adam``; the same without ``_mean`` for the full data (``lambda_max`` ...); the
        fit ``fit_lambda_full``, ``fit_c``, ``fit_r2`` of ``lambda_max_mean = a + c / B`` (on
        relative residuals, :func:`fit_inverse_b`; ``a`` predicts the full-data value); the
        exponents ``lr_sgd_exponent``/``lr_adam_exponent`` (log-log slope of lr_max over the
        mini-batch sizes); and with ``density_steps`` metric ``density`` rows on a shared grid
        (column ``eigenvalue``).

    Note:
        Cost: per Hessian (``num_batches`` per size + 1 full), one forward and double backward,
        up to ``max_iter`` HVPs for the eigenvalues, ``trace_matvecs`` for the trace,
        ``2 * density_steps`` for the density, and with ``adam`` the same eigenvalue budget again
        plus one gradient per mini-batch. The full-data Hessian holds the whole data set's graph.
    """
    check_choice("mode", mode, MODES)
    check_choice("kind", kind, KINDS)
    if batch_sizes is not None and not isinstance(batch_sizes, (list, tuple)):
        raise ValueError(f"batch_sizes must be a list of mini-batch sizes (e.g. [8, 16]) or None "
                         f"for the default, got {batch_sizes!r}")
    for b in batch_sizes or []:
        check_positive("batch size", b, integer=True)
    check_positive("num_batches", num_batches, integer=True)
    check_positive("max_iter", max_iter, integer=True)
    check_positive("tol", tol)
    check_positive("trace_matvecs", trace_matvecs, allow_zero=True, integer=True)
    check_positive("density_steps", density_steps, allow_zero=True, integer=True)
    if density_steps:
        check_positive("density_points", density_points, integer=True)
    check_integer("seed", seed)
    x, y = _source(model, batch)
    n = x.shape[0]
    if n < 2 or (batch_sizes is None and n < 3):
        need = "2 examples (batch_sizes=[1])" if batch_sizes is not None else \
            "3 examples for the default batch sizes (at least 2 each)"
        raise ValueError(f"the data source holds {n} example{'s' if n != 1 else ''}, too few for any "
                         f"mini-batch size below it: hessian_vs_batch_size needs at least {need}")
    if batch_sizes is not None and not batch_sizes:
        raise ValueError(f"batch_sizes is an empty list; give at least one mini-batch size below the "
                         f"data source's {n} examples (valid: 1..{n - 1}), or None for the default")
    if batch_sizes is None:
        batch_sizes = sorted({max(2, n // d) if mode != "train" else
                              fitting_batch_size(model, max(2, n // d), n) for d in (8, 4, 2)})
    batch_sizes = sorted(batch_sizes)
    for b in batch_sizes:
        if b >= n:
            raise ValueError(f"batch size {b} must be smaller than the data source's {n} examples; "
                             f"valid: 1..{n - 1}")
    check_positive("adam_eps", adam_eps, finite=True)
    k_sgd = stable_lr_factor(momentum, nesterov=nesterov)
    k_adam = stable_lr_factor(adam_beta1, ema=True, name="adam_beta1")
    gen = torch.Generator().manual_seed(seed)
    rows, results = [], {}
    exact_names = None  # the parameters whose exact trace shares add up to the trace
    if trace_matvecs and unsupported_reason(model, kind, mode) is None:
        exact_names = select_params(model, params)[0]
    with preserved_state(model):
        for b in batch_sizes + [n]:
            perm = torch.randperm(n, generator=gen).to(x.device)
            count = 1 if b == n else min(num_batches, n // b)
            draws = [perm[i * b:(i + 1) * b] for i in range(count)]
            specs, grads_sq = [], []
            for j, idx in enumerate(draws):
                exact = None
                if exact_names is not None:
                    try:
                        shares = exact_trace(model, (x[idx], y[idx]), loss_fn, kind=kind, mode=mode)
                        exact = sum(shares[n] for n in exact_names)
                    except ExactTraceUnavailable:  # e.g. a loss that couples examples: estimate it
                        exact_names = None
                with curvature_operator(model, (x[idx], y[idx]), loss_fn, mode=mode, kind=kind,
                                        params=params) as op:
                    spec = _spectrum(op, max_iter=max_iter, tol=tol,
                                     trace_matvecs=0 if exact is not None else trace_matvecs,
                                     density_steps=density_steps, seed=seed + j)
                    if exact is not None:
                        spec["trace"] = exact
                    spec["hvps"], label = op.hvps, op.label
                    grads_sq.append(op.grad.pow(2))
                    specs.append(spec)
            # Adam's v_B averages the squared gradients of all draws of this size: a second pass.
            if adam:
                v = torch.stack(grads_sq).mean(0)
                d = (v.sqrt() + adam_eps).rsqrt()
                for j, idx in enumerate(draws):
                    with curvature_operator(model, (x[idx], y[idx]), loss_fn, mode=mode, kind=kind,
                                            params=params) as op:
                        pre = _Preconditioned(op, d)
                        v0 = random_vectors(1, op.dim, seed=seed + j, device=op.device, dtype=op.dtype)[0]
                        r = lanczos_eigs(pre.mv, v0, k=1, max_iter=max_iter, tol=tol)
                        specs[j]["adam_lambda_max"] = float(r.top[0])
                        specs[j]["hvps"] += op.hvps
                        specs[j]["converged"] &= r.converged
            results[b] = specs
        for b, specs in results.items():
            hv = sum(s["hvps"] for s in specs)
            conv = all(s["converged"] for s in specs)
            full = b == n
            for key in ("lambda_max", "lambda_min", "trace", "adam_lambda_max"):
                if key not in specs[0]:
                    continue
                vals = np.array([s[key] for s in specs])
                if full:
                    rows.append((key, label, float(vals[0]), hv, len(specs), conv, b, np.nan))
                else:
                    rows += [(f"{key}_mean", label, float(vals.mean()), hv, len(specs), conv, b, np.nan),
                             (f"{key}_std", label, float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                              hv, len(specs), conv, b, np.nan)]
            lam = np.mean([s["lambda_max"] for s in specs])
            rows.append(("lr_max_sgd", label, k_sgd / lam if lam > 0 else np.inf, hv, len(specs), conv, b,
                         np.nan))
            if adam:
                lam_a = np.mean([s["adam_lambda_max"] for s in specs])
                rows.append(("lr_max_adam", label, k_adam / lam_a if lam_a > 0 else np.inf, hv,
                             len(specs), conv, b, np.nan))
        rows += _fits(results, batch_sizes, label, adam)
        if density_steps:
            rows += _densities(results, label, density_points)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame.insert(0, "probe", "hessian_vs_batch_size")
    return frame


def fit_inverse_b(batch_sizes, lam) -> tuple[float, float, float]:
    """``(a, c, R^2)`` of ``lam = a + c / B`` by least squares on *relative* residuals
    ``(lam_B - a - c/B) / lam_B`` where every ``lam_B > 0`` (plain residuals otherwise).

    Mini-batch ``lambda_max`` spreads about in proportion to its mean (e.g. 50 ± 40 at B=8 against
    1.1 ± 0.05 at B=512 on a trained BN MLP); with plain residuals the noisiest, smallest batch
    decides the intercept, which came out negative (-3) where the full-data value was 1.0.
    Inverse-variance weights need each size's spread, which 2-3 batches estimate too poorly
    (a lucky small spread takes over the fit). R^2 is the weighted one.
    """
    bs, lam = np.asarray(batch_sizes, dtype=float), np.asarray(lam, dtype=float)
    w = 1 / lam if (lam > 0).all() else np.ones_like(lam)
    A = np.stack([np.ones_like(bs), 1 / bs], 1)
    (a, c), *_ = np.linalg.lstsq(A * w[:, None], lam * w, rcond=None)
    resid = w * (lam - A @ np.array([a, c]))
    centred = w * (lam - np.average(lam, weights=w ** 2))
    ss = (centred ** 2).sum()
    return float(a), float(c), float(1 - (resid ** 2).sum() / ss) if ss > 0 else 1.0


def _fits(results, batch_sizes, label, adam):
    """``lambda_max_mean = a + c / B`` (:func:`fit_inverse_b`) and log-log slopes of lr_max over
    the sizes."""
    if not batch_sizes:
        return []
    bs = np.array(batch_sizes, dtype=float)
    lam = np.array([np.mean([s["lambda_max"] for s in results[b]]) for b in batch_sizes])
    rows = []
    if len(bs) >= 2:
        a, c, r2 = fit_inverse_b(bs, lam)
        rows += [("fit_lambda_full", label, a), ("fit_c", label, c), ("fit_r2", label, r2)]
        for name, key in (("lr_sgd_exponent", "lambda_max"), ("lr_adam_exponent", "adam_lambda_max")):
            if key == "adam_lambda_max" and not adam:
                continue
            lm = np.array([np.mean([s[key] for s in results[b]]) for b in batch_sizes])
            if (lm > 0).all():
                rows.append((name, label, float(np.polyfit(np.log(bs), np.log(2 / lm), 1)[0])))
    return [(m, lab, v, 0, 0, True, np.nan, np.nan) for m, lab, v in rows]


def _densities(results, label, num_points):
    """SLQ density per batch size on one grid spanning every size's Ritz values."""
    allnodes = np.concatenate([s["quadrature"][0].ravel() for specs in results.values() for s in specs])
    lo, hi = allnodes.min(), allnodes.max()
    sigma = 0.01 * max(hi - lo, 1e-12)
    grid = np.linspace(lo - 3 * sigma, hi + 3 * sigma, num_points)
    rows = []
    for b, specs in results.items():
        nodes = np.concatenate([s["quadrature"][0] for s in specs])
        weights = np.concatenate([s["quadrature"][1] for s in specs])
        dens = broadened_density(nodes, weights, grid, sigma)
        rows += [("density", label, float(v), 0, len(specs), True, b, float(t)) for t, v in zip(grid, dens)]
    return rows
