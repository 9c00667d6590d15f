"""Curvature operators: Hessian- and Gauss-Newton-vector products of a model's mean loss on a batch.

:func:`curvature_operator` runs one forward and one ``create_graph`` backward on the live model and
keeps that graph, so every product after it is one more backward through it (reverse-over-reverse,
the fastest HVP measured on CPU: ~1.5-2 gradients; peers.md §5). Which loss is explicit:

- ``mode="train"``: the loss SGD optimizes (BatchNorm normalizes with the batch's statistics).
  The forward updates running buffers as a training step would; they are put back on exit, and
  buffers a backward mutates (PowerNorm's ``ema_gz``) are reset before every product so the
  operator is one fixed matrix.
- ``mode="eval"``: the network with running statistics.

``kind="ggn"`` gives the generalized Gauss-Newton matrix ``J^T H_out J`` (``J`` the Jacobian of
the batch's outputs, ``H_out`` the Hessian of the loss in the outputs). ``params`` picks a subset
(a module such as ``"blocks.0"`` or a parameter name); the operator is then that diagonal block.
Vectors are flat ``(P,)`` (or ``(k, P)`` blocks) over the subset in ``model.parameters()`` order.
"""
from __future__ import annotations

import contextlib
import time
import warnings

import torch
from torch import nn

from .._validate import check_choice
from ._batch import check_batch, check_finite, forward_loss  # noqa: F401  (re-exported)
from ._tidy import TIDY  # noqa: F401  (re-exported: the curvature probes import it from here)

MODES = ("train", "eval")
KINDS = ("hessian", "ggn")


def select_params(model: nn.Module, params: str | None = None) -> tuple[list[str], list[torch.Tensor]]:
    """Names and tensors of the trainable parameters of ``model`` (or of one module / parameter)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters (none with requires_grad=True)")
    if params is None:
        return [n for n, _ in named], [p for _, p in named]
    if not isinstance(params, str):
        raise ValueError(f"params must be None (all trainable parameters) or a module / parameter "
                         f"name such as 'blocks.0' or 'head.weight', got {params!r}")
    picked = [(n, p) for n, p in named if n == params or n.startswith(params + ".")]
    if not picked:
        modules = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters())]
        raise ValueError(f"unknown params {params!r} (no trainable parameter under it); choose one "
                         f"of: {', '.join(modules[:40])}{', ...' if len(modules) > 40 else ''}")
    return [n for n, _ in picked], [p for _, p in picked]


def _flat(ts, params) -> torch.Tensor:
    """Concatenate per-parameter tensors (None -> zeros), keeping a leading block axis if any."""
    lead = next((t.shape[: t.dim() - p.dim()] for t, p in zip(ts, params) if t is not None), ())
    return torch.cat([(torch.zeros(*lead, *p.shape, dtype=p.dtype, device=p.device) if t is None else t)
                      .reshape(*lead, -1) for t, p in zip(ts, params)], dim=-1)


def unflatten(vec: torch.Tensor, names: list[str], params: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flat ``(P,)`` vector -> ``{name: tensor shaped like the parameter}``."""
    out, i = {}, 0
    for n, p in zip(names, params):
        out[n] = vec[i:i + p.numel()].reshape(p.shape)
        i += p.numel()
    return out


