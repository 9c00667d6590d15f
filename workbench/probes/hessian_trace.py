"""Trace of the loss Hessian (or GGN) on a batch: Hutchinson and Hutch++ with a standard error.

Hutchinson averages ``v^T H v`` over Rademacher ``v`` (error O(1/sqrt(m)) in m products).
Hutch++ (Meyer, Musco, Musco & Woodruff 2021) spends a third of the products on a sketch
``Q = orth(H S)`` whose trace ``tr(Q^T H Q)`` is exact and the rest on Hutchinson for the
deflated remainder ``(I - QQ^T) H (I - QQ^T)``; neural-network Hessians have a few outliers that
dominate the trace, which the sketch captures (O(1/m) error). The standard error is the sample
standard deviation of the Hutchinson part over sqrt(its sample count); with ``num_matvecs >= P``
the trace is computed exactly from a basis (``trace_stderr`` 0).
"""
from __future__ import annotations

import pandas as pd
import torch

from .._validate import check_choice, check_positive
from ..utils import preserved_state
from .hvp import TIDY, as_subsets, curvature_operator, random_vectors

METHODS = ("hutchpp", "hutchinson", "both")


def trace_estimate(op, method: str, num_matvecs: int, seed: int, block: int = 32) -> tuple[float, float]:
    """``(trace, standard error)`` of a :class:`~.hvp.CurvatureOperator` (or anything with ``mm``)."""
    dim, dev, dt = op.dim, op.device, op.dtype

    def mm(vs):  # blocks bound memory (k x activations for the batched backward)
        return torch.cat([op.mm(vs[i:i + block]) for i in range(0, vs.shape[0], block)])

    if num_matvecs >= dim:  # exact: e_i^T H e_i
        eye = torch.eye(dim, dtype=dt, device=dev)
        return float(sum(mm(eye[i:i + block]).diagonal(offset=i).sum() for i in range(0, dim, block))), 0.0
    if method == "hutchinson":
        v = random_vectors(num_matvecs, dim, seed=seed, device=dev, dtype=dt, rademacher=True)
        samples = (mm(v) * v).sum(1)
        se = samples.std() / samples.numel() ** 0.5 if samples.numel() > 1 else torch.tensor(float("inf"))
        return float(samples.mean()), float(se)
    s = max(1, num_matvecs // 3)
    n_h = max(1, num_matvecs - 2 * s)
    S = random_vectors(s, dim, seed=seed, device=dev, dtype=dt, rademacher=True)
    Q, _ = torch.linalg.qr(mm(S).T)                          # (P, s), orthonormal columns
    exact = float((mm(Q.T) * Q.T).sum())                    # tr(Q^T H Q)
    G = random_vectors(n_h, dim, seed=seed + 1, device=dev, dtype=dt, rademacher=True)
    G = G - (G @ Q) @ Q.T                                     # (I - QQ^T) g
    samples = (mm(G) * G).sum(1)
    se = samples.std() / n_h ** 0.5 if n_h > 1 else torch.tensor(float("inf"))
    return exact + float(samples.mean()), float(se)


def hessian_trace(model, batch, loss_fn, *, method: str = "hutchpp", num_matvecs: int = 30,
                  mode: str = "train", kind: str = "hessian", params=None, rtol: float = 0.05,
                  seed: int = 0) -> pd.DataFrame:
    """Trace of the Hessian (or GGN) of the batch loss, with its standard error.

    Args:
        model, batch, loss_fn: as every probe (``loss_fn`` returns the mean loss).
        method: ``"hutchpp"``, ``"hutchinson"`` or ``"both"`` (two estimates, each with its own
            ``num_matvecs``).
        num_matvecs: HVPs per estimate (at least 3 for Hutch++); ``>= P`` gives the exact trace.
        mode, kind, params: which matrix (see :func:`~.hvp.curvature_operator`); a list of names
            gives one estimate per subset.
        rtol: ``converged`` is ``trace_stderr <= rtol * |trace|``.
        seed: of the probe vectors (a local generator).

    Returns:
        Tidy rows, metrics ``trace`` and ``trace_stderr`` with a ``method`` column.

    Note:
        Cost: ``num_matvecs`` HVPs per estimate, in blocks of 32 vectors (one batched backward
        each where the graph allows it), plus one forward and double backward.
    """
    check_choice("method", method, METHODS)
    check_positive("num_matvecs", num_matvecs, integer=True)
    check_positive("rtol", rtol)
    methods = ("hutchpp", "hutchinson") if method == "both" else (method,)
    if "hutchpp" in methods and num_matvecs < 3:
        raise ValueError(f"num_matvecs={num_matvecs} is too small for Hutch++; use at least 3")
    rows = []
    with preserved_state(model):
        for sub in as_subsets(params):
            with curvature_operator(model, batch, loss_fn, mode=mode, kind=kind, params=sub) as op:
                for meth in methods:
                    before = op.hvps
                    tr, se = trace_estimate(op, meth, num_matvecs, seed)
                    budget = (op.hvps - before, 1, se <= rtol * abs(tr))
                    rows += [("trace", op.label, tr, *budget, meth),
                             ("trace_stderr", op.label, se, *budget, meth)]
    frame = pd.DataFrame(rows, columns=TIDY[1:] + ["method"])
    frame.insert(0, "probe", "hessian_trace")
    return frame
