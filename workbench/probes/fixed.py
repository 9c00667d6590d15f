"""A probe on one fixed batch, whatever batch the trainer hands it.

The trainer calls every probe on the step's own training batch, so a probe's numbers move with
the draw as well as with the weights (a per-block gradient norm on 32 sequences, a smoothness
estimate on 32 images). ``on_batch(probe, held_out)`` measures every time on the same examples
(typically held-out ones), so a curve over training shows what the weights did::

    ds = make_dataset(cfg.data)
    run = train(cfg, probes={"depth": on_batch(depth_variance, (ds.x_test, ds.y_test))})

It runs before the step like any probe (never folded into the step's own pass, which sees the
training batch), gets the trainer's learning rate when the wrapped probe takes one, and pickles
(a dashboard's training process gets its own copy of the batch).
"""
from __future__ import annotations

import torch

from ..utils import takes_lr
from ._batch import on_model_device


class FixedBatch:
    """``probe`` on ``batch``: see :func:`on_batch`."""

    def __init__(self, probe, batch):
        if not callable(probe):
            raise TypeError(f"on_batch needs a probe function (model, batch, loss_fn) -> DataFrame, "
                            f"got {probe!r}")
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2
                and all(isinstance(t, torch.Tensor) for t in batch)):
            raise ValueError("on_batch needs a batch (inputs, targets) of two tensors, got "
                             f"{type(batch).__name__}")
        x, y = batch
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"the batch's inputs and targets must hold the same number (> 0) of "
                             f"examples, got {len(x)} and {len(y)}")
        self.probe, self.batch = probe, (x, y)
        self.passes_lr = takes_lr(probe)
        self.__name__ = getattr(probe, "__name__", type(probe).__name__)

    def __repr__(self) -> str:
        return f"on_batch({self.__name__}, {len(self.batch[0])} examples)"

    def __call__(self, model, batch, loss_fn, *, lr: float | None = None, **kwargs):
        """Run the probe on the fixed batch (moved to the model's device); ``batch`` (the
        step's) is ignored; ``lr`` reaches the probe only if it takes one."""
        x, y = on_model_device(model, *self.batch)
        if lr is not None and self.passes_lr:
            kwargs["lr"] = lr
        return self.probe(model, (x, y), loss_fn, **kwargs)


def on_batch(probe, batch) -> FixedBatch:
    """``probe`` (any ``(model, batch, loss_fn) -> DataFrame``) run on ``batch`` = ``(inputs,
    targets)`` instead of the batch it is called with: for a training hook that measures on the
    same (held-out) examples at every step. Its rows are the probe's own."""
    return FixedBatch(probe, batch)
