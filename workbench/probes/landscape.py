"""Loss-surface slices: the loss on a 1-D line or 2-D plane of weights through the current w.

``L(w + a d1 + b d2)`` on a grid of coordinates ``(a, b)``, with directions:

- ``"random"``: Gaussian directions, filter-normalized (Li et al. 2018): each filter (row of a
  Linear weight, output channel of a conv) rescaled to the norm of the weight's filter, biases
  and norm gains left out (``ignore_1d``), so the plot is comparable across scale-invariant nets;
  coordinates in ``[-span, span]``;
- ``"checkpoint"``: ``d1 = w_other - w`` toward another checkpoint (a state_dict or a model),
  coordinate ``a`` in ``[0, span]`` so ``a = 1`` is the checkpoint itself (linear interpolation
  between two runs or two steps; only trainable parameters move, so frozen ones must be equal in
  both, else a ValueError names them); floating-point buffers (BatchNorm running statistics) are
  interpolated along ``a`` too, as Li et al.'s ``--dir_type states``; with ``dims=2`` the second
  direction is random and filter-normalized;
- ``"hessian"``: the top ``dims`` Hessian eigenvectors (unit norm) from the curvature probe
  ``hessian_top_eigs``, coordinates in ``[-span, span]`` (distance in weight space).

Several grid points are evaluated per call where that is faster (``points_per_call``):
``torch.func.functional_call`` + ``vmap`` over stacked weights, on a copy of the model whose
BatchNorm layers use batch statistics without running buffers in train mode (same loss); models
torch.func cannot batch (PowerNorm in train mode) fall back to one point per call.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Mapping

import pandas as pd
import torch

from .._validate import check_choice, check_integer, check_positive
from ..utils import preserved_state
from ._batch import check_pair, run_model
from ._directions import (
    MODES,
    filter_normalize,
    flatten,
    random_direction,
    restore_buffers,
    snapshot_buffers,
    to_flat_vectors,
    trainable,
    unflatten,
)
from ._tidy import TIDY

DIRECTIONS = ("random", "checkpoint", "hessian")
AUTO_CHUNK = 16  # grid points per vmapped forward with points_per_call="auto"
COLUMNS = [*TIDY, "alpha", "beta"]


def axis(steps: int, lo: float, hi: float) -> torch.Tensor:
    """``steps`` evenly spaced points in [lo, hi]; with lo = -hi the middle one is exactly 0."""
    i = torch.arange(steps, dtype=torch.float64)
    if lo == -hi:
        return hi * (2 * i - (steps - 1)) / (steps - 1)
    return lo + (hi - lo) * i / (steps - 1)


def landscape(model, batch, loss_fn, *, direction: str = "random", dims: int = 2, steps: int = 21,
              span: float = 1.0, other=None, mode: str = "train", seed: int = 0,
              ignore_1d: bool = True, points_per_call: int | str = "auto") -> pd.DataFrame:
    """The loss on a ``steps`` (x ``steps``) grid of weights around ``w``.

    Args:
        model, batch, loss_fn: as every probe; ``batch = (inputs, targets)``.
        direction: ``"random"``, ``"checkpoint"`` or ``"hessian"`` (see the module doc).
        dims: 1 (a line) or 2 (a plane).
        steps: grid points per axis (>= 2; odd puts ``w`` itself on the grid).
        span: coordinate range: ``[-span, span]``, or ``[0, span]`` along a checkpoint.
        other: the checkpoint for ``direction="checkpoint"``: a state_dict or an ``nn.Module``.
        mode: ``"train"`` (batch statistics) or ``"eval"`` (running statistics); every point
            sees the buffers the model had when the probe started.
        seed: seed of the random directions (a private generator: the global RNG is untouched).
        ignore_1d: zero the random directions on one-dimensional parameters (biases, gains).
        points_per_call: grid points per batched (vmap) forward; 1 evaluates them one by one;
            ``"auto"`` (default) times both on the grid's first points (kept as results) and
            evaluates the rest with the faster, in chunks of ``AUTO_CHUNK``: batching wins on
            small models (41x41 on the digits MLP, batch 128: ~1.4x on a CPU), one by one on
            large ones where a vmapped forward holds ``AUTO_CHUNK`` copies of the activations.

    Returns:
        One row per grid point: ``metric="loss"``, ``layer=""``, the coordinates in ``alpha`` and
        ``beta`` (NaN for a line), ``iters`` the number of points, ``hvps`` and ``converged``
        those of the eigensolver that found Hessian directions.

    Note:
        Cost: ``steps**dims`` forward passes (no backward), plus the eigensolver's Hessian-vector
        products for ``direction="hessian"``; batched calls hold ``points_per_call`` copies of
        the weights and of the activations.
    """
    check_choice("direction", direction, DIRECTIONS)
    check_choice("dims", dims, (1, 2))
    check_choice("mode", mode, MODES)
    check_positive("steps", steps, integer=True)
    if steps < 2:
        raise ValueError(f"steps must be >= 2 (grid points per axis), got {steps}")
    check_positive("span", span, finite=True)
    if points_per_call != "auto":
        check_positive("points_per_call", points_per_call, integer=True)
    if (other is None) == (direction == "checkpoint"):
        raise ValueError("other (a state_dict or model) is needed with direction='checkpoint' "
                         "and only there")
    check_integer("seed", seed)
    if direction == "checkpoint" and not isinstance(other, (torch.nn.Module, Mapping)):
        raise ValueError("other must be a model or its state_dict (a mapping of names to tensors), "
                         f"got {type(other).__name__}")
    named = trainable(model)
    params = [p for _, p in named]
    x, y = check_pair(batch)
    hvps, converged, dirs, buffer_dir = 0, True, [], None
    gen = torch.Generator().manual_seed(seed)
    if direction == "checkpoint":
        state = other.state_dict() if isinstance(other, torch.nn.Module) else other
        missing = [n for n, _ in named if n not in state]
        if missing:
            raise ValueError(f"the checkpoint lacks parameters the model has: {', '.join(missing[:5])}")
        wrong = [f"{n} {tuple(state[n].shape)} (the model's: {tuple(p.shape)})" for n, p in named
                 if not torch.is_tensor(state[n]) or state[n].shape != p.shape]
        if wrong:
            raise ValueError(f"the checkpoint's parameters do not fit the model: {', '.join(wrong[:5])}")
        moved = {n for n, _ in named}
        frozen = [n for n, p in model.named_parameters() if n not in moved and n in state
                  and torch.is_tensor(state[n]) and state[n].shape == p.shape
                  and not torch.equal(state[n].to(p), p.detach())]
        if frozen:
            raise ValueError("the checkpoint differs from the model in frozen parameters "
                             f"(requires_grad=False): {', '.join(frozen[:5])}; the slice moves only "
                             "trainable ones, so a = 1 would not be the checkpoint: unfreeze them, "
                             "or copy them into one of the two first")
        dirs.append(flatten([state[n].to(p) for n, p in named]) - flatten(params))
        buffer_dir = {n: state[n].to(b) - b for n, b in model.named_buffers()
                      if b.is_floating_point() and n in state}
    elif direction == "hessian":
        try:
            from .hessian_top_eigs import hessian_top_eigs
        except ImportError as err:
            raise ValueError("direction='hessian' needs the curvature probe "
                             "workbench.probes.hessian_top_eigs, which this tree lacks; use "
                             "direction='random' or 'checkpoint'") from err
        frame, vectors = hessian_top_eigs(model, batch, loss_fn, k=dims, mode=mode,
                                          return_vectors=True)
        hvps, converged = int(frame["hvps"].max()), bool(frame["converged"].all())
        dirs = [v / v.norm() for v in to_flat_vectors(vectors, named)[:dims]]
    while len(dirs) < dims:
        dirs.append(flatten(filter_normalize(random_direction(params, gen), params, ignore_1d=ignore_1d)))
    lo = 0.0 if direction == "checkpoint" else -span
    a = axis(steps, lo, span)
    b = axis(steps, -span, span) if dims == 2 else None
    coords = (torch.cartesian_prod(a, b) if dims == 2 else a[:, None])  # (K, dims), float64
    with preserved_state(model):
        model.train(mode == "train")
        losses = _evaluate(model, named, dirs, buffer_dir, coords, x, y, loss_fn, points_per_call)
    frame = pd.DataFrame({"probe": "landscape", "metric": "loss", "layer": "", "value": losses,
                          "hvps": hvps, "iters": len(coords), "converged": converged,
                          "alpha": coords[:, 0].tolist(),
                          "beta": coords[:, 1].tolist() if dims == 2 else float("nan")})
    return frame[COLUMNS]


@torch.no_grad()
def _evaluate(model, named, dirs, buffer_dir, coords, x, y, loss_fn, chunk) -> list[float]:
    params = [p for _, p in named]
    w0 = flatten(params)
    D = torch.stack(dirs)  # (dims, P)
    C = coords.to(device=w0.device, dtype=w0.dtype)  # (K, dims)
    buffers = snapshot_buffers(model)
    b0 = {n: b.detach().clone() for n, b in model.named_buffers()}
    one = _one_by_one(model, params, dirs, buffers, buffer_dir, b0, x, y, loss_fn)
    if chunk == 1 or (chunk == "auto" and len(C) < 3 * AUTO_CHUNK):  # too few to time: one by one
        return one(C)
    try:
        batched = _batched(model, named, w0, D, buffer_dir, b0, x, y, loss_fn)
        if chunk != "auto":
            return torch.cat([batched(c) for c in C.split(chunk)]).tolist()
        # "auto": the first chunk warms vmap up, the next two time batched vs one-by-one on
        # real grid points (kept), and the faster evaluates the rest.
        first = batched(C[:AUTO_CHUNK]).tolist()
        t0 = time.perf_counter()
        timed_b = batched(C[AUTO_CHUNK:2 * AUTO_CHUNK]).tolist()
        t1 = time.perf_counter()
        timed_1 = one(C[2 * AUTO_CHUNK:3 * AUTO_CHUNK])
        t2 = time.perf_counter()
        rest = C[3 * AUTO_CHUNK:]
        if t1 - t0 < t2 - t1:
            tail = torch.cat([batched(c) for c in rest.split(AUTO_CHUNK)]).tolist() if len(rest) else []
        else:
            tail = one(rest)
        return first + timed_b + timed_1 + tail
    except RuntimeError:  # torch.func cannot batch this model (e.g. PowerNorm in train mode)
        return one(C)


def _one_by_one(model, params, dirs, buffers, buffer_dir, b0, x, y, loss_fn):
    """``C -> losses``: w = w0 + a d1 (+ b d2) written into the parameters with three fused
    (foreach) ops, only for the parameters a direction moves; buffers reset only in train mode
    (eval forwards do not touch them). The caller restores the parameters."""
    dirs_p = [unflatten(d, params) for d in dirs]
    moving = [i for i in range(len(params)) if any(bool(dp[i].any()) for dp in dirs_p)]
    ps = [params[i] for i in moving]
    w0s = [params[i].detach().clone() for i in moving]
    ds = [[dp[i] for i in moving] for dp in dirs_p]
    named_buffers = dict(model.named_buffers())

    def run(C) -> list[float]:
        out = []
        for c in C.tolist():
            if ps:
                torch._foreach_copy_(ps, w0s)
                for coef, d in zip(c, ds):
                    torch._foreach_add_(ps, d, alpha=coef)
            if model.training:
                restore_buffers(buffers)
            for n, d in (buffer_dir or {}).items():
                named_buffers[n].copy_(b0[n] + c[0] * d)
            out.append(loss_fn(run_model(model, x), y).detach())
        return torch.stack(out).tolist() if out else []
    return run


def _batched(model, named, w0, D, buffer_dir, b0, x, y, loss_fn):
    """``C -> losses`` of a chunk of points in one vmapped forward (a copy of the model)."""
    from torch.func import functional_call, replace_all_batch_norm_modules_, vmap

    fmodel = copy.deepcopy(model)
    if model.training:  # batch statistics, no running buffers to update in place
        replace_all_batch_norm_modules_(fmodel)
    names, shapes = [n for n, _ in named], [p for _, p in named]
    fixed = dict(fmodel.named_buffers())
    moving = {n: d for n, d in (buffer_dir or {}).items() if fixed.get(n) is not None}

    def loss_at(flat_w, alpha):
        state = dict(zip(names, unflatten(flat_w, shapes)))
        state.update({n: b0[n] + alpha * d for n, d in moving.items()})
        state.update({n: b for n, b in fixed.items() if n not in moving})
        return loss_fn(functional_call(fmodel, state, (x,)), y)

    batched = vmap(loss_at)
    return lambda C: batched(w0 + C @ D, C[:, 0])
