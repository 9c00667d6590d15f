"""Learning-rate rules (batch-size scaling, warm-up, decay) and batch-size schedules.

The batch-size schedules are ``constant``, ``step`` (geometric growth every ``growth_every``
steps) and ``norm_test``, the adaptive rule of Byrd et al. (2012) used by AdAdaGrad
(Lau et al. 2024): grow the batch when the estimated variance of the batch-mean gradient
exceeds ``theta**2`` times the squared norm of the mean gradient.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from workbench._validate import check_choice, check_divides, check_positive
from workbench.norms import last_virtual_batch_of_one

LR_SCALING = ("none", "linear", "sqrt")
LR_DECAY = ("constant", "cosine", "linear")
BATCH_SCHEDULES = ("constant", "step", "norm_test")

_EXPONENT = {"none": 0.0, "linear": 1.0, "sqrt": 0.5}


def _check_int(what: str, value, *, allow_zero: bool = False) -> None:
    check_positive(what, value, allow_zero=allow_zero, integer=True)


def scaled_lr(base_lr: float, batch_size: int, base_batch_size: int, rule: str) -> float:
    """``base_lr * (batch_size / base_batch_size) ** p``, ``p`` = 0 (none), 1 (linear), 0.5 (sqrt).

    ``base_lr`` is the learning rate tuned at ``base_batch_size``; linear scaling is the SGD
    rule of Goyal et al., square-root scaling the Adam rule (and Hoffer et al.'s).
    """
    check_choice("lr scaling rule", rule, LR_SCALING)
    check_positive("base_lr", base_lr, allow_zero=True)
    _check_int("batch_size", batch_size)
    _check_int("base_batch_size", base_batch_size)
    return base_lr * (batch_size / base_batch_size) ** _EXPONENT[rule]


def lr_at(step: int, *, total_steps: int, base_lr: float, batch_size: int, base_batch_size: int,
          scaling: str = "none", warmup_steps: int = 0, decay: str = "constant",
          min_lr_ratio: float = 0.0) -> float:
    """Learning rate for 0-based ``step``: linear warm-up to the scaled lr, then decay.

    With ``peak = scaled_lr(base_lr, batch_size, base_batch_size, scaling)`` and
    ``floor = min_lr_ratio * peak``:

    * warm-up, ``step < warmup_steps``: ``peak * (step + 1) / warmup_steps``, so step 0 gets
      ``peak / warmup_steps`` (never 0, no wasted step) and step ``warmup_steps - 1`` gets ``peak``;
    * afterwards, with ``t = (step - warmup_steps) / (total_steps - warmup_steps)`` in [0, 1]:
      ``constant`` -> ``peak``; ``linear`` -> ``peak - (peak - floor) * t``;
      ``cosine`` -> ``floor + (peak - floor) * (1 + cos(pi * t)) / 2``.
      The decay starts at ``peak`` at step ``warmup_steps`` and would reach ``floor`` at step
      ``total_steps`` (one past the last step); steps past the end stay at ``floor``.

    When ``batch_size`` changes during training (a growing batch schedule), pass the current
    batch size to rescale the lr with it.
    """
    _check_int("step", step, allow_zero=True)
    _check_int("total_steps", total_steps)
    _check_int("warmup_steps", warmup_steps, allow_zero=True)
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be <= total_steps={total_steps}")
    check_choice("lr decay", decay, LR_DECAY)
    check_positive("min_lr_ratio", min_lr_ratio, allow_zero=True)
    if min_lr_ratio > 1:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio!r}")
    peak = scaled_lr(base_lr, batch_size, base_batch_size, scaling)
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if decay == "constant" or total_steps == warmup_steps:
        return peak
    t = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    floor = min_lr_ratio * peak
    if decay == "linear":
        return peak - (peak - floor) * t
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def norm_test_stats(micro_grads: Sequence[torch.Tensor] | torch.Tensor,
                    micro_batch: float) -> tuple[float, float]:
    """Estimate the per-example gradient variance and the squared mean-gradient norm.

    Args:
        micro_grads: ``k >= 2`` flattened gradients ``g_1..g_k``, each the mean over a disjoint
            micro-batch of ``micro_batch`` examples: a list of (P,) tensors or one (k, P) tensor.
        micro_batch: ``m``, examples per micro-batch.

    Returns:
        ``(sigma2, mean_sq_norm)``: ``sigma2 = m / (k - 1) * sum_i ||g_i - g_bar||**2``, an unbiased
        estimate of ``tr(Cov)`` of a single example's gradient (each ``g_i`` has covariance
        ``Cov / m``, and the sample variance with ``k - 1`` is unbiased), and
        ``mean_sq_norm = ||g_bar||**2`` with ``g_bar`` the mean of the ``g_i`` (the batch
        gradient; biased upwards by ``tr(Cov) / (k m)``, as in Byrd et al.).

    Note:
        One pass over a (k, P) tensor; computed in float32 at least (float64 if given).
    """
    g = torch.stack(list(micro_grads)) if not isinstance(micro_grads, torch.Tensor) else micro_grads
    if g.ndim != 2 or g.shape[0] < 2:
        raise ValueError(f"norm_test needs k >= 2 flattened micro-batch gradients, got shape "
                         f"{tuple(g.shape)}")
    check_positive("micro_batch", micro_batch)
    g = g.detach().to(torch.promote_types(g.dtype, torch.float32))
    g_bar = g.mean(dim=0)  # (P,)
    spread = (g - g_bar).square().sum()  # sum_i ||g_i - g_bar||^2
    sigma2 = micro_batch * spread.item() / (g.shape[0] - 1)
    return sigma2, g_bar.square().sum().item()


class BatchSizeSchedule:
    """Batch size as a function of the step (and, for ``norm_test``, of observed gradients).

    Build it with :func:`make_batch_schedule`. ``batch_size(step)`` never decreases with the
    step. ``observe`` only matters for ``norm_test``: the trainer calls it every ``check_every``
    steps (see :meth:`needs_grads`) with ``k >= 2`` micro-batch gradients of the current batch.
    After each test ``last_test`` holds ``step``, ``batch_size``, ``per_example_grad_variance``
    (sigma2), ``mean_grad_sq_norm``, ``requested_batch_size`` and ``grew``.
    """

    def __init__(self, kind: str, *, batch_size: int, max_batch_size: int | None,
                 growth_factor: float, growth_every: int, theta: float, check_every: int,
                 multiple_of: int, virtual_batch: int | None = None):
        self.kind, self.base_batch_size, self.max_batch_size = kind, batch_size, max_batch_size
        self.growth_factor, self.growth_every = growth_factor, growth_every
        self.theta, self.check_every, self.multiple_of = theta, check_every, multiple_of
        self.virtual_batch = virtual_batch
        self.current = batch_size  # norm_test's batch size so far
        self.last_test: dict | None = None

    def _fit(self, size: float) -> int:
        """Round up to a multiple of ``multiple_of``, then cap at the largest multiple that is
        ``<= max_batch_size`` (so every size stays a multiple; ``batch_size`` is one). With
        ``virtual_batch`` v, a size whose last virtual batch would hold one example (``n > v``,
        ``n % v == 1``) becomes one more (one less at the cap): ghost BatchNorm on (N, C)
        features cannot normalize a virtual batch of one."""
        q = self.multiple_of
        size = math.ceil(size / q) * q
        cap = None if self.max_batch_size is None else self.max_batch_size // q * q
        size = size if cap is None else min(size, cap)
        if self.virtual_batch and last_virtual_batch_of_one(size, self.virtual_batch):
            # q == 1 here (see make_batch_schedule)
            size += 1 if cap is None or size < cap else -1
        return size

    def batch_size(self, step: int) -> int:
        """Batch size to use at 0-based ``step``."""
        _check_int("step", step, allow_zero=True)
        if self.kind == "step":
            n = step // self.growth_every
            if self.max_batch_size is not None and self.growth_factor > 1:  # no huge powers
                ratio = self.max_batch_size / self.base_batch_size
                n = min(n, math.ceil(math.log(ratio) / math.log(self.growth_factor)) + 1)
            return self._fit(self.base_batch_size * self.growth_factor ** n)
        return self.current

    def needs_grads(self, step: int) -> bool:
        """Whether :meth:`observe` wants micro-batch gradients at ``step`` (norm_test only)."""
        return self.kind == "norm_test" and step % self.check_every == 0

    def observe(self, step: int, *,
                micro_grads: Sequence[torch.Tensor] | torch.Tensor | None = None,
                micro_batch: int | None = None) -> None:
        """Run the norm test on ``micro_grads`` (no-op for constant/step or when ``None``).

        Grows the batch when ``sigma2 / B > theta**2 * ||g_bar||**2`` (see :func:`norm_test_stats`)
        to the size the test asks for, ``ceil(sigma2 / (theta**2 * ||g_bar||**2))``, rounded up to
        a multiple of ``multiple_of`` and capped at ``max_batch_size`` (and kept off a last
        virtual batch of one with ``virtual_batch``: see ``_fit``). If ``g_bar`` is 0 and no
        cap is set, the batch grows by ``growth_factor`` instead. ``micro_batch`` defaults to
        ``B / k``.
        """
        if self.kind != "norm_test" or micro_grads is None:
            return
        k = micro_grads.shape[0] if isinstance(micro_grads, torch.Tensor) else len(micro_grads)
        m = micro_batch if micro_batch is not None else self.current / max(k, 1)
        sigma2, mean_sq = norm_test_stats(micro_grads, m)
        threshold = self.theta ** 2 * mean_sq
        before = self.current
        if sigma2 / before > threshold:
            if threshold > 0:
                requested = max(math.ceil(sigma2 / threshold), before + 1)
            elif self.max_batch_size is not None:
                requested = self.max_batch_size
            else:
                requested = math.ceil(before * self.growth_factor)
            self.current = max(before, self._fit(requested))
        else:
            requested = before
        self.last_test = {"step": step, "batch_size": before, "per_example_grad_variance": sigma2,
                          "mean_grad_sq_norm": mean_sq, "requested_batch_size": requested,
                          "grew": self.current > before}

    def state_dict(self) -> dict:
        return {"kind": self.kind, "current": self.current, "last_test": self.last_test}

    def load_state_dict(self, state: dict) -> None:
        if state["kind"] != self.kind:
            raise ValueError(f"batch schedule state is for {state['kind']!r}, not {self.kind!r}")
        self.current = int(state["current"])
        self.last_test = state["last_test"]

    def __repr__(self) -> str:
        return (f"BatchSizeSchedule({self.kind!r}, batch_size={self.base_batch_size}, "
                f"max_batch_size={self.max_batch_size}, current={self.current})")


def make_batch_schedule(kind: str, *, batch_size: int, max_batch_size: int | None = None,
                        growth_factor: float = 2, growth_every: int = 100, theta: float = 0.5,
                        check_every: int = 10, multiple_of: int = 1,
                        virtual_batch: int | None = None) -> BatchSizeSchedule:
    """Build a :class:`BatchSizeSchedule` of kind ``constant``, ``step`` or ``norm_test``.

    Args:
        kind: one of :data:`BATCH_SCHEDULES`.
        batch_size: initial batch size (a multiple of ``multiple_of``).
        max_batch_size: cap (>= batch_size); ``None`` = no cap. When it is not a multiple of
            ``multiple_of``, the largest multiple below it is the effective cap.
        growth_factor: ``step``: multiply the batch by this every ``growth_every`` steps (>= 1).
        growth_every: ``step``: steps between growths.
        theta: ``norm_test``: tolerance; smaller theta -> bigger batches.
        check_every: ``norm_test``: steps between tests.
        multiple_of: grown batch sizes are rounded up to a multiple of this (e.g. the number
            of micro-batches ``k``, so that ``B = k m``).
        virtual_batch: ghost BatchNorm's virtual batch size when the whole batch goes through
            the model in one pass (no micro-batches: ``multiple_of`` 1) and a virtual batch of
            one example cannot be normalized (an MLP): grown sizes that would leave one example
            in the last virtual batch (``n % virtual_batch == 1``) are moved by one.
    """
    check_choice("batch schedule", kind, BATCH_SCHEDULES)
    _check_int("batch_size", batch_size)
    _check_int("multiple_of", multiple_of)
    check_divides("multiple_of", multiple_of, "batch_size", batch_size)
    if max_batch_size is not None:
        _check_int("max_batch_size", max_batch_size)
        if max_batch_size < batch_size:
            raise ValueError(f"max_batch_size={max_batch_size} must be >= batch_size={batch_size}")
    check_positive("growth_factor", growth_factor)
    if growth_factor < 1:
        raise ValueError(f"growth_factor must be >= 1, got {growth_factor!r}")
    _check_int("growth_every", growth_every)
    check_positive("theta", theta)
    _check_int("check_every", check_every)
    if virtual_batch is not None:
        _check_int("virtual_batch", virtual_batch)
        if multiple_of != 1:
            raise ValueError(f"virtual_batch applies to batches that go through the model in one "
                             f"pass (multiple_of=1), got multiple_of={multiple_of}")
        if last_virtual_batch_of_one(batch_size, virtual_batch):
            raise ValueError(f"batch_size={batch_size} leaves one example in the last virtual batch "
                             f"of {virtual_batch}: use e.g. {batch_size - 1}")
    return BatchSizeSchedule(kind, batch_size=batch_size, max_batch_size=max_batch_size,
                             growth_factor=growth_factor, growth_every=growth_every, theta=theta,
                             check_every=check_every, multiple_of=multiple_of,
                             virtual_batch=virtual_batch)
