"""Lanczos with full reorthogonalization: extremal eigenpairs and quadrature nodes of a symmetric operator.

Everything here sees the operator only through ``matvec`` (``(P,) -> (P,)``) or ``matmat``
(``(k, P) -> (k, P)``), so it serves the Hessian, the GGN, a preconditioned Hessian or a dense
test matrix alike. The Krylov basis stays on the operator's device; only the small tridiagonal
matrix goes to the host (one sync per step, for the stopping test).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class EigResult:
    """Ritz values (descending for ``top``, ascending for ``bottom``), residual norms, basis data."""

    top: np.ndarray
    top_residuals: np.ndarray
    bottom: np.ndarray
    bottom_residuals: np.ndarray
    iters: int
    converged: bool
    top_vectors: torch.Tensor | None = None     # (k, P)
    bottom_vectors: torch.Tensor | None = None  # (bottom_k, P)


def _orthogonalize(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Remove ``w``'s components along the rows of ``basis``, twice (Kahan's "twice is enough")."""
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def _tridiag(alphas, betas) -> np.ndarray:
    m = len(alphas)
    return np.diag(alphas) + np.diag(betas[: m - 1], 1) + np.diag(betas[: m - 1], -1)


def lanczos_eigs(matvec, v0: torch.Tensor, *, k: int = 1, bottom_k: int = 0, max_iter: int = 100,
                 tol: float = 1e-3, return_vectors: bool = False) -> EigResult:
    """Top-``k`` and bottom-``bottom_k`` eigenpairs by Lanczos with full reorthogonalization.

    Stops when every wanted Ritz pair has residual ``||A y - theta y|| <= tol * max|theta|`` (the
    residual is ``beta_j |s_j|``, exact with full reorthogonalization), when the Krylov space is
    invariant, or after ``max_iter`` products (then ``converged=False`` with the best estimates).

    Note:
        Cost: one ``matvec`` per iteration, plus O(j P) for reorthogonalization; memory
        ``max_iter x P`` for the basis.
    """
    dim = v0.numel()
    max_iter = min(max_iter, dim)
    basis = torch.empty(max_iter, dim, dtype=v0.dtype, device=v0.device)
    q = v0 / torch.linalg.vector_norm(v0)
    alphas, betas = [], []
    theta = s = None
    converged, j = False, 0
    for j in range(max_iter):
        basis[j] = q
        w = matvec(q)
        a = torch.dot(w, q)
        w = _orthogonalize(w - a * q, basis[: j + 1])
        b = torch.linalg.vector_norm(w)
        alphas.append(float(a))
        betas.append(float(b))
        theta, s = np.linalg.eigh(_tridiag(alphas, betas))
        res = abs(betas[-1] * s[-1, :])
        scale = max(np.abs(theta).max(), 1e-30)
        want = np.r_[np.arange(len(theta) - min(k, len(theta)), len(theta)), np.arange(min(bottom_k, len(theta)))]
        invariant = betas[-1] <= 1e-10 * scale or j + 1 == dim
        if invariant or (len(theta) >= k + bottom_k and (res[want] <= tol * scale).all()):
            converged = True
            break
        q = w / b
    m = len(alphas)
    res = abs(betas[-1] * s[-1, :]) if m < dim else np.zeros(m)
    top_idx = np.arange(m - 1, max(m - 1 - k, -1), -1)
    bot_idx = np.arange(min(bottom_k, m))
    out = EigResult(theta[top_idx], res[top_idx], theta[bot_idx], res[bot_idx], j + 1, converged)
    if return_vectors:
        Q = basis[:m]
        S = torch.as_tensor(s, dtype=v0.dtype, device=v0.device)
        out.top_vectors = (Q.T @ S[:, top_idx.copy()]).T
        out.bottom_vectors = (Q.T @ S[:, bot_idx]).T
    return out


