"""Optimizers for batch-size studies: SGD, Adam, AdamW and the layer-wise LARS and LAMB.

Every optimizer is built on :func:`param_groups`, so biases and 1-D parameters (norm gains and
shifts) are never weight-decayed and never get a trust ratio, whichever optimizer is chosen.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from workbench._validate import check_choice, check_positive

OPTIMIZERS = ("sgd", "adam", "adamw", "lars", "lamb")
ELEMENTWISE = ("sgd", "adam", "adamw")  # the same update for every element: steppable flat


def _check_fraction(what: str, value) -> None:
    """Raise a ValueError unless ``0 <= value < 1`` (momentum, betas)."""
    check_positive(what, value, allow_zero=True)
    if value >= 1:
        raise ValueError(f"{what} must be in [0, 1), got {value!r}")


def _ratio(num: torch.Tensor, den: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``num / den`` when both norms ``a`` and ``b`` are positive, else 1 (0-dim, no host sync)."""
    return torch.where((a > 0) & (b > 0), num / den, 1.0)


def _with_grads(group: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The group's parameters with a gradient, and those gradients (``grad is None``: skipped)."""
    params = [p for p in group["params"] if p.grad is not None]
    for p in params:
        if p.grad.is_sparse:
            raise ValueError("LARS/LAMB do not support sparse gradients")
    return params, [p.grad for p in params]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You, Gitman & Ginsburg 2017, arXiv:1708.03888).

    Per parameter tensor ``w`` with gradient ``g``, in a group with ``adapt=True``::

        local_lr = trust_coefficient * ||w|| / (||g|| + weight_decay * ||w||)
                                                              (1 if ||w|| or ||g|| is 0)
        d        = g + weight_decay * w
        v        = momentum * v + lr * local_lr * d                           (v starts at 0)
        w        = w - v              (nesterov: w = w - (momentum * v + lr * local_lr * d))

    In a group with ``adapt=False`` (biases, norm parameters) ``local_lr = 1`` and weight decay
    is ignored, i.e. plain momentum SGD (the same as ``torch.optim.SGD`` with zero dampening
    while ``lr`` is constant). Groups without an ``"adapt"`` key adapt.

    Args:
        params: parameters or parameter groups (see :func:`param_groups`).
        lr: global learning rate (the per-layer rate is ``lr * local_lr``).
        momentum: in [0, 1).
        nesterov: Nesterov momentum (needs ``momentum > 0``).
        weight_decay: L2 coefficient, folded into ``d`` and into the trust-ratio denominator.
        trust_coefficient: ``eta`` in the paper; ``lr * eta`` is roughly the relative size
            ``||update|| / ||w||`` of one step without momentum.

    Note:
        Two norms per tensor and a loop over tensors; state is one momentum buffer per tensor.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, nesterov: bool = False,
                 weight_decay: float = 0.0, trust_coefficient: float = 0.001):
        check_positive("lr", lr)
        _check_fraction("momentum", momentum)
        check_positive("weight_decay", weight_decay, allow_zero=True)
        check_positive("trust_coefficient", trust_coefficient)
        if nesterov and momentum == 0:
            raise ValueError(f"nesterov=True needs momentum > 0, got momentum={momentum!r}")
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov,
                    "weight_decay": weight_decay, "trust_coefficient": trust_coefficient,
                    "adapt": True}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads = _with_grads(group)
            if not params:
                continue
            lr, mom = group["lr"], group["momentum"]
            if group["adapt"]:
                wd, eta = group["weight_decay"], group["trust_coefficient"]
                w_norms = torch._foreach_norm(params)
                g_norms = torch._foreach_norm(grads)
                scales = [lr * _ratio(eta * w, g + wd * w, w, g) for w, g in zip(w_norms, g_norms)]
                d = torch._foreach_add(grads, params, alpha=wd) if wd else grads
                scaled = torch._foreach_mul(d, scales)  # lr * local_lr * d
            else:
                scaled = torch._foreach_mul(grads, lr)
            if mom == 0:
                torch._foreach_sub_(params, scaled)
                continue
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:  # v0 = 0, so v1 = lr * local_lr * d
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            torch._foreach_mul_(bufs, mom)
            torch._foreach_add_(bufs, scaled)
            if group["nesterov"]:
                torch._foreach_add_(scaled, bufs, alpha=mom)
                torch._foreach_sub_(params, scaled)
            else:
                torch._foreach_sub_(params, bufs)
        return loss


