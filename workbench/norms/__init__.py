"""The normalization zoo: every norm the workbench compares, behind one registry.

``make_norm(name, num_channels, layout, **options)`` builds a module for one of ``LAYOUTS``
(``features`` (N, C), ``conv`` (N, C, H, W), ``tokens`` (N, T, C)); ``NORMS[name]`` says which
layouts and options a norm has. Every module it returns except ``none`` (``nn.Identity``) is
recognised by :func:`is_norm_module` and exposes its per-channel gain as ``.weight`` and shift
as ``.bias`` (None when ``affine=False``; ``rms`` never has a shift). Weight Standardization
(:class:`WSLinear`, :class:`WSConv2d`) acts on the layer before the norm and composes with all.

Example:
    >>> norm = make_norm("group", 32, "conv", groups=4)
    >>> norm_layouts("instance")
    ('conv',)
"""
from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .._validate import check_choice
from ._layout import LAYOUTS
from ._spec import NormSpec
from .batch import BatchNorm
from .batch_channel import BatchChannelNorm
from .ghost import GhostBatchNorm, last_virtual_batch_of_one
from .group import GroupNorm
from .instance import InstanceNorm
from .layer import LayerNorm
from .power import PowerNorm
from .rms import RMSNorm
from .ws import WSConv2d, WSLinear, standardize_weight

_ALL = LAYOUTS
_EPS, _AFFINE, _MOMENTUM = {"eps": 1e-5}, {"affine": True}, {"momentum": 0.1}


def _identity(num_channels: int, layout: str) -> nn.Module:
    return nn.Identity()


NORMS: dict[str, NormSpec] = {
    spec.name: spec
    for spec in (
        NormSpec("none", _ALL, {}, "identity: no normalization", _identity),
        NormSpec("batch", _ALL, {**_EPS, **_MOMENTUM, **_AFFINE},
                 "per channel over the batch (and positions); running stats in eval",
                 BatchNorm),
        NormSpec("ghost_batch", _ALL, {"virtual_batch_size": 8, **_EPS, **_MOMENTUM, **_AFFINE},
                 "batch norm per virtual batch of virtual_batch_size examples (Hoffer et al.)",
                 GhostBatchNorm),
        NormSpec("layer", _ALL, {**_EPS, **_AFFINE},
                 "per example over C (features, tokens) or over (C, H, W) (conv)", LayerNorm),
        NormSpec("group", _ALL, {"groups": 8, **_EPS, **_AFFINE},
                 "per example (token) over groups of C/groups channels", GroupNorm),
        NormSpec("instance", ("conv",),
                 {**_EPS, **_AFFINE, **_MOMENTUM, "track_running_stats": False},
                 "per example and channel over (H, W)", InstanceNorm),
        NormSpec("rms", _ALL, {**_EPS, **_AFFINE},
                 "divide by the root mean square per example (token); no centering", RMSNorm),
        NormSpec("batch_channel", ("features", "conv"),
                 {"groups": 8, "stats": "estimated", **_EPS, **_MOMENTUM, **_AFFINE},
                 "batch norm on estimated (or batch) statistics, then group norm (Qiao et al.)",
                 BatchChannelNorm),
        NormSpec("power", _ALL,
                 {**_EPS, **_MOMENTUM, "backward_momentum": 0.1, "warmup_iters": 0, **_AFFINE},
                 "divide by a running quadratic mean, approximate backward (Shen et al.)",
                 PowerNorm),
    )
}

NORM_CLASSES = (BatchNorm, GhostBatchNorm, LayerNorm, GroupNorm, InstanceNorm, RMSNorm,
                BatchChannelNorm, PowerNorm)
# torch's own norm layers count too, so probes work on models built without this registry.
_TORCH_NORMS = (_NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def make_norm(name: str, num_channels: int, layout: str, **options) -> nn.Module:
    """Build the norm ``name`` for ``num_channels`` channels in ``layout``.

    Args:
        name: a key of ``NORMS`` (``none``, ``batch``, ``ghost_batch``, ``layer``, ``group``,
            ``instance``, ``rms``, ``batch_channel``, ``power``).
        num_channels: C, a positive integer.
        layout: ``"features"`` (N, C), ``"conv"`` (N, C, H, W) or ``"tokens"`` (N, T, C).
        **options: the norm's options (``NORMS[name].options`` lists them with defaults).

    Returns:
        An ``nn.Module`` mapping the layout's shape to the same shape.

    Raises:
        ValueError: unknown name, layout or option, layout the norm does not support, bad
            ``num_channels`` or option value; the message lists the valid choices.
    """
    check_choice("norm", name, NORMS)
    return NORMS[name].build(num_channels, layout, **options)


def norm_layouts(name: str) -> tuple[str, ...]:
    """The layouts where the norm ``name`` is meaningful, e.g. ``('conv',)`` for instance."""
    check_choice("norm", name, NORMS)
    return NORMS[name].layouts


def is_norm_module(module: nn.Module) -> bool:
    """True for every module :func:`make_norm` returns except ``nn.Identity`` (name ``none``),
    and for torch's own BatchNorm/InstanceNorm/LayerNorm/GroupNorm/RMSNorm layers."""
    return isinstance(module, NORM_CLASSES + _TORCH_NORMS)


def batch_split_ok(model: nn.Module, examples: int) -> bool:
    """Whether ``examples`` examples can go through ``model``'s norms on batch statistics in
    train mode as a batch of their own (a chunk or sub-batch of a larger one): at least two
    where there is any such norm (BatchNorm, ghost, Batch-Channel: one example of (N, C)
    features is one value per channel; Batch-Channel only with ``stats="batch"``, its default
    estimated statistics take one example), and for ghost batch norm no last virtual batch of
    one (``examples % virtual_batch_size != 1``)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    stats = [m for m in model.modules() if isinstance(m, _BatchNorm)
             or (isinstance(m, BatchChannelNorm) and m.stats == "batch")]
    if stats and examples < 2:
        return False
    return not any(last_virtual_batch_of_one(examples, m.virtual_batch_size)
                   for m in stats if isinstance(m, GhostBatchNorm))


def fitting_batch_size(model: nn.Module, size: int, limit: int) -> int:
    """``size``, or the largest size below it (else the smallest above it, below ``limit``) that
    :func:`batch_split_ok` takes; ``size`` when none does."""
    for m in [*range(size, 0, -1), *range(size + 1, limit)]:
        if batch_split_ok(model, m):
            return m
    return size


__all__ = [
    "LAYOUTS", "NORMS", "NORM_CLASSES", "BatchChannelNorm", "BatchNorm", "GhostBatchNorm",
    "GroupNorm", "InstanceNorm", "LayerNorm", "NormSpec", "PowerNorm", "RMSNorm", "WSConv2d",
    "WSLinear", "batch_split_ok", "fitting_batch_size", "is_norm_module",
    "last_virtual_batch_of_one", "make_norm", "norm_layouts",
    "standardize_weight",
]
