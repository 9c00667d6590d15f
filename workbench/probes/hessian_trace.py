"""Trace of the loss Hessian (or GGN) on a batch: Hutchinson and Hutch++ with a standard error.

Hutchinson averages ``v^T H v`` over Rademacher ``v`` (error O(1/sqrt(m)) in m products).
Hutch++ (Meyer, Musco, Musco & Woodruff 2021) spends a third of the products on a sketch
``Q = orth(H S)`` whose trace ``tr(Q^T H Q)`` is exact and the rest on Hutchinson for the
deflated remainder ``(I - QQ^T) H (I - QQ^T)``; neural-network Hessians have a few outliers that
dominate the trace, which the sketch captures (O(1/m) error). The standard error is the sample
standard deviation of the Hutchinson part over sqrt(its sample count); with ``num_matvecs >= P``
the trace is computed exactly from a basis (``trace_stderr`` 0). Not every Hessian is steep:
a wide network's bulk can hold most of ``||H||_F^2`` (the 85k-parameter MLP of
``benchmarks/bench_hessian.py``), where Hutch++ wastes two thirds of its products; the default
``method="adaptive"`` notices this from the sketch and switches to Hutchinson for the rest.

Where the network allows it (parameters only in Linear/Conv layers, a loss that sums per-example
terms, and for the Hessian a network piecewise linear in each parameter such as a ReLU MLP or CNN
without normalization), ``method="exact"`` (and ``"auto"``, first) computes the trace exactly
from C backward passes instead (:mod:`.exact_trace`): no variance, no products.
"""
from __future__ import annotations

import pandas as pd
import torch

from .._validate import check_choice, check_integer, check_positive
from ..utils import preserved_state
from .exact_trace import ExactTraceUnavailable, exact_trace, unsupported_reason
from .hvp import TIDY, as_subsets, curvature_operator, random_vectors, select_params

METHODS = ("auto", "exact", "adaptive", "hutchpp", "hutchinson", "both")


def trace_estimate(op, method: str, num_matvecs: int, seed: int, block: int = 32) -> tuple[float, float]:
    """``(trace, standard error)`` of a :class:`~.hvp.CurvatureOperator` (or anything with ``mm``)."""
    return _trace(op, method, num_matvecs, seed, block)[:2]


