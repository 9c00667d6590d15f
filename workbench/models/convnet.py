"""A small ResNet-style CNN: stem, stages of basic residual blocks, global average pooling."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from .._validate import check_choice, check_positive
from ..norms import WSConv2d, make_norm
from .base import ACTIVATIONS, WorkbenchModel, make_activation


@dataclass(frozen=True)
class ConvNetConfig:
    """A ResNet-style CNN for small images.

    ``stages`` stages of ``blocks_per_stage`` basic blocks (conv3x3-norm-act-conv3x3-norm plus a
    shortcut, then act). Stage ``s`` has ``channels * 2**s`` channels and halves the resolution
    (stride 2) in its first block for ``s > 0``. ``ws=True`` uses Weight-Standardized convolutions.
    ``in_channels``/``out_dim`` are filled from the data set by the trainer.
    """

    kind: ClassVar[str] = "convnet"
    layout: ClassVar[str] = "conv"
    stages: int = 2
    channels: int = 16
    blocks_per_stage: int = 1
    norm: str = "batch"
    norm_options: dict = field(default_factory=dict)
    activation: str = "relu"
    ws: bool = False
    in_channels: int | None = None
    out_dim: int | None = None

    def __post_init__(self):
        check_positive("stages", self.stages, integer=True)
        check_positive("channels", self.channels, integer=True)
        check_positive("blocks_per_stage", self.blocks_per_stage, integer=True)
        check_choice("activation", self.activation, ACTIVATIONS)
        for name in ("in_channels", "out_dim"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name), integer=True)
        for width in self.stage_channels:
            make_norm(self.norm, width, self.layout, **self.norm_options)  # validates per stage width

    @property
    def stage_channels(self) -> list[int]:
        return [self.channels * 2**s for s in range(self.stages)]

    @classmethod
    def smoke(cls) -> ConvNetConfig:
        return cls(stages=2, channels=8)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, cfg: ConvNetConfig):
        super().__init__()
        conv = WSConv2d if cfg.ws else nn.Conv2d
        self.conv1 = conv(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = make_norm(cfg.norm, c_out, "conv", **cfg.norm_options)
        self.act1 = make_activation(cfg.activation)
        self.conv2 = conv(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = make_norm(cfg.norm, c_out, "conv", **cfg.norm_options)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(conv(c_in, c_out, 1, stride=stride, bias=False),
                                          make_norm(cfg.norm, c_out, "conv", **cfg.norm_options))
        self.act2 = make_activation(cfg.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C_in, H, W) -> (N, C_out, H', W')
        out = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


class ConvNet(WorkbenchModel):
    def __init__(self, cfg: ConvNetConfig):
        super().__init__()
        if cfg.in_channels is None or cfg.out_dim is None:
            raise ValueError("ConvNetConfig needs in_channels and out_dim (the trainer fills them from the data set)")
        self.config = cfg
        conv = WSConv2d if cfg.ws else nn.Conv2d
        c0 = cfg.channels
        self.stem = nn.Sequential(conv(cfg.in_channels, c0, 3, padding=1, bias=False),
                                  make_norm(cfg.norm, c0, "conv", **cfg.norm_options),
                                  make_activation(cfg.activation))
        blocks, c_in = [], c0
        for s, c_out in enumerate(cfg.stage_channels):
            for b in range(cfg.blocks_per_stage):
                stride = 2 if (s > 0 and b == 0) else 1
                blocks.append(BasicBlock(c_in, c_out, stride, cfg))
                c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(c_in, cfg.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (N, C, H, W)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=(2, 3)))  # global average pool -> (N, out_dim)
