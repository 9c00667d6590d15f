"""What every workbench model shares: named blocks, named layers, and config plumbing."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from torch import nn

from .._validate import check_choice

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "linear": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    check_choice("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


class WorkbenchModel(nn.Module):
    """Base class: a model is ``stem -> blocks -> head`` with ``blocks`` an ``nn.ModuleList``.

    Probes use :meth:`named_blocks` (per-block quantities such as residual variance) and
    :meth:`named_layers` (per-layer quantities such as weight norms or channel health).
    """

    config: object
    blocks: nn.ModuleList

    def named_blocks(self) -> list[tuple[str, nn.Module]]:
        """``[("blocks.0", block), ...]`` in forward order."""
        return [(f"blocks.{i}", b) for i, b in enumerate(self.blocks)]

    def named_layers(self) -> list[tuple[str, nn.Module]]:
        """Every weight layer (Linear, Conv, Embedding) by qualified name, in registration order."""
        kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)
        return [(n, m) for n, m in self.named_modules() if isinstance(m, kinds)]

    def named_norms(self) -> list[tuple[str, nn.Module]]:
        """Every normalization layer (not Identity) by qualified name."""
        from ..norms import is_norm_module

        return [(n, m) for n, m in self.named_modules() if is_norm_module(m)]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def iter_fields(cfg) -> Iterator[tuple[str, object]]:
    for f in dataclasses.fields(cfg):
        yield f.name, getattr(cfg, f.name)
