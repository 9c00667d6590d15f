"""scikit-learn's bundled handwritten digits (1797 images, 8x8, 10 classes; no download).

Pixels (0..16) are scaled to [0, 1], then standardized with the scalar mean and standard
deviation of the training pixels (``extra["mean"]``, ``extra["std"]``), so
``x * std + mean`` gives back the [0, 1] images. The train/test split is a seeded permutation.

The data are read straight from the CSV that ships inside scikit-learn (the file ``load_digits``
reads), which skips the ~1 s import of scikit-learn; if that file cannot be found we fall back to
importing ``sklearn.datasets.load_digits`` here, lazily, so the rest of the library never needs it.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch

from ._spec import DatasetSpec, generator
from .dataset import Dataset

NUM_EXAMPLES = 1797
DEFAULTS: dict = {}


def check(options: dict) -> None:
    pass


def _bundled_csv() -> Path | None:
    """scikit-learn's ``datasets/data/digits.csv.gz``, located without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


@functools.lru_cache(maxsize=1)
def load_raw() -> tuple[np.ndarray, np.ndarray]:
    """``(images (1797, 8, 8) float64 in 0..16, labels (1797,) int64)``, read once per process."""
    path = _bundled_csv()
    if path is not None:
        table = np.loadtxt(path, delimiter=",")  # (1797, 65): 64 pixels, then the label
        images, labels = table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    else:  # pragma: no cover - only if scikit-learn moves its data file
        try:
            from sklearn.datasets import load_digits
        except ImportError as err:
            raise ImportError("the 'digits' data set needs scikit-learn: "
                              "pip install scikit-learn") from err
        bunch = load_digits()
        images, labels = bunch.images.astype(np.float64), bunch.target.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def build(n_train: int, n_test: int, seed: int) -> Dataset:
    images, labels = load_raw()
    if n_train + n_test > len(labels):
        raise ValueError(f"digits has {len(labels)} examples; n_train={n_train} + n_test={n_test} "
                         f"exceeds it")
    order = torch.randperm(len(labels), generator=generator(seed, "split"))
    x = torch.tensor(images / 16.0, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8)
    y = torch.tensor(labels)
    train, test = order[:n_train], order[n_train:n_train + n_test]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return Dataset("digits", "classification", x[train], y[train], x[test], y[test],
                   input_shape=(1, 8, 8), num_outputs=10,
                   extra={"mean": float(mean), "std": float(std)})


SPEC = DatasetSpec("classification", DEFAULTS, check, build, max_examples=NUM_EXAMPLES)
