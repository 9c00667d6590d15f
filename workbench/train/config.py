"""TrainConfig: everything that defines a run, validated at construction; its hash is the run id."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .._validate import as_float, as_floats, check_choice, check_divides, check_positive
from ..data import DATASETS, DataConfig
from ..models import (
    MODELS,
    ConvNetConfig,
    MLPConfig,
    ModelConfig,
    TransformerConfig,
    config_from_dict,
    config_to_dict,
    fit_to_data,
)
from ..norms import last_virtual_batch_of_one
from ..store.run import config_hash
from .optim import OPTIMIZERS
from .schedules import BATCH_SCHEDULES, LR_DECAY, LR_SCALING

SHUFFLES = ("reshuffle", "single", "none")

# What each data set feeds a model (checked against make_dataset in the tests).
DATASET_INPUTS = {"teacher": "features", "gaussian_mixture": "features", "shapes": "images",
                  "digits": "images", "markov": "tokens"}
MODEL_INPUTS = {"mlp": ("features", "images"), "convnet": ("images",), "transformer": ("tokens",)}


# norms on batch statistics: a chunk of the norm test's gradient comparison needs 2 examples
# (Batch-Channel Norm only with stats="batch"; its default "estimated" statistics take one)
BATCH_STAT_NORMS = ("batch", "ghost_batch", "batch_channel")


def _batch_stats(model) -> str | None:
    """The model config's norm when it normalizes over the examples of a forward pass in train
    mode (BatchNorm, ghost, Batch-Channel with ``stats="batch"``), else None."""
    norm = getattr(model, "norm", None)
    if norm == "batch_channel" and getattr(model, "norm_options", {}).get("stats",
                                                                         "estimated") != "batch":
        return None
    return norm if norm in BATCH_STAT_NORMS else None


@dataclass(frozen=True)
class TrainConfig:
    """A training run: model, data, batch strategy, optimizer and schedule.

    Batch strategy: ``batch_size`` examples per optimizer step; with ``micro_batch`` the step's
    gradient is accumulated over ``batch_size // micro_batch`` micro-batches, so normalization
    layers see the micro-batch while the optimizer sees the whole batch. The learning rate is
    ``lr`` scaled by ``lr_scaling`` relative to ``base_batch_size`` (``linear``: lr*B/B0,
    ``sqrt``: lr*sqrt(B/B0)) for the current batch size, warmed up linearly over ``warmup_steps``
    and decayed by ``lr_decay``. ``batch_schedule`` grows the batch during training
    (``step``: by ``growth_factor`` every ``growth_every`` steps; ``norm_test``: when the gradient
    noise dominates, tested every ``norm_test_every`` steps with threshold ``norm_test_theta``),
    never beyond ``max_batch_size``. Ghost batch normalization is a norm:
    ``MLPConfig(norm="ghost_batch", norm_options={"virtual_batch_size": 8})``; on an MLP without
    micro-batches a grown batch that would leave one example in its last virtual batch
    (``n % 8 == 1``) is made one larger (one smaller at the cap): see
    :meth:`schedule_virtual_batch`.
    """

    model: ModelConfig = field(default_factory=MLPConfig)
    data: DataConfig = field(default_factory=DataConfig)
    steps: int = 200
    batch_size: int = 32
    micro_batch: int | None = None
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    trust_coefficient: float = 0.001
    lr_scaling: str = "none"
    base_batch_size: int = 32
    warmup_steps: int = 0
    lr_decay: str = "constant"
    batch_schedule: str = "constant"
    max_batch_size: int | None = None
    growth_factor: int = 2
    growth_every: int = 100
    norm_test_theta: float = 0.5
    norm_test_every: int = 10
    shuffle: str = "reshuffle"
    eval_every: int = 50
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.model, (MLPConfig, ConvNetConfig, TransformerConfig)):
            raise ValueError(f"model must be one of MLPConfig, ConvNetConfig, TransformerConfig; "
                             f"got {type(self.model).__name__}")
        if not isinstance(self.data, DataConfig):
            raise ValueError(f"data must be a DataConfig, got {type(self.data).__name__}")
        object.__setattr__(self, "betas", tuple(as_float(b) for b in self.betas))
        as_floats(self)
        for name in ("steps", "batch_size", "base_batch_size", "growth_every", "norm_test_every"):
            check_positive(name, getattr(self, name), integer=True)
        for name in ("lr", "eps", "trust_coefficient", "norm_test_theta"):
            check_positive(name, getattr(self, name), finite=True)
        for name in ("momentum", "weight_decay"):
            check_positive(name, getattr(self, name), allow_zero=True)
        if self.momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        check_positive("warmup_steps", self.warmup_steps, allow_zero=True, integer=True)
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} is more than steps={self.steps}: "
                             "the warm-up would not end within the run")
        check_positive("eval_every", self.eval_every, allow_zero=True, integer=True)
        if (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                or not 0 <= self.seed < 2**32):
            raise ValueError(f"seed must be an integer in [0, 2**32), got {self.seed!r}")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("lr_scaling", self.lr_scaling, LR_SCALING)
        check_choice("lr_decay", self.lr_decay, LR_DECAY)
        check_choice("batch_schedule", self.batch_schedule, BATCH_SCHEDULES)
        check_choice("shuffle", self.shuffle, SHUFFLES)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.nesterov and self.optimizer not in ("sgd", "lars"):
            raise ValueError(f"nesterov=True applies to optimizers sgd, lars; got {self.optimizer!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        if not isinstance(self.growth_factor, int) or self.growth_factor < 2:
            raise ValueError(f"growth_factor must be an integer >= 2, got {self.growth_factor!r}")
        if self.micro_batch is not None:
            check_positive("micro_batch", self.micro_batch, integer=True)
            check_divides("micro_batch", self.micro_batch, "batch_size", self.batch_size)
        if self.max_batch_size is not None:
            check_positive("max_batch_size", self.max_batch_size, integer=True)
            if self.max_batch_size < self.batch_size:
                raise ValueError(f"max_batch_size={self.max_batch_size} is smaller than "
                                 f"batch_size={self.batch_size}")
        if self.batch_schedule != "constant" and self.max_batch_size is None:
            raise ValueError(f"batch_schedule={self.batch_schedule!r} needs max_batch_size")
        if (self.batch_schedule == "norm_test" and self.micro_batch is None and self.batch_size < 4
                and _batch_stats(self.model) is not None):
            raise ValueError(
                f"batch_schedule='norm_test' compares the gradients of at least 2 chunks of the "
                f"batch, and norm={self.model.norm!r} needs 2 examples per chunk: batch_size must "
                f"be at least 4, got {self.batch_size} (or set micro_batch)")
        self._check_forward_batch()
        top = self.max_batch_size or self.batch_size
        if top > self.data.n_train:
            raise ValueError(f"batch size {top} is larger than the training set "
                             f"(data.n_train={self.data.n_train})")
        kind = DATASET_INPUTS[self.data.name]
        if kind not in MODEL_INPUTS[self.model.kind]:
            fits = [m for m, kinds in MODEL_INPUTS.items() if kind in kinds]
            raise ValueError(f"model {self.model.kind!r} cannot take data set {self.data.name!r} "
                             f"({kind}); models for it: {', '.join(fits)}; data sets for "
                             f"{self.model.kind!r}: " + ", ".join(
                                 d for d, k in DATASET_INPUTS.items() if k in MODEL_INPUTS[self.model.kind]))

    def _check_forward_batch(self) -> None:
        """An MLP's norm on batch statistics sees (N, C) features: one value per channel when a
        forward pass (the micro-batch, or the batch) has one example, or ghost's last virtual
        batch has one. Refused here, before anything trains, rather than at step 0."""
        norm = _batch_stats(self.model)
        if self.model.kind != "mlp" or norm is None:
            return
        what, n = ("micro_batch", self.micro_batch) if self.micro_batch else ("batch_size",
                                                                               self.batch_size)
        if n < 2:
            raise ValueError(
                f"norm={norm!r} on an MLP normalizes each feature over the examples of a forward "
                f"pass, and {what}={n} leaves one value per feature: use at least 2, or a norm "
                "without batch statistics (layer, group, rms, none, batch_channel with its "
                "default estimated statistics)")
        v = self._ghost_virtual_batch()
        if v and last_virtual_batch_of_one(n, v):
            raise ValueError(
                f"norm='ghost_batch' with virtual_batch_size={v} splits {what}={n} into virtual "
                f"batches whose last has one example (one value per feature on an MLP): use a "
                f"{what.replace('_', ' ')} that is not 1 more than a multiple of {v}, e.g. {n - 1}")

    def _ghost_virtual_batch(self) -> int | None:
        """Ghost BatchNorm's virtual batch size on an MLP (where a virtual batch of one example
        cannot be normalized), else None."""
        if self.model.kind != "mlp" or _batch_stats(self.model) != "ghost_batch":
            return None
        return self.model.norm_options.get("virtual_batch_size", 8)

    def schedule_virtual_batch(self) -> int | None:
        """What the batch-size schedule must keep a last virtual batch of one away from: ghost
        BatchNorm's virtual batch size on an MLP trained without micro-batches (the whole batch
        in one pass, so a grown batch is the pass), else None."""
        return self._ghost_virtual_batch() if self.micro_batch is None else None

    # -- serialization ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["model"] = config_to_dict(self.model)
        out["data"] = self.data.to_dict()
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {', '.join(map(repr, unknown))}; "
                             f"valid fields: {', '.join(sorted(known))}")
        if "model" in d:
            d["model"] = config_from_dict(d["model"])
        if "data" in d:
            d["data"] = DataConfig.from_dict(d["data"])
        return cls(**d)

    @property
    def run_id(self) -> str:
        """Stable hash of the config: the same config always gets the same id."""
        return config_hash(self.to_dict())

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def model_for(self, dataset) -> ModelConfig:
        """The model config with the data set's sizes filled in (what ``build_model`` takes):
        the trainer, ``RunStore.restore`` and the dashboards' size check build from it."""
        return fit_to_data(self.model, dataset.input_shape, dataset.num_outputs, dataset.task,
                           self.data.name)

    @classmethod
    def smoke(cls) -> TrainConfig:
        """A run that takes about a second on a CPU."""
        return cls(model=MLPConfig.smoke(), data=DataConfig(n_train=256, n_test=128), steps=20,
                   batch_size=16)


__all__ = ["DATASET_INPUTS", "MODELS", "SHUFFLES", "TrainConfig", "DATASETS"]
