"""Small shared helpers: device choice, seeding, and restoring a model exactly as it was."""
from __future__ import annotations

import contextlib
import functools
import inspect
import random

import numpy as np
import torch
from torch import nn


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None -> :func:`default_device`; anything else is passed to ``torch.device``
    (a ValueError naming the value and the valid choices if torch does not take it)."""
    if device is None or device == "auto":
        return default_device()
    if isinstance(device, torch.device):
        return device
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; choose one of: auto, cpu, cuda, cuda:N "
                         "(N a GPU index), mps, or another torch device type") from None


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


_RANDOM_MODULES = (nn.modules.dropout._DropoutNd, nn.RReLU)


def forward_uses_rng(model: nn.Module) -> bool:
    """Whether a forward pass of ``model`` may draw from the global RNG: it has a dropout or RReLU
    module, a module with a positive ``dropout`` rate, or a module whose class comes from neither
    ``torch.nn`` nor ``workbench`` (unknown code, assumed random). Probes that only run forwards skip saving the RNG state otherwise."""
    for m in model.modules():
        if isinstance(m, _RANDOM_MODULES):
            return True
        rate = getattr(m, "dropout", 0)  # functional dropout (nn.MultiheadAttention(dropout=p))
        if isinstance(rate, float) and rate > 0:
            return True
        where = type(m).__module__
        if not (where.startswith("torch.nn.") or where.startswith("workbench.")):
            return True
    return False


@contextlib.contextmanager
def preserved_state(model: nn.Module, *, rng: bool = True, params: bool = True, grads: bool = True):
    """Run a block and put the model back exactly as it was.

    Restores parameters (values, in place, so optimizer references stay valid), ``.grad`` (the
    same tensor object, its values written back),
    the ``training`` flag of every submodule, every buffer (BatchNorm running statistics and
    ``num_batches_tracked``) and, when ``rng`` is true, the global torch/numpy/python RNG state.

    ``params=False`` / ``grads=False`` skip saving what the block promises not to change
    (a probe that only runs ``torch.autograd.grad`` never touches ``.grad``; one that never moves
    the weights need not copy them): a training-time probe then costs tensor work, not copies.

    Note:
        Costs one copy of parameters, gradients and buffers in memory.
    """
    # each parameter's storage and .grad tensor themselves are kept too and written back into,
    # so views into them (the trainer's flat buffers) still hold after the block
    saved = [(p, p.data, p.detach().clone() if params else None, p.grad,
              None if p.grad is None or not grads else p.grad.detach().clone())
             for p in model.parameters()] if params or grads else []
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    if rng:
        torch_state = torch.get_rng_state()
        # only if CUDA was started: asking would start it (a context on every GPU) for CPU work,
        # and a CUDA generator nobody started cannot have been drawn from
        cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        np_state = np.random.get_state()
        py_state = random.getstate()
    try:
        yield model
    finally:
        with torch.no_grad():
            for p, storage, value, grad_tensor, grad in saved:
                if params:
                    if p.data_ptr() != storage.data_ptr() or p.shape != storage.shape:
                        p.data = storage  # the block re-pointed .data: back to the original tensor
                    p.copy_(value)
                if not grads:
                    continue
                if grad is None:
                    p.grad = None
                else:
                    grad_tensor.copy_(grad)
                    if p.grad is not grad_tensor:
                        p.grad = grad_tensor
            for b, value in buffers:
                b.copy_(value)
        for m, flag in modes:
            m.training = flag
        if rng:
            torch.set_rng_state(torch_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state_all(cuda_state)
            np.random.set_state(np_state)
            random.setstate(py_state)


def takes_lr(fn) -> bool:
    """Whether the trainer should pass its current learning rate to ``fn`` as ``lr=``: ``fn``
    has an ``lr`` keyword that a ``functools.partial`` has not already fixed."""
    if isinstance(fn, functools.partial) and "lr" in fn.keywords:
        return False
    try:
        return "lr" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins and odd callables: no
        return False
