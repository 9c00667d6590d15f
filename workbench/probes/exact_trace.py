"""Exact trace of the loss Hessian (or GGN) for networks whose parameters live in Linear/Conv layers.

For a loss that is a sum of per-example terms, the Gauss-Newton matrix is
``G = sum_n J_n^T L_n J_n`` (``J_n`` the Jacobian of example n's outputs in the parameters,
``L_n`` the Hessian of the loss in those outputs). Writing ``L_n = V_n diag(l_n) V_n^T``,

    tr(G) = sum_n sum_c l_nc ||J_n^T v_nc||^2,

and ``J_n^T v_nc`` is example n's gradient for the backward seed ``v_nc``: C backward passes (C
outputs per example; one batched backward here) give every per-example gradient norm, and for a
Linear layer ``||delta_n a_n^T||^2 = ||delta_n||^2 ||a_n||^2`` needs no per-example gradient at all
(Goodfellow's trick; convolutions and sequence inputs use the Gram form
``sum (A A^T) * (D D^T)``). BackPACK's exact DiagGGN computes the same quantity.

For the Hessian, ``H = G + sum_n sum_k (dl_n/df_nk) d^2 f_nk / d theta^2``. When the network is
piecewise linear in every single parameter (Linear/Conv layers joined by ReLU, max/average
pooling, sums), ``d^2 f / d theta_i^2 = 0`` almost everywhere: the Hessian's *diagonal* equals the
GGN's, so ``tr(H) = tr(G)`` exactly (the off-diagonal entries differ; eigenvalues need HVPs).

Which networks qualify is decided from the module tree, never guessed: every module must be a
container whose forward is known (``nn.Sequential``, ``nn.ModuleList`` inside one of the workbench
MLP/ConvNet classes) or a whitelisted leaf; every trainable parameter must belong to an
``nn.Linear``/``nn.Conv1d``/``nn.Conv2d`` (exact types: Weight Standardization's subclasses
reparametrize the weight non-linearly), each called once per forward; normalization layers,
attention and dropout that is active are out. The loss must treat examples independently: the
output Hessian is read off with C products and checked against one random product, so a loss
that couples examples is refused rather than mis-traced.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .hvp import check_batch, check_finite, select_params

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
# Leaves through which the network stays piecewise linear in every parameter.
PIECEWISE_LINEAR = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Flatten, nn.MaxPool1d, nn.MaxPool2d,
                    nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Dropout)
# Per-example smooth activations: fine for the GGN, not for the Hessian's diagonal.
SMOOTH = (nn.Tanh, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Softplus, nn.ELU, nn.Hardtanh)


class ExactTraceUnavailable(ValueError):
    """The model or the loss is outside what :func:`exact_trace` handles (the message says why);
    callers with an estimator to fall back on catch this, not every ValueError."""


def _known_containers() -> tuple[type, ...]:
    from ..models.convnet import BasicBlock, ConvNet
    from ..models.mlp import MLP
    return (nn.Sequential, MLP, ConvNet, BasicBlock)


def unsupported_reason(model: nn.Module, kind: str, mode: str) -> str | None:
    """Why :func:`exact_trace` cannot handle ``model`` (None when it can)."""
    containers = _known_containers()
    leaves = LAYERS + PIECEWISE_LINEAR + (SMOOTH if kind == "ggn" else ())
    if type(model) not in containers and type(model) not in leaves:
        return (f"its forward is not one the exact trace knows ({type(model).__name__}; supported: "
                "nn.Sequential and the workbench MLP/ConvNet)")
    for name, m in model.named_modules():
        label = name or "model"
        t = type(m)
        if t in containers or (t is nn.ModuleList and name):
            continue
        if t not in leaves:
            extra = "" if kind == "ggn" or t not in SMOOTH else " (smooth activations are exact for kind='ggn' only)"
            return (f"module {label!r} is a {t.__name__}{extra}; supported leaves: "
                    f"{', '.join(c.__name__ for c in leaves)}")
        if t is nn.Dropout and m.p > 0 and mode == "train":
            return f"module {label!r} is an active Dropout(p={m.p}) in mode='train' (use mode='eval')"
        if t in (nn.Conv1d, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros"
                                            or isinstance(m.padding, str)):
            return f"module {label!r}: only Conv layers with groups=1, zero padding given as numbers"
        if t not in LAYERS and any(p.requires_grad for p in m.parameters(recurse=False)):
            return f"module {label!r} ({t.__name__}) has trainable parameters"
    owners: dict[int, str] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if type(m) in LAYERS:
            for p in m.parameters(recurse=False):
                if owners.setdefault(id(p), name) != name:  # tied: per-example norms do not add
                    return f"a parameter is shared by {owners[id(p)]!r} and {name!r} (tied weights)"
    return None


def _sq_norms(layer: nn.Module, a: torch.Tensor, d: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-(seed, example) squared norms of the gradients of ``layer``'s weight and bias.

    ``a`` is the layer's input ``(N, ...)``, ``d`` the seeds' gradients at its output ``(S, N, ...)``.
    Returns ``{"weight": (S, N), "bias": (S, N)}`` (bias only if the layer has one).
    """
    s, n = d.shape[:2]
    if isinstance(layer, nn.Linear):
        A = a.reshape(n, -1, a.shape[-1])                       # (N, L, in)
        D = d.reshape(s, n, -1, d.shape[-1])                    # (S, N, L, out)
    else:
        if isinstance(layer, nn.Conv1d):
            a, d = a.unsqueeze(-2), d.unsqueeze(-2)             # as 2-D convolutions of height 1
            k, st, pd, dl = ((1, *layer.kernel_size), (1, *layer.stride), (0, *layer.padding),
                             (1, *layer.dilation))
        else:
            k, st, pd, dl = layer.kernel_size, layer.stride, layer.padding, layer.dilation
        A = F.unfold(a, k, dilation=dl, padding=pd, stride=st).transpose(1, 2)   # (N, L, in*k)
        D = d.reshape(s, n, d.shape[2], -1).transpose(2, 3)                     # (S, N, L, out)
    out = {}
    if A.shape[1] == 1:                                         # one position: ||d||^2 ||a||^2
        dd = D[:, :, 0].pow(2).sum(-1)
        out["weight"] = dd * A[:, 0].pow(2).sum(-1)
        if layer.bias is not None:
            out["bias"] = dd
        return out
    length, fan_in, fan_out = A.shape[1], A.shape[2], D.shape[3]
    gram = length * length <= fan_in * fan_out                 # else the per-example gradients
    step = max(1, (1 << 24) // (s * min(length * length, fan_in * fan_out)))   # bound memory
    parts = []
    for i in range(0, n, step):
        a_, d_ = A[i:i + step], D[:, i:i + step]
        if gram:                                                # sum (A A^T) * (D D^T)
            parts.append(((d_ @ d_.transpose(2, 3)) * (a_ @ a_.transpose(1, 2))).sum((2, 3)))
        else:
            parts.append((d_.transpose(2, 3) @ a_).pow(2).sum((2, 3)))
    out["weight"] = torch.cat(parts, 1)
    if layer.bias is not None:
        out["bias"] = D.sum(2).pow(2).sum(-1)
    return out


def exact_trace(model: nn.Module, batch, loss_fn, *, kind: str = "hessian", mode: str = "train",
                seed_block: int = 16) -> dict[str, float]:
    """Each trainable parameter's share of ``tr(H)`` (or ``tr(G)``): ``{name: float}``.

    Raises :class:`ExactTraceUnavailable` (a ValueError saying why) when the model or the loss is
    not supported; see the module docstring. ``seed_block``: backward seeds per batched backward (fewer where the layers'
    outputs are large). The caller restores the model (``preserved_state``): this sets ``model.train(mode)``.
    """
    reason = unsupported_reason(model, kind, mode)
    if reason is not None:
        raise ExactTraceUnavailable(f"exact trace not available: {reason}")
    select_params(model)  # a ValueError when nothing is trainable
    x, y = check_batch(batch)
    model.train(mode == "train")
    inputs, outputs, calls = {}, {}, {}

    def hook(mod, args, out):
        calls[mod] = calls.get(mod, 0) + 1
        inputs[mod], outputs[mod] = args[0].detach(), out

    layers = [m for m in model.modules() if type(m) in LAYERS
              and any(p.requires_grad for p in m.parameters(recurse=False))]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.enable_grad():
            out = model(x)
            loss = loss_fn(out, y)
    finally:
        for h in handles:
            h.remove()
    if not torch.is_tensor(loss) or loss.numel() != 1:
        raise ValueError("loss_fn must return a scalar (mean) loss")
    twice = [type(m).__name__ for m, c in calls.items() if c > 1]
    if twice:
        raise ExactTraceUnavailable(f"exact trace not available: a {twice[0]} is called more than once per forward")
    if out.dim() != 2:
        raise ExactTraceUnavailable(f"exact trace not available: outputs must be (examples, outputs), got {tuple(out.shape)}")
    names = {p: n for n, p in model.named_parameters()}
    shares = {n: 0.0 for n, p in model.named_parameters() if p.requires_grad}
    layers = [m for m in layers if m in outputs]
    with torch.enable_grad():
        go = torch.autograd.grad(loss, out, create_graph=True)[0]
        check_finite(float(loss.detach()), go.detach())
        if not go.requires_grad or not layers:              # loss linear in the outputs: G = 0
            return shares
        n, c = out.shape
        eye = torch.eye(c, dtype=out.dtype, device=out.device)
        seeds = eye[:, None, :].expand(c, n, c)             # seed e_k for every example at once
        cols = torch.autograd.grad(go, out, seeds, retain_graph=True, is_grads_batched=True)[0]
        L = cols.permute(1, 2, 0)                           # (N, C, C): L[n, :, k] = L_n e_k
        # Per-example blocks only if the loss treats examples separately: check one product.
        u = torch.randn(n, c, generator=torch.Generator().manual_seed(0)).to(out)
        lu = torch.autograd.grad(go, out, u, retain_graph=True)[0]
        if not torch.allclose(lu, (L @ u[:, :, None])[..., 0], rtol=1e-4,
                              atol=1e-6 * float(lu.abs().max()) + 1e-12):
            raise ExactTraceUnavailable("exact trace not available: the loss couples examples (its Hessian in "
                             "the outputs is not block-diagonal over examples)")
        lam, V = torch.linalg.eigh((L + L.transpose(1, 2)) / 2)     # L_n = V diag(lam) V^T
        zs = [outputs[m] for m in layers]
        # a block of S seeds holds S copies of every layer's output gradient: about 256 MB at most
        seed_block = max(1, min(seed_block, (1 << 26) // max(1, sum(z.numel() for z in zs))))
        for i in range(0, c, seed_block):
            vs = V[:, :, i:i + seed_block].permute(2, 0, 1)          # (S, N, C) seeds v_nk
            ds = torch.autograd.grad(out, zs, vs, retain_graph=True, is_grads_batched=True)
            w = lam[:, i:i + seed_block].T                           # (S, N)
            for m, d in zip(layers, ds):
                for pname, sq in _sq_norms(m, inputs[m], d.detach()).items():
                    p = getattr(m, pname)
                    if p.requires_grad:
                        shares[names[p]] += float((w * sq).sum())
    return shares