def lanczos_quadrature(matmat, v0: torch.Tensor, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss quadrature nodes and weights for ``len(v0)`` independent Lanczos runs, in lockstep.

    Args:
        matmat: ``(n, P) -> (n, P)`` block product.
        v0: ``(n, P)`` starting vectors (normalized here).
        steps: Lanczos steps per run (capped at P).

    Returns:
        ``nodes`` and ``weights``, each ``(n, m)``: the Ritz values of each run and the squared
        first components of their eigenvectors (each run's weights sum to 1), so that
        ``v^T f(A) v / |v|^2 ~ sum_j w_j f(theta_j)`` (stochastic Lanczos quadrature).

    Note:
        Cost: ``steps`` block products of ``n`` vectors; memory ``n x steps x P``.
    """
    n, dim = v0.shape
    steps = min(steps, dim)
    basis = torch.zeros(n, steps, dim, dtype=v0.dtype, device=v0.device)
    q = v0 / torch.linalg.vector_norm(v0, dim=1, keepdim=True)
    alphas = torch.zeros(n, steps, dtype=v0.dtype, device=v0.device)
    betas = torch.zeros(n, steps, dtype=v0.dtype, device=v0.device)
    m = steps
    for j in range(steps):
        basis[:, j] = q
        w = matmat(q)
        a = (w * q).sum(1)
        w = w - a[:, None] * q
        for _ in range(2):  # full reorthogonalization of each run against its own basis
            B = basis[:, : j + 1]                                   # (n, j+1, P)
            w = w - torch.einsum("njp,nj->np", B, torch.einsum("njp,np->nj", B, w))
        b = torch.linalg.vector_norm(w, dim=1)
        alphas[:, j], betas[:, j] = a, b
        if j + 1 < steps:
            if bool((b <= 1e-10 * a.abs().clamp_min(1e-30)).any()):  # a run found an invariant space
                m = j + 1
                break
            q = w / b[:, None]
    A, Bt = alphas[:, :m].cpu().double().numpy(), betas[:, :m].cpu().double().numpy()
    nodes, weights = np.zeros((n, m)), np.zeros((n, m))
    for r in range(n):
        theta, s = np.linalg.eigh(_tridiag(A[r], Bt[r]))
        nodes[r], weights[r] = theta, s[0] ** 2
    return nodes, weights


def deflated_eigs(matvec, v0: torch.Tensor, *, k: int = 1, bottom_k: int = 0, max_iter: int = 100,
                  tol: float = 1e-3, seed: int = 0, return_vectors: bool = False) -> EigResult:
    """:func:`lanczos_eigs`, with the copies of repeated eigenvalues it cannot see.

    Lanczos from one start vector sees each eigenvalue once, whatever its multiplicity: top-3 of
    a spectrum ``(1, 1, 1, 0.5, ...)`` came back as ``(1, 0.5, ...)``. So, where more than one
    eigenvalue at an end is wanted, Lanczos runs again from a fresh random start (``seed``) on
    the operator deflated by the eigenvectors found, ``(I - Q Q^T) A (I - Q Q^T)``, asking for
    the extreme one at each end of what remains; one that beats the k-th found joins the list,
    and this repeats until none does. Without repeats this costs one more (short) run.
    """
    res = lanczos_eigs(matvec, v0, k=k, bottom_k=bottom_k, max_iter=max_iter, tol=tol,
                       return_vectors=True)
    if k <= 1 and bottom_k <= 1 or res.iters >= v0.numel():  # nothing to miss, or A is all seen
        return res if return_vectors else _without_vectors(res)
    top = list(zip(res.top, res.top_residuals, res.top_vectors))
    bottom = list(zip(res.bottom, res.bottom_residuals, res.bottom_vectors))
    iters, converged = res.iters, res.converged
    # not ``seed`` itself: v0 may come from a generator seeded with it, and a start equal to v0
    # lies in the Krylov space already explored (an invariant one when v0 saw all it could)
    gen = torch.Generator().manual_seed((seed * 1_000_003 + 7_919) % 2**63)  # CPU: the same on any device
    for _ in range(k + bottom_k):
        # an orthonormal basis of the vectors found (a short Krylov space can put one vector in
        # both lists: a rank-deficient QR would deflate an arbitrary extra direction)
        U, S, _ = torch.linalg.svd(torch.stack([v for *_, v in top + bottom]).T, full_matrices=False)
        Q = U[:, S > 1e-8 * S[0]]  # (P, rank)

        def deflated(v, Q=Q):
            w = matvec(v - Q @ (Q.T @ v))
            return w - Q @ (Q.T @ w)

        start = torch.randn(v0.numel(), generator=gen, dtype=v0.dtype).to(v0.device)
        start = start - Q @ (Q.T @ start)
        more = lanczos_eigs(deflated, start, k=1 if k > 1 else 0, bottom_k=1 if bottom_k > 1 else 0,
                            max_iter=max_iter, tol=tol, return_vectors=True)
        iters, converged = iters + more.iters, converged and more.converged
        scale = max(abs(top[0][0]) if top else 0.0, abs(bottom[0][0]) if bottom else 0.0, 1e-30)
        joined = False
        if k > 1 and len(more.top) and more.top[0] > top[-1][0] + tol * scale:
            top = sorted(top + [(more.top[0], more.top_residuals[0], more.top_vectors[0])],
                         key=lambda t: -t[0])[:k]
            joined = True
        if bottom_k > 1 and len(more.bottom) and more.bottom[0] < bottom[-1][0] - tol * scale:
            bottom = sorted(bottom + [(more.bottom[0], more.bottom_residuals[0],
                                       more.bottom_vectors[0])], key=lambda t: t[0])[:bottom_k]
            joined = True
        if not joined:
            break
    out = EigResult(np.array([t[0] for t in top]), np.array([t[1] for t in top]),
                    np.array([t[0] for t in bottom]), np.array([t[1] for t in bottom]),
                    iters, converged)
    if return_vectors:
        dim = v0.numel()
        out.top_vectors = torch.stack([t[2] for t in top]) if top else v0.new_zeros(0, dim)
        out.bottom_vectors = torch.stack([t[2] for t in bottom]) if bottom else v0.new_zeros(0, dim)
    return out


def _without_vectors(res: EigResult) -> EigResult:
    res.top_vectors = res.bottom_vectors = None
    return res