class LAMB(torch.optim.Optimizer):
    """Layer-wise Adam (You et al. 2019, "Training BERT in 76 minutes", arXiv:1904.00962).

    Per parameter tensor ``w`` with gradient ``g`` at step ``t = 1, 2, ...``::

        m     = beta1 * m + (1 - beta1) * g            v = beta2 * v + (1 - beta2) * g**2
        m_hat = m / (1 - beta1**t)                     v_hat = v / (1 - beta2**t)
        r     = m_hat / (sqrt(v_hat) + eps) + weight_decay * w
        trust = ||w|| / ||r||                          (1 if ||w|| or ||r|| is 0)
        w     = w - lr * trust * r

    In a group with ``adapt=False`` (biases, norm parameters) ``trust = 1`` and
    ``weight_decay = 0``, i.e. plain Adam (matches ``torch.optim.Adam``). Groups without an
    ``"adapt"`` key adapt. No trust-ratio clipping (the paper's ``phi`` is the identity).

    Args:
        params: parameters or parameter groups (see :func:`param_groups`).
        lr: global learning rate; ``lr`` is roughly the relative step ``||update|| / ||w||``.
        betas: ``(beta1, beta2)``, each in [0, 1).
        eps: added to ``sqrt(v_hat)``.
        weight_decay: decoupled decay coefficient, added to the Adam direction before the
            trust ratio.

    Note:
        Two norms per tensor and a loop over tensors; state is two moment buffers per tensor.
    """

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        check_positive("lr", lr)
        _check_fraction("betas[0]", betas[0])
        _check_fraction("betas[1]", betas[1])
        check_positive("eps", eps)
        check_positive("weight_decay", weight_decay, allow_zero=True)
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                    "adapt": True}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads = _with_grads(group)
            if not params:
                continue
            lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
            wd = group["weight_decay"] if group["adapt"] else 0.0
            ms, vs, bc1, bc2_sqrt = [], [], [], []
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1  # per tensor: a tensor skipped while its grad was None lags
                ms.append(state["exp_avg"])
                vs.append(state["exp_avg_sq"])
                bc1.append(1 - b1 ** state["step"])
                bc2_sqrt.append((1 - b2 ** state["step"]) ** 0.5)
            torch._foreach_lerp_(ms, grads, 1 - b1)
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
            denom = torch._foreach_sqrt(vs)
            torch._foreach_div_(denom, bc2_sqrt)
            torch._foreach_add_(denom, eps)  # sqrt(v_hat) + eps
            r = torch._foreach_div(ms, denom)
            torch._foreach_div_(r, bc1)  # m_hat / (sqrt(v_hat) + eps)
            if wd:
                torch._foreach_add_(r, params, alpha=wd)
            if group["adapt"]:
                w_norms = torch._foreach_norm(params)
                r_norms = torch._foreach_norm(r)
                torch._foreach_mul_(r, [lr * _ratio(w, u, w, u) for w, u in zip(w_norms, r_norms)])
                torch._foreach_sub_(params, r)
            else:
                torch._foreach_add_(params, r, alpha=-lr)
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split ``model``'s trainable parameters into a decayed/adapted group and a ``no_adapt`` one.

    Args:
        model: any module; parameters with ``requires_grad=False`` are left out.
        weight_decay: decay for the weight group (>= 0).

    Returns:
        Two groups, always in this order (either may be empty):
        ``{"name": "weights", "params": [ndim >= 2], "weight_decay": weight_decay, "adapt": True}``
        and ``{"name": "no_adapt", "params": [ndim <= 1], "weight_decay": 0.0, "adapt": False}``.
        Biases and norm gains/shifts are 1-D, so they are never decayed and get no trust ratio.
    """
    check_positive("weight_decay", weight_decay, allow_zero=True)
    weights, others = [], []
    for p in model.parameters():  # shared parameters are yielded once
        if p.requires_grad:
            (weights if p.ndim >= 2 else others).append(p)
    return [
        {"name": "weights", "params": weights, "weight_decay": weight_decay, "adapt": True},
        {"name": "no_adapt", "params": others, "weight_decay": 0.0, "adapt": False},
    ]


def build_optimizer(name: str, model: nn.Module, *, lr: float, momentum: float = 0.9,
                    nesterov: bool = False, weight_decay: float = 0.0,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                    trust_coefficient: float = 0.001, flat=None) -> torch.optim.Optimizer:
    """Build one of :data:`OPTIMIZERS` over :func:`param_groups` of ``model``.

    ``sgd`` is ``torch.optim.SGD`` (L2 decay folded into the gradient), ``adam`` is
    ``torch.optim.Adam`` (L2 decay), ``adamw`` is ``torch.optim.AdamW`` (decoupled decay),
    ``lars`` is :class:`LARS`, ``lamb`` is :class:`LAMB`. ``momentum``/``nesterov`` are used by
    sgd and lars, ``betas``/``eps`` by adam, adamw and lamb, ``trust_coefficient`` by lars.

    ``flat``: a :class:`~workbench.train.flat.FlatParams` built on the same groups
    (``FlatParams([g["params"] for g in param_groups(model, wd)])``). The element-wise optimizers
    (:data:`ELEMENTWISE`) then step one flat tensor per group instead of each parameter, the same
    arithmetic at a fraction of the per-tensor cost; LARS and LAMB keep per-tensor steps.

    Raises:
        ValueError: unknown name, a bad hyper-parameter, or ``nesterov=True`` with
            ``momentum == 0`` or with an optimizer that has no Nesterov option.
    """
    check_choice("optimizer", name, OPTIMIZERS)
    check_positive("lr", lr)
    _check_fraction("momentum", momentum)
    if nesterov and name not in ("sgd", "lars"):
        raise ValueError(f"nesterov=True applies only to sgd and lars, not optimizer {name!r}")
    if nesterov and momentum == 0:
        raise ValueError(f"nesterov=True needs momentum > 0, got momentum={momentum!r}")
    if name in ("adam", "adamw", "lamb"):
        _check_fraction("betas[0]", betas[0])
        _check_fraction("betas[1]", betas[1])
        check_positive("eps", eps)
    groups = param_groups(model, weight_decay)
    if flat is not None:
        listed = [p for g in groups for p in g["params"]]
        if len(listed) != len(flat.params) or any(a is not b for a, b in zip(listed, flat.params)):
            raise ValueError("flat= must hold the parameters of param_groups(model, weight_decay), "
                             "in that order")
        if name in ELEMENTWISE:
            for group, leaf, (start, stop) in zip(groups, flat.group_leaves(), flat.slices):
                group["params"] = [leaf] if stop > start else []
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas, eps=eps)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, nesterov=nesterov,
                    weight_decay=weight_decay, trust_coefficient=trust_coefficient)
    return LAMB(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