class CurvatureOperator:
    """Products with the Hessian (or GGN) of the loss on one batch; build with :func:`curvature_operator`.

    Attributes:
        names, params: the parameter subset (``P = dim`` entries in total).
        label: ``"all"`` or the subset's name, for the tidy ``layer`` column.
        loss: the batch loss (float); grad: its flat gradient ``(P,)`` (detached).
        hvps: products computed so far (a block of k counts k).
    """

    def __init__(self, model, batch, loss_fn, *, mode="train", kind="hessian", params=None):
        check_choice("mode", mode, MODES)
        check_choice("kind", kind, KINDS)
        self.names, self.params = select_params(model, params)
        self.label = "all" if params is None else params
        self.kind, self.mode, self.hvps = kind, mode, 0
        self.dim = sum(p.numel() for p in self.params)
        self.device, self.dtype = self.params[0].device, self.params[0].dtype
        model.train(mode == "train")
        with torch.enable_grad():
            out, loss = forward_loss(model, batch, loss_fn)
            self.loss = float(loss.detach())
            check_finite(self.loss)
            # Buffers a backward mutates (PowerNorm's ema_gz) are reset to their post-forward
            # values before every backward, so all products see one fixed matrix.
            self._buffers = [(b, b._version, b.detach().clone()) for b in model.buffers()]
            if kind == "hessian":
                g = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
                self._g = _flat(g, self.params)
                self.grad = self._g.detach()
                check_finite(self.loss, self.grad)
            else:
                self._out = out
                self._go = torch.autograd.grad(loss, out, create_graph=True)[0]  # dL/d(out)
                g = torch.autograd.grad(loss, self.params, retain_graph=True, allow_unused=True)
                self.grad = _flat(g, self.params).detach()
                check_finite(self.loss, self.grad)
                self._reset_buffers()
                # J^T u as a (linear) function of a dummy u: its vjp in u gives J v.
                self._u = torch.zeros_like(out, requires_grad=True)
                jtu = torch.autograd.grad(out, self.params, self._u, create_graph=True, allow_unused=True)
                self._jtu = _flat(jtu, self.params)
        # PowerNorm's backward is affine, not linear, in its cotangent (it subtracts a running
        # statistic); products then carry a constant offset, measured once and removed.
        self._offset = None
        if mode == "train" and any(type(m).__name__ == "PowerNorm" for m in model.modules()):
            if kind == "hessian":
                warnings.warn("PowerNorm's approximate backward makes the train-mode Hessian the "
                              "non-symmetric Jacobian of its approximate gradient; eigenvalue "
                              "probes assume symmetry. Use kind='ggn' (symmetric) or mode='eval'.",
                              stacklevel=3)
            with torch.enable_grad():
                self._offset = self._apply(torch.zeros(self.dim, dtype=self.dtype, device=self.device),
                                           False).detach()
        self._batched = None  # decided by timing on the first block (see _batching_pays)

    def _reset_buffers(self) -> None:
        for i, (b, version, value) in enumerate(self._buffers):
            if b._version != version:
                with torch.no_grad():
                    b.copy_(value)
                self._buffers[i] = (b, b._version, value)

    def _grad(self, outputs, inputs, cot, batched):
        return torch.autograd.grad(outputs, inputs, cot, retain_graph=True, allow_unused=True,
                                   is_grads_batched=batched)

    def _apply(self, v: torch.Tensor, batched: bool) -> torch.Tensor:
        out = self._apply_affine(v, batched)
        return out if getattr(self, "_offset", None) is None else out - self._offset

    def _apply_affine(self, v: torch.Tensor, batched: bool) -> torch.Tensor:
        self._reset_buffers()
        if self.kind == "hessian":
            if not self._g.requires_grad:  # loss linear in these parameters
                return torch.zeros_like(v)
            return _flat(self._grad(self._g, self.params, v, batched), self.params)
        jv = self._grad(self._jtu, self._u, v, batched)[0]           # J v: outputs-shaped
        if jv is None:
            return torch.zeros_like(v)
        hjv = self._grad(self._go, self._out, jv, batched)[0]         # H_out J v
        if hjv is None:
            return torch.zeros_like(v)
        return _flat(self._grad(self._out, self.params, hjv, batched), self.params)  # J^T H_out J v

    def mv(self, v: torch.Tensor) -> torch.Tensor:
        """One product: ``(P,) -> (P,)``."""
        with torch.enable_grad():
            hv = self._apply(v.to(self.device, self.dtype), False).detach()
        self.hvps += 1
        return hv

    def mm(self, vs: torch.Tensor) -> torch.Tensor:
        """A block of products ``(k, P) -> (k, P)``: one batched backward when the graph allows it.

        Note:
            On small models a block of k costs about one product per vector or less (vmap over the
            backward); on compute-bound ones a loop is faster. The first block of >= 4 vectors
            times both on its first 4 vectors (12 products, counted in ``hvps``; the looped 4 are
            kept as the block's first results) and keeps the faster; modules whose backward
            cannot be vmapped always loop.
        """
        vs = vs.to(self.device, self.dtype)
        if self._batched is None and vs.shape[0] >= 4:
            self._batched, first = self._batching_pays(vs[:4])
            if first is not None:  # the timing's products are real ones: the block's first four
                rest = self.mm(vs[4:]) if vs.shape[0] > 4 else first[:0]
                return torch.cat([first, rest])
        out = None
        if self._batched and vs.shape[0] > 1:
            try:
                with warnings.catch_warnings(), torch.enable_grad():
                    warnings.simplefilter("ignore")
                    out = self._apply(vs, True).detach()
            except (RuntimeError, NotImplementedError):
                self._batched = False
                self._reset_buffers()
        if out is None:
            with torch.enable_grad():
                out = torch.stack([self._apply(v, False).detach() for v in vs])
        self.hvps += vs.shape[0]
        return out

    def _batching_pays(self, vs: torch.Tensor) -> tuple[bool, torch.Tensor | None]:
        """Time one batched block against a loop (once per operator): batching wins on small or
        latency-bound problems and loses on compute-bound CPU ones (peers.md §5).

        Returns the decision and the looped products of ``vs`` (None if batching failed before
        them), which the caller uses: of the 3 x k products spent here (counted), k are kept.
        """
        def clock(fn):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            t = time.perf_counter()
            out = fn()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return time.perf_counter() - t, out
        try:
            with warnings.catch_warnings(), torch.enable_grad():
                warnings.simplefilter("ignore")
                self._apply(vs, True)  # warm-up (vmap set-up)
                batched, _ = clock(lambda: self._apply(vs, True))
        except (RuntimeError, NotImplementedError):
            self._reset_buffers()
            return False, None
        with torch.enable_grad():
            looped, out = clock(lambda: torch.stack([self._apply(v, False).detach() for v in vs]))
        self.hvps += 3 * vs.shape[0]  # spent on the decision, counted
        return batched < looped, out

    def release(self) -> None:
        """Drop the retained graph (frees activation memory)."""
        for attr in ("_g", "_out", "_go", "_u", "_jtu"):
            if hasattr(self, attr):
                delattr(self, attr)


