"""``DataConfig`` (what data to make) and ``make_dataset`` (make it), over an explicit registry."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .._validate import check_choice, check_positive
from . import digits, gaussian_mixture, markov, shapes, teacher
from ._spec import available_memory
from .dataset import Dataset

DATASETS = {
    "teacher": teacher.SPEC,
    "gaussian_mixture": gaussian_mixture.SPEC,
    "shapes": shapes.SPEC,
    "markov": markov.SPEC,
    "digits": digits.SPEC,
}


@dataclass(frozen=True)
class DataConfig:
    """Which data set to make, how big, from which seed.

    Attributes:
        name: one of ``DATASETS``.
        n_train, n_test: examples per split (digits: at most 1797 together).
        seed: non-negative int; the same config always gives bitwise identical tensors.
        options: data-set knobs; unset ones take ``DATASETS[name].defaults`` (see
            :meth:`resolved_options`).
    """

    name: str = "gaussian_mixture"
    n_train: int = 2048
    n_test: int = 512
    seed: int = 0
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        check_choice("data set", self.name, DATASETS)
        check_positive("n_train", self.n_train, integer=True)
        check_positive("n_test", self.n_test, integer=True)
        check_positive("seed", self.seed, allow_zero=True, integer=True)
        if not isinstance(self.options, dict):
            # ValueError, not TypeError: every bad config value raises ValueError (house rule)
            raise ValueError(f"options must be a dict, got {self.options!r}")  # noqa: TRY004
        object.__setattr__(self, "options", dict(self.options))  # a private copy
        spec = DATASETS[self.name]
        for key in self.options:
            if key not in spec.defaults:
                valid = ", ".join(spec.defaults) or "(none)"
                raise ValueError(f"unknown option {key!r} for data set {self.name!r}; "
                                 f"valid options: {valid}")
        spec.check(self.resolved_options())
        cap = spec.max_examples
        if cap is not None and self.n_train + self.n_test > cap:
            train = round(cap * 0.8)
            raise ValueError(f"data set {self.name!r} has {cap} examples; n_train={self.n_train} + "
                             f"n_test={self.n_test} = {self.n_train + self.n_test} exceeds it "
                             f"(e.g. n_train={train}, n_test={cap - train})")

    def resolved_options(self) -> dict:
        """Every option of the data set: its defaults updated with ``options``."""
        return {**DATASETS[self.name].defaults, **self.options}

    def to_dict(self) -> dict:
        return {"name": self.name, "n_train": self.n_train, "n_test": self.n_test,
                "seed": self.seed, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, d: dict) -> DataConfig:
        valid = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(d, dict):
            raise ValueError(f"a data config must be a mapping of its fields ({', '.join(valid)}), "
                             f"e.g. {{name: {d!r}}}, got {d!r}")
        for key in d:
            if key not in valid:
                raise ValueError(f"unknown DataConfig field {key!r}; valid fields: {', '.join(valid)}")
        return cls(**d)

    @classmethod
    def smoke(cls, name: str = "gaussian_mixture", **overrides) -> DataConfig:
        """A tiny config for tests and quick checks (256 train, 128 test examples)."""
        return cls(**{"name": name, "n_train": 256, "n_test": 128, **overrides})


def check_fits_in_memory(cfg: DataConfig, available: int | None = None) -> None:
    """ValueError when the data set's tensors alone would not fit in ``available`` bytes (default:
    the memory available now): a lower bound of what generating it needs, so a size this lets
    through may still be too big, but one it refuses would have failed (or been killed)."""
    spec = DATASETS[cfg.name]
    if spec.example_bytes is None:
        return
    available = available_memory() if available is None else available
    if available is None:
        return
    per_example = spec.example_bytes(cfg.resolved_options())
    need = (cfg.n_train + cfg.n_test) * per_example
    if need > available:
        fit = max(1, available // per_example)
        raise ValueError(f"data set {cfg.name!r} with n_train={cfg.n_train} and n_test={cfg.n_test} "
                         f"needs at least {need / 2**30:.1f} GiB for its tensors, more than the "
                         f"{available / 2**30:.1f} GiB of memory available; use fewer examples "
                         f"(at most about {fit} in all here, and fewer to leave room for training)")


def make_dataset(cfg: DataConfig) -> Dataset:
    """Generate the data set ``cfg`` describes, in memory, on CPU.

    Deterministic: the same config gives bitwise identical tensors, and torch's global RNG is
    neither used nor advanced. Inputs are float32 (int64 tokens for ``"lm"``).

    Note:
        Cost: well under a second at the default sizes; nothing is downloaded or written.
    """
    if not isinstance(cfg, DataConfig):
        raise ValueError(f"make_dataset takes a DataConfig, got {type(cfg).__name__}")  # noqa: TRY004
    check_fits_in_memory(cfg)
    return DATASETS[cfg.name].build(cfg.n_train, cfg.n_test, cfg.seed, **cfg.resolved_options())
