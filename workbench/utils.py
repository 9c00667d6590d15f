"""Small shared helpers: device choice, seeding, and restoring a model exactly as it was."""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
from torch import nn


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None -> :func:`default_device`; anything else is passed to ``torch.device``."""
    if device is None or device == "auto":
        return default_device()
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def preserved_state(model: nn.Module, *, rng: bool = True):
    """Run a block and put the model back exactly as it was.

    Restores parameters (values, in place, so optimizer references stay valid), ``.grad``,
    the ``training`` flag of every submodule, every buffer (BatchNorm running statistics and
    ``num_batches_tracked``) and, when ``rng`` is true, the global torch/numpy/python RNG state.

    Note:
        Costs one copy of parameters, gradients and buffers in memory.
    """
    params = [(p, p.detach().clone(), None if p.grad is None else p.grad.detach().clone())
              for p in model.parameters()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    if rng:
        torch_state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        np_state = np.random.get_state()
        py_state = random.getstate()
    try:
        yield model
    finally:
        with torch.no_grad():
            for p, value, grad in params:
                p.copy_(value)
                p.grad = grad
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
