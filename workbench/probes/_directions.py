"""Shared plumbing for the probes that move the weights: flat parameter views, directions in
weight space (filter-normalized as in Li et al. 2018), and buffer snapshots.

Probes that evaluate the loss at many weights call :func:`restore_buffers` before every forward,
so each point sees the buffers the model had when the probe started (BatchNorm running
statistics in eval mode, PowerNorm's running quadratic mean in train mode), not the ones left by
the previous point.
"""
from __future__ import annotations

import torch
from torch import nn

MODES = ("train", "eval")


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``[(name, parameter), ...]`` of every parameter that requires a gradient, in order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def flat_view(tensors) -> torch.Tensor | None:
    """The (P,) view that the tensors tile, in order, when they are consecutive contiguous pieces
    of one storage (the trainer's flat parameter and gradient buffers, ``train.flat``), else
    None. Detached; writing into it writes into every tensor."""
    tensors = list(tensors)
    if not tensors:
        return None
    first = tensors[0]
    storage, size = first.untyped_storage().data_ptr(), first.element_size()
    at, total = first.data_ptr(), 0
    for t in tensors:
        if (t.data_ptr() != at or not t.is_contiguous() or t.dtype != first.dtype
                or t.untyped_storage().data_ptr() != storage):
            return None
        at += t.numel() * size
        total += t.numel()
    return first.detach().as_strided((total,), (1,), first.storage_offset())


def flatten(tensors) -> torch.Tensor:
    """A list of tensors -> one flat (P,) tensor (detached, a copy)."""
    tensors = list(tensors)
    view = flat_view(tensors)
    if view is not None:  # one copy instead of a reshape and a piece per tensor
        return view.clone()
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def unflatten(flat: torch.Tensor, like) -> list[torch.Tensor]:
    """(P,) -> tensors shaped like ``like``; a leading batch dim (K, P) is kept: (K, *shape)."""
    out, i = [], 0
    lead = flat.shape[:-1]
    for t in like:
        out.append(flat[..., i:i + t.numel()].reshape(*lead, *t.shape))
        i += t.numel()
    return out


def snapshot_buffers(model: nn.Module, into=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(buffer, copy)]`` of the model's buffers. ``into``: an earlier snapshot of the same
    buffers, taken again into its own copies (one op instead of a clone per buffer, for a caller
    that snapshots the same model over and over: the trainer's in-step probes) and returned."""
    if into is None:
        return [(b, b.detach().clone()) for b in model.buffers()]
    if into:
        with torch.no_grad():
            torch._foreach_copy_([v for _, v in into], [b for b, _ in into])
    return into


@torch.no_grad()
def restore_buffers(snapshot) -> None:
    if snapshot:
        torch._foreach_copy_([b for b, _ in snapshot], [v for _, v in snapshot])


def random_direction(params, generator: torch.Generator) -> list[torch.Tensor]:
    """Gaussian tensors shaped like ``params``, drawn on the CPU from ``generator`` (so the
    result does not depend on the device and the global RNG is not touched), then moved."""
    return [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]


def filter_normalize(direction, params, *, ignore_1d: bool = True) -> list[torch.Tensor]:
    """Filter normalization (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets").

    Each filter of ``direction`` — a slice along dim 0 of a weight with 2 or more dims: a row of
    a Linear weight, an output channel of a conv kernel, an embedding row — is rescaled to the norm
    of the matching filter of the weight: ``d_i <- d_i * ||w_i|| / ||d_i||``. One-dimensional
    parameters (biases, norm gains and shifts) are set to zero when ``ignore_1d`` (their
    ``--xignore biasbn``), else rescaled as a whole to the parameter's norm.
    """
    out = []
    for d, p in zip(direction, params):
        w = p.detach()
        if w.dim() <= 1:
            out.append(torch.zeros_like(d) if ignore_1d else
                       d * (w.norm() / d.norm().clamp_min(1e-12)))
            continue
        dn = d.flatten(1).norm(dim=1).clamp_min(1e-12)  # (out,)
        wn = w.flatten(1).norm(dim=1)
        out.append(d * (wn / dn).view(-1, *([1] * (d.dim() - 1))))
    return out


def to_flat_vectors(vectors, named) -> list[torch.Tensor]:
    """(k, P), a list of (P,) tensors, of per-parameter lists or of ``{name: tensor}`` dicts
    (missing names count as zeros) -> a list of (P,) over the ``named`` parameters."""
    params = [p for _, p in named]
    numel = sum(p.numel() for p in params)
    vectors = [[v[n] if n in v else torch.zeros_like(p) for n, p in named]
               if isinstance(v, dict) else v for v in vectors] if isinstance(vectors, list) else vectors
    if isinstance(vectors, torch.Tensor):
        vectors = list(vectors.reshape(-1, numel)) if vectors.numel() % numel == 0 else [vectors]
    flat = [v.detach().reshape(-1) if isinstance(v, torch.Tensor) else flatten(v) for v in vectors]
    for v in flat:
        if v.numel() != numel:
            raise ValueError(f"a direction has {v.numel()} entries; the model has {numel} "
                             "trainable parameters")
    return [v.to(device=params[0].device, dtype=params[0].dtype) for v in flat]
