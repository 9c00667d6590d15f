"""Eigenvalue spectral density of the loss Hessian (or GGN) by stochastic Lanczos quadrature.

Each of ``num_runs`` Lanczos runs from a random unit vector ``v`` gives Ritz values ``theta_j``
and weights ``w_j`` (squared first eigenvector components) with
``v^T f(H) v ~ sum_j w_j f(theta_j)``; averaging over runs and broadening each node by a Gaussian
of width ``sigma`` estimates the density ``phi(t) = (1/P) sum_i N(t; lambda_i, sigma^2)``
(Ghorbani, Krishnan & Xiao 2019; Papyan 2018). The runs go in lockstep so each step is one
block product of ``num_runs`` vectors.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .._validate import check_integer, check_positive
from ..utils import preserved_state
from .hvp import TIDY, as_subsets, curvature_operator, random_vectors
from .lanczos import lanczos_quadrature


def broadened_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """``mean_runs sum_j w_j N(grid; theta_j, sigma^2)`` on ``grid``; nodes/weights ``(runs, m)``."""
    z = (grid[:, None, None] - nodes[None]) / sigma
    return (weights[None] * np.exp(-0.5 * z**2)).sum(-1).mean(-1) / (sigma * np.sqrt(2 * np.pi))


def density_grid(nodes: np.ndarray, num_points: int, sigma_rel: float) -> tuple[np.ndarray, float]:
    lo, hi = float(nodes.min()), float(nodes.max())
    width = max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
    sigma = sigma_rel * width
    return np.linspace(lo - 3 * sigma, hi + 3 * sigma, num_points), sigma


def hessian_density(model, batch, loss_fn, *, num_runs: int = 4, steps: int = 30, num_points: int = 100,
                    sigma_rel: float = 0.01, mode: str = "train", kind: str = "hessian", params=None,
                    seed: int = 0) -> pd.DataFrame:
    """Spectral density of the batch loss's Hessian (or GGN) on a grid of eigenvalues.

    Args:
        model, batch, loss_fn: as every probe.
        num_runs: independent SLQ runs (random starting vectors) averaged.
        steps: Lanczos steps per run (capped at P; ``P`` steps resolve every eigenvalue).
        num_points: grid points; sigma_rel: Gaussian width relative to the spectrum's range.
        mode, kind, params: which matrix (see :func:`~.hvp.curvature_operator`); a list of names
            gives one density per subset.
        seed: of the starting vectors (a local generator).

    Returns:
        Tidy rows: metric ``density`` (value = density per unit eigenvalue, column ``eigenvalue`` =
        grid point; integrates to ~1), then ``lambda_max``/``lambda_min`` (extreme Ritz values),
        ``trace`` (``P * mean sum_j w_j theta_j``) and ``sigma`` with ``eigenvalue`` NaN.
        ``converged`` is False when ``steps < P`` (quadrature, not the exact spectrum).

    Note:
        Cost: ``steps`` block products of ``num_runs`` vectors (``num_runs * steps`` HVPs);
        memory ``num_runs x steps x P`` for the bases.
    """
    for what, v in (("num_runs", num_runs), ("steps", steps), ("num_points", num_points)):
        check_positive(what, v, integer=True)
    check_positive("sigma_rel", sigma_rel, finite=True)
    check_integer("seed", seed)
    rows = []
    with preserved_state(model):
        for sub in as_subsets(params):
            with curvature_operator(model, batch, loss_fn, mode=mode, kind=kind, params=sub) as op:
                v0 = random_vectors(num_runs, op.dim, seed=seed, device=op.device, dtype=op.dtype,
                                    rademacher=True)  # lower-variance quadrature than Gaussian
                nodes, weights = lanczos_quadrature(op.mm, v0, steps)
                budget = (op.hvps, nodes.shape[1], nodes.shape[1] >= op.dim)
                grid, sigma = density_grid(nodes, num_points, sigma_rel)
                dens = broadened_density(nodes, weights, grid, sigma)
                rows += [("density", op.label, float(d), *budget, float(t)) for t, d in zip(grid, dens)]
                summary = {"lambda_max": nodes.max(), "lambda_min": nodes.min(),
                           "trace": op.dim * (weights * nodes).sum(1).mean(), "sigma": sigma}
                rows += [(m, op.label, float(v), *budget, float("nan")) for m, v in summary.items()]
    frame = pd.DataFrame(rows, columns=TIDY[1:] + ["eigenvalue"])
    frame.insert(0, "probe", "hessian_density")
    return frame
