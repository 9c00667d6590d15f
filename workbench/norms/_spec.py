"""The spec object behind each entry of ``NORMS``: layouts, options with defaults, validation."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from .._validate import check_choice, check_divides, check_positive
from ._layout import LAYOUTS

STATS = ("estimated", "batch")


def _check_fraction(what: str, value, *, allow_zero: bool = False, allow_none: bool = False):
    if value is None and allow_none:
        return
    check_positive(what, value, allow_zero=allow_zero)
    if value > 1:
        raise ValueError(f"{what} must be <= 1, got {value!r}")


def _check_bool(what: str, value) -> None:
    if not isinstance(value, bool):
        # ValueError, not TypeError: every bad option is a ValueError for the caller (house rule)
        raise ValueError(f"{what} must be True or False, got {value!r}")  # noqa: TRY004


def check_option(norm: str, key: str, value, num_channels: int) -> None:
    """Raise a ValueError naming ``norm`` and ``key`` when ``value`` is not valid for that option."""
    what = f"{norm} option {key}"
    if key == "eps":
        check_positive(what, value)
    elif key in ("affine", "track_running_stats"):
        _check_bool(what, value)
    elif key == "momentum":  # None = cumulative average, as in torch BatchNorm
        _check_fraction(what, value, allow_none=norm in ("batch", "ghost_batch"))
    elif key == "backward_momentum":
        _check_fraction(what, value, allow_zero=True)
    elif key == "warmup_iters":
        check_positive(what, value, allow_zero=True, integer=True)
    elif key == "virtual_batch_size":
        check_positive(what, value, integer=True)
    elif key == "groups":
        check_positive(what, value, integer=True)
        check_divides("groups", value, "num_channels", num_channels)
    elif key == "stats":
        check_choice(f"{norm} stats", value, STATS)


@dataclass(frozen=True)
class NormSpec:
    """One registered norm.

    Attributes:
        name: registry key, e.g. ``"ghost_batch"``.
        layouts: the layouts (of ``LAYOUTS``) where the norm is meaningful.
        options: every option the norm takes, in order, with its default.
        doc: one line saying what is normalized over what.
        builder: ``builder(num_channels, layout, **options) -> nn.Module`` (options complete).
    """

    name: str
    layouts: tuple[str, ...]
    options: dict
    doc: str
    builder: Callable[..., nn.Module] = field(repr=False)

    def build(self, num_channels: int, layout: str, **options) -> nn.Module:
        """Validate everything, fill defaults, and build the module.

        Raises:
            ValueError: bad layout name, layout not supported by this norm, non-positive
                ``num_channels``, unknown option name or bad option value; each message names
                the bad value and lists the valid ones.
        """
        check_choice("layout", layout, LAYOUTS)
        if layout not in self.layouts:
            raise ValueError(
                f"norm {self.name!r} is not defined for layout {layout!r}; "
                f"layouts for {self.name!r}: {', '.join(self.layouts)}"
            )
        check_positive("num_channels", num_channels, integer=True)
        for key in options:
            if key not in self.options:
                valid = ", ".join(self.options) if self.options else "(none; it takes no options)"
                raise ValueError(
                    f"unknown option {key!r} for norm {self.name!r}; choose one of: {valid}"
                )
        merged = {**self.options, **options}
        for key, value in merged.items():
            check_option(self.name, key, value, num_channels)
        return self.builder(num_channels, layout, **merged)
