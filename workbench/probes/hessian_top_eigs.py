"""Extremal eigenvalues of the loss Hessian (or GGN) on a batch, by Lanczos.

``lambda_max`` sets the largest stable SGD step on a local quadratic (``lr < 2 / lambda_max``);
the bottom eigenvalues show negative curvature. Lanczos with full reorthogonalization reaches the
top eigenvalue to ~1e-6 in ~20 products where power iteration needs 20-100 for ~1e-3, and never
returns the repeated "ghost" copies unreorthogonalized Lanczos does (peers.md §3.3).
"""
from __future__ import annotations

import pandas as pd

from .._validate import check_integer, check_positive
from ..utils import preserved_state
from .hvp import TIDY, as_subsets, curvature_operator, random_vectors, unflatten
from .lanczos import deflated_eigs


def hessian_top_eigs(model, batch, loss_fn, *, k: int = 1, bottom_k: int = 0, mode: str = "train",
                     kind: str = "hessian", params=None, max_iter: int = 100, tol: float = 1e-3,
                     seed: int = 0, return_vectors: bool = False):
    """Top-``k`` (and bottom-``bottom_k``) eigenvalues of the batch loss's Hessian or GGN.

    Args:
        model: any ``nn.Module``; batch: ``(inputs, targets)``; loss_fn: ``(out, y) -> mean loss``.
        k: number of largest eigenvalues; bottom_k: number of smallest (0: none).
        mode: ``"train"`` (batch statistics, buffers untouched) or ``"eval"`` (running statistics).
        kind: ``"hessian"`` or ``"ggn"``.
        params: None (all parameters), a module/parameter name (its diagonal block), or a list of
            names (one block of rows each: per-layer spectra).
        max_iter: most Lanczos steps (HVPs); tol: residual tolerance relative to ``max |lambda|``.
        seed: of the starting vector (a local generator; the global RNG is untouched).
        return_vectors: also return the eigenvectors.

    Returns:
        Tidy rows: metric ``eigenvalue`` and ``residual`` with an ``index`` column (1 = largest;
        -1 = smallest), per subset in ``layer`` (``"all"`` for every parameter), plus ``hvps``,
        ``iters``, ``converged``. With ``return_vectors=True``: ``(frame, vectors)`` where
        ``vectors`` is a list, in the order of the frame's eigenvalue rows (top ``1..k`` then
        bottom), of ``{parameter name: tensor shaped like that parameter}`` unit vectors (one
        subset only).

    Note:
        Cost: one forward and one double backward, then one HVP (~1.5-2 gradients) per Lanczos
        step; ~20-40 steps for ``k=1`` at ``tol=1e-3``. Memory: ``max_iter x P`` for the basis.

        Lanczos from one start vector sees a repeated eigenvalue once; with ``k > 1`` (or
        ``bottom_k > 1``) it runs again on the operator deflated by the eigenvectors found,
        until no further copy turns up (:func:`~.lanczos.deflated_eigs`): one more short run
        when nothing repeats (top-5 of the 85k-parameter MLP of benchmarks/bench_hessian.py at
        tol=1e-3: 43 HVPs instead of 28). Exact repeats come from symmetry, e.g. the output layer's block
        (``params="head"``) of a multi-output MSE, whose Hessian is a Kronecker product.
    """
    check_positive("k", k, integer=True)
    check_positive("bottom_k", bottom_k, allow_zero=True, integer=True)
    check_positive("max_iter", max_iter, integer=True)
    check_positive("tol", tol)
    check_integer("seed", seed)
    subsets = as_subsets(params)
    if return_vectors and len(subsets) > 1:
        raise ValueError("return_vectors=True takes one parameter subset, got a list of "
                         f"{len(subsets)}")
    rows, vectors = [], []
    with preserved_state(model):
        for sub in subsets:
            with curvature_operator(model, batch, loss_fn, mode=mode, kind=kind, params=sub) as op:
                if k + bottom_k > op.dim:
                    raise ValueError(f"k={k} + bottom_k={bottom_k} exceeds the {op.dim} parameters "
                                     f"of {op.label!r}; valid: k + bottom_k <= {op.dim}")
                if max_iter < k + bottom_k:
                    raise ValueError(f"max_iter={max_iter} must be at least k + bottom_k = {k + bottom_k}")
                v0 = random_vectors(1, op.dim, seed=seed, device=op.device, dtype=op.dtype)[0]
                res = deflated_eigs(op.mv, v0, k=k, bottom_k=bottom_k, max_iter=max_iter, tol=tol,
                                    seed=seed, return_vectors=return_vectors)
                budget = (op.hvps, res.iters, res.converged)
                for idx, (lam, r) in enumerate(zip(res.top, res.top_residuals), start=1):
                    rows += [("eigenvalue", op.label, float(lam), *budget, idx),
                             ("residual", op.label, float(r), *budget, idx)]
                for idx, (lam, r) in enumerate(zip(res.bottom, res.bottom_residuals), start=1):
                    rows += [("eigenvalue", op.label, float(lam), *budget, -idx),
                             ("residual", op.label, float(r), *budget, -idx)]
                if return_vectors:
                    for vec in list(res.top_vectors) + list(res.bottom_vectors):
                        vectors.append({n: t.detach().clone() for n, t in
                                        unflatten(vec, op.names, op.params).items()})
    frame = pd.DataFrame(rows, columns=TIDY[1:] + ["index"])
    frame.insert(0, "probe", "hessian_top_eigs")
    return (frame, vectors) if return_vectors else frame
