"""A multilayer perceptron with any normalization layer, optional residual connections and WS."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from .._validate import check_choice, check_positive
from ..norms import WSLinear, make_norm
from .base import ACTIVATIONS, WorkbenchModel, make_activation


@dataclass(frozen=True)
class MLPConfig:
    """An MLP: ``depth`` hidden layers of ``width`` units.

    Plain (``residual=False``): each block is ``act(norm(linear(x)))``.
    Residual (``residual=True``): a linear stem, then blocks ``x + linear(act(norm(x)))``
    (pre-normalization, as in Pre-LN transformers and pre-activation ResNets), then a final
    ``act(norm(x))`` before the head, so the residual stream is what the depth probes watch.

    ``in_dim`` and ``out_dim`` default to None and are filled from the data set by the trainer.
    """

    kind: ClassVar[str] = "mlp"
    layout: ClassVar[str] = "features"
    depth: int = 3
    width: int = 64
    norm: str = "none"
    norm_options: dict = field(default_factory=dict)
    activation: str = "relu"
    residual: bool = False
    ws: bool = False
    in_dim: int | None = None
    out_dim: int | None = None

    def __post_init__(self):
        check_positive("depth", self.depth, integer=True)
        check_positive("width", self.width, integer=True)
        check_choice("activation", self.activation, ACTIVATIONS)
        for name in ("in_dim", "out_dim"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name), integer=True)
        make_norm(self.norm, self.width, self.layout, **self.norm_options)  # validates name/layout/options

    @classmethod
    def smoke(cls) -> MLPConfig:
        return cls(depth=2, width=16)


class MLP(WorkbenchModel):
    def __init__(self, cfg: MLPConfig):
        super().__init__()
        if cfg.in_dim is None or cfg.out_dim is None:
            raise ValueError("MLPConfig needs in_dim and out_dim (the trainer fills them from the data set)")
        self.config = cfg
        linear = WSLinear if cfg.ws else nn.Linear

        def norm():
            return make_norm(cfg.norm, cfg.width, "features", **cfg.norm_options)

        self.residual = cfg.residual
        if cfg.residual:
            self.stem = nn.Linear(cfg.in_dim, cfg.width)
            self.blocks = nn.ModuleList(
                nn.Sequential(norm(), make_activation(cfg.activation), linear(cfg.width, cfg.width))
                for _ in range(cfg.depth)
            )
            self.final = nn.Sequential(norm(), make_activation(cfg.activation))
        else:
            self.stem = nn.Identity()
            dims = [cfg.in_dim] + [cfg.width] * cfg.depth
            self.blocks = nn.ModuleList(
                nn.Sequential(linear(dims[i], dims[i + 1]), norm(), make_activation(cfg.activation))
                for i in range(cfg.depth)
            )
            self.final = nn.Identity()
        self.head = nn.Linear(cfg.width, cfg.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x.flatten(1))  # (N, D) from any input shape
        for block in self.blocks:
            x = x + block(x) if self.residual else block(x)
        return self.head(self.final(x))  # (N, out_dim)