@contextlib.contextmanager
def restored_buffers(model: nn.Module):
    """Put every buffer and train/eval flag back on exit (one forward's side effects undone)."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        with torch.no_grad():
            for b, value in buffers:
                b.copy_(value)
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def curvature_operator(model, batch, loss_fn, *, mode="train", kind="hessian", params=None):
    """Context yielding a :class:`CurvatureOperator`; buffers and flags are restored on exit.

    Args:
        model: any ``nn.Module``; its trainable parameters define the space.
        batch: ``(inputs, targets)``; loss_fn: ``(outputs, targets) -> scalar mean loss``.
        mode: ``"train"`` (batch statistics) or ``"eval"`` (running statistics).
        kind: ``"hessian"`` or ``"ggn"``.
        params: None (all), or a module / parameter name (the diagonal block for that subset).

    Note:
        Cost: one forward and one double-graph backward up front (~2 gradients; the GGN adds one
        more backward); then ~1.5-2 gradients per Hessian product, ~3 per GGN product. Memory:
        the retained graph (activations and their gradients) until exit.
    """
    with restored_buffers(model):
        op = CurvatureOperator(model, batch, loss_fn, mode=mode, kind=kind, params=params)
        try:
            yield op
        finally:
            op.release()


def random_vectors(k: int, dim: int, *, seed: int, device, dtype, rademacher: bool = False) -> torch.Tensor:
    """``(k, dim)`` Gaussian (or Rademacher) vectors from a local generator (global RNG untouched).

    Drawn on the CPU and moved to ``device``: a CUDA generator gives another stream for the same
    seed, and the estimates (traces, densities, Lanczos starts) should not depend on the device."""
    gen = torch.Generator().manual_seed(seed)
    if rademacher:
        return torch.randint(0, 2, (k, dim), generator=gen).to(device, dtype) * 2 - 1
    return torch.randn(k, dim, generator=gen, dtype=dtype).to(device)


def as_subsets(params) -> list:
    """``None`` / a name / a list of names -> a list of subsets (one result block per subset)."""
    if params is None or isinstance(params, str):
        return [params]
    try:
        subsets = list(params)
    except TypeError:
        subsets = None
    if subsets is None or not all(isinstance(p, str) for p in subsets):
        raise ValueError(f"params must be None (all trainable parameters), a module / parameter "
                         f"name such as 'blocks.0', or a list of such names, got {params!r}")
    if not subsets:
        raise ValueError("params is an empty list; pass None for all parameters or module names")
    return subsets