def _trace(op, method: str, num_matvecs: int, seed: int, block: int = 32) -> tuple[float, float, str]:
    """``(trace, standard error, estimator used)``; see :func:`hessian_trace` for the methods."""
    dim, dev, dt = op.dim, op.device, op.dtype

    def mm(vs):  # blocks bound memory (k x activations for the batched backward)
        return torch.cat([op.mm(vs[i:i + block]) for i in range(0, vs.shape[0], block)])

    def stderr(samples):
        return float(samples.std() / samples.numel() ** 0.5) if samples.numel() > 1 else float("inf")

    if num_matvecs >= dim:  # exact: e_i^T H e_i
        eye = torch.eye(dim, dtype=dt, device=dev)
        exact = sum(mm(eye[i:i + block]).diagonal(offset=i).sum() for i in range(0, dim, block))
        return float(exact), 0.0, "basis"
    if method == "hutchinson":
        v = random_vectors(num_matvecs, dim, seed=seed, device=dev, dtype=dt, rademacher=True)
        samples = (mm(v) * v).sum(1)
        return float(samples.mean()), stderr(samples), "hutchinson"
    s = max(1, num_matvecs // 3)
    n_h = max(1, num_matvecs - 2 * s)
    S = random_vectors(s, dim, seed=seed, device=dev, dtype=dt, rademacher=True)
    HS = mm(S)                                                # (s, P): rows H s_i
    Q, _ = torch.linalg.qr(HS.T)                              # (P, s), orthonormal columns
    HQ = mm(Q.T)                                              # (s, P): rows H q_j
    exact = float((HQ * Q.T).sum())                           # tr(Q^T H Q)
    if method in ("auto", "adaptive"):  # an operator has no exact path: auto is adaptive here
        # Rademacher: Var(v^T A v) <= 2 ||A||_F^2. With n_h ~ s products left, Hutch++'s deflated
        # remainder D = (I - QQ^T) H (I - QQ^T) beats plain Hutchinson on H (which can reuse the
        # sketch's s samples) when the sketch holds over about half of ||H||_F^2: ||D||_F^2 ~
        # ||H||_F^2 - ||HQ||_F^2. ||H||_F^2 is estimated by mean ||H s_i||^2 (unbiased but noisy
        # for a few outliers), so Hutchinson is taken only when the sketch holds under a quarter:
        # a wrong switch on a spiked spectrum costs orders of magnitude, a wrong stay at most ~2x.
        fro2 = float((HS ** 2).sum(1).mean())
        if float((HQ ** 2).sum()) < 0.25 * fro2:  # a flat spectrum: the sketch deflates little
            G = random_vectors(n_h, dim, seed=seed + 1, device=dev, dtype=dt, rademacher=True)
            samples = torch.cat([(HS * S).sum(1), (mm(G) * G).sum(1)])
            return float(samples.mean()), stderr(samples), "hutchinson"
    G = random_vectors(n_h, dim, seed=seed + 1, device=dev, dtype=dt, rademacher=True)
    G = G - (G @ Q) @ Q.T                                     # (I - QQ^T) g
    samples = (mm(G) * G).sum(1)
    return exact + float(samples.mean()), stderr(samples), "hutchpp"


def hessian_trace(model, batch, loss_fn, *, method: str = "auto", num_matvecs: int = 30,
                  mode: str = "train", kind: str = "hessian", params=None, rtol: float = 0.05,
                  seed: int = 0) -> pd.DataFrame:
    """Trace of the Hessian (or GGN) of the batch loss, with its standard error.

    Args:
        model, batch, loss_fn: as every probe (``loss_fn`` returns the mean loss).
        method: ``"exact"``, ``"adaptive"``, ``"hutchpp"``, ``"hutchinson"``, ``"both"`` (two
            estimates, each with its own ``num_matvecs``) or ``"auto"`` (``"exact"`` where the
            network allows it, else ``"adaptive"``). ``"exact"``: the exact trace from C
            backward passes (C outputs), for networks that allow it (see :mod:`.exact_trace`;
            otherwise a ValueError saying why). ``"adaptive"``: Hutch++'s sketch first; if it
            holds under a quarter
            of ``||H||_F^2`` (a flat spectrum, where deflation removes little variance), the last
            third of the products goes to plain Hutchinson, which also reuses the sketch's
            samples (two thirds of the budget as samples instead of one third); otherwise Hutch++
            goes on. Steep spectra (a few outliers, as in trained networks) keep Hutch++.
            The ``method`` column names the estimator actually used.
        num_matvecs: HVPs per estimate (at least 3 for Hutch++); ``>= P`` gives the exact trace
            from the ``P`` unit vectors (``method`` column ``"basis"``).
        mode, kind, params: which matrix (see :func:`~.hvp.curvature_operator`); a list of names
            gives one estimate per subset.
        rtol: ``converged`` is ``trace_stderr <= rtol * |trace|``.
        seed: of the probe vectors (a local generator).

    Returns:
        Tidy rows, metrics ``trace`` and ``trace_stderr`` with a ``method`` column (the
        estimator used; ``"exact"`` rows have ``trace_stderr`` 0 and ``hvps`` 0).

    Note:
        Cost: ``num_matvecs`` HVPs per estimate, in blocks of 32 vectors (one batched backward
        each where the graph allows it), plus one forward and double backward.
    """
    check_choice("method", method, METHODS)
    check_positive("num_matvecs", num_matvecs, integer=True)
    check_integer("seed", seed)
    check_positive("rtol", rtol)
    methods = ("hutchpp", "hutchinson") if method == "both" else (method,)
    if {"hutchpp", "auto", "adaptive"} & set(methods) and num_matvecs < 3:
        raise ValueError(f"num_matvecs={num_matvecs} is too small for method {method!r} "
                         "(Hutch++ needs at least 3); use at least 3 or method='hutchinson'")
    rows = []
    shares = None
    if method in ("auto", "exact"):
        reason = unsupported_reason(model, kind, mode)
        if reason is None:
            try:
                with preserved_state(model):
                    shares = exact_trace(model, batch, loss_fn, kind=kind, mode=mode)
            except ExactTraceUnavailable:  # e.g. a loss that couples examples
                if method == "exact":
                    raise
        elif method == "exact":
            raise ValueError(f"method='exact' is not available: {reason}; use method='adaptive', "
                             "'hutchpp' or 'hutchinson'")
    if shares is not None:
        for sub in as_subsets(params):
            names, _ = select_params(model, sub)
            label = "all" if sub is None else sub
            tr = sum(shares[n] for n in names)
            rows += [("trace", label, tr, 0, 1, True, "exact"),
                     ("trace_stderr", label, 0.0, 0, 1, True, "exact")]
    with preserved_state(model):
        for sub in as_subsets(params) if shares is None else ():
            with curvature_operator(model, batch, loss_fn, mode=mode, kind=kind, params=sub) as op:
                for meth in methods:
                    before = op.hvps
                    tr, se, used = _trace(op, meth, num_matvecs, seed)
                    budget = (op.hvps - before, 1, se <= rtol * abs(tr))
                    rows += [("trace", op.label, tr, *budget, used),
                             ("trace_stderr", op.label, se, *budget, used)]
    frame = pd.DataFrame(rows, columns=TIDY[1:] + ["method"])
    frame.insert(0, "probe", "hessian_trace")
    return frame
