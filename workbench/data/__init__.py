"""Data: synthetic and small real data sets held as tensors, and batch samplers.

``make_dataset(DataConfig(name=...))`` -> :class:`Dataset`; :class:`BatchSampler` draws index
batches (batch size may change mid-run) and :func:`split_micro` cuts them for accumulation.

Data sets (``DATASETS``): ``teacher`` (regression), ``gaussian_mixture``, ``shapes``, ``digits``
(classification) and ``markov`` (next-token prediction).
"""
from __future__ import annotations

from .config import DATASETS, DataConfig, make_dataset
from .dataset import (
    TASKS,
    Dataset,
    accuracy_for_task,
    argmax_accuracy,
    cross_entropy_loss,
    loss_for_task,
    mse_loss,
)
from .sampler import SHUFFLES, BatchSampler, split_micro
from .shapes import SHAPES

__all__ = ["DATASETS", "SHAPES", "SHUFFLES", "TASKS", "BatchSampler", "DataConfig", "Dataset",
           "accuracy_for_task", "argmax_accuracy", "cross_entropy_loss", "loss_for_task",
           "make_dataset", "mse_loss", "split_micro"]
