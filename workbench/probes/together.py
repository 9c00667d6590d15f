"""The training-time probes run together, sharing their passes: what the ``cheap`` and
``standard`` presets cost on a training schedule.

``layer_norms``, ``channel_health`` and ``smoothness`` (or ``smoothness_small``) each start with
the same thing: a forward pass on the batch at the current weights, and (but channel health) the
gradient there. Run one after the other they pay for that pass, for saving and restoring the
model, and for building a frame three times. :func:`run_together` does the forward once (the
activation hooks of channel health on it), the backward once (layer norms read their gradients
from it, smoothness starts from it; with smoothness, layer norms take the per-layer weight and
gradient norms it has taken anyway), saves the model once and returns one frame. The rows are
the ones the probes return on their own, under their own names (the test suite checks that).
"""
from __future__ import annotations

import contextlib
import weakref
from collections.abc import Sequence

import pandas as pd
import torch

from .._validate import check_choice
from ..utils import forward_uses_rng, preserved_state
from ._directions import MODES, restore_buffers, snapshot_buffers
from ._tidy import tidy_parts
from .channel_health import (
    activation_modules,
    capture_inputs,
    health_rows,
    health_thresholds,
    norm_gains,
)
from .layer_norms import norm_rows, rows_from_norms, weight_layers
from .smoothness import eta_grid, smoothness_rows, smoothness_targets

FUSABLE = ("layer_norms", "channel_health", "smoothness_small", "smoothness")
_SMOOTH_ETAS = {"smoothness_small": 2, "smoothness": 8}  # num_etas of each variant


class _Capture:
    """What :meth:`Together.begin` sets up before a forward pass: the activation hooks and the
    buffers as they were before it (every smoothness evaluation starts from them)."""

    def __init__(self, probe: Together, model, structure=None, snapshots=None):
        self.probe, self.model = probe, model
        (self.acts, self.gains, self.params, self.layers,
         self.weights) = structure or _structure(probe, model)
        # the buffers before the forward, and (``entry``, taken by finish) after it: fresh
        # snapshots, or a reused pair of them taken again in place
        before, self.entry = snapshots or (None, None)
        self.buffers = snapshot_buffers(model, into=before) if probe.smooth else None
        self._hooks = capture_inputs(self.acts)
        self.seen = self._hooks.__enter__()

    def close(self) -> None:
        """Remove the hooks (after the forward pass; idempotent)."""
        if self._hooks is not None:
            self._hooks.__exit__(None, None, None)
            self._hooks = None


def _structure(probe: Together, model) -> tuple:
    """What the probes read from the module tree: ``(activation modules, norm layers with gains,
    parameters smoothness moves, its weight layers, layer_norms' weight layers)``."""
    acts = activation_modules(model) if probe.health else []
    gains = norm_gains(model) if probe.health else []
    if probe.smooth:  # every parameter; its weight layers are layer_norms' layers too
        params, layers = smoothness_targets(model)
        weights = layers if probe.layer_norms else []
    else:
        weights, layers = weight_layers(model) if probe.layer_norms else [], []
        params = [w for _, w in weights]
    return acts, gains, params, layers, weights


class Together:
    """A probe that runs ``names`` (a subset of :data:`FUSABLE`) together on one batch.

    Called like any probe, ``probe(model, batch, loss_fn, lr=...)`` (:func:`run_together`). The
    trainer can also fold it into a training step, where the forward pass and the gradient are
    already there: :meth:`begin` before the step's forward, :meth:`finish` after its backward;
    the rows are the same and the step's own pass is not repeated.
    """

    def __init__(self, names: Sequence[str], *, mode: str = "train"):
        check_choice("mode", mode, MODES)
        if isinstance(names, str) or not names:
            raise ValueError(f"names must be a non-empty list of probes to run together (e.g. "
                             f"['layer_norms']), got {names!r}; choose from: {', '.join(FUSABLE)}")
        names = list(dict.fromkeys(names))
        for name in names:
            check_choice("probe to run together", name, FUSABLE)
        smooth = [n for n in names if n in _SMOOTH_ETAS]
        if len(smooth) > 1:
            raise ValueError(f"run_together takes one smoothness variant, got {smooth}")
        self.names, self.mode = tuple(names), mode
        self.smooth = smooth[0] if smooth else None
        self.health = "channel_health" in names
        self.thresholds = health_thresholds()  # channel health's defaults, checked once
        self.layer_norms = "layer_norms" in names
        self.needs_grad = self.layer_norms or self.smooth is not None
        self.__name__ = "+".join(names)

    def __getstate__(self) -> dict:
        # the per-model cache (a weak reference and buffer copies) stays in this process
        return {k: v for k, v in self.__dict__.items() if k != "_cached"}

    def __repr__(self) -> str:
        return f"Together({list(self.names)!r}, mode={self.mode!r})"

    def __call__(self, model, batch, loss_fn, *, lr: float = 0.05) -> pd.DataFrame:
        x, y = batch
        if self.smooth:
            eta_grid(lr, None, _SMOOTH_ETAS[self.smooth])  # bad lr: fail before any work
        with preserved_state(model, rng=forward_uses_rng(model), params=self.smooth is not None,
                             grads=False):
            model.train(self.mode == "train")
            capture = self.begin(model)
            try:
                with contextlib.nullcontext() if self.needs_grad else torch.no_grad():
                    loss = loss_fn(model(x), y)
            finally:
                capture.close()
            grads = (torch.autograd.grad(loss, capture.params, allow_unused=True)
                     if self.needs_grad else None)
            return tidy_parts(self.finish(capture, batch, loss_fn, loss, grads, lr=lr,
                                          restore=False))

    def begin(self, model, *, reuse: bool = False) -> _Capture:
        """Before a forward pass on the batch at the current weights (in this probe's mode).

        ``reuse``: take the module structure (activation modules, parameters, weight layers,
        buffers) found on the previous call with the same model instead of walking the model
        again, and refresh the buffer snapshots of that call in place; for a caller that knows
        the model's modules, parameters and buffers have not been replaced since and that
        finishes one capture before it begins the next (the trainer, within one run)."""
        if not reuse:
            return _Capture(self, model)
        cached = getattr(self, "_cached", None)
        if cached is None or cached[0]() is not model:
            snapshots = (snapshot_buffers(model), snapshot_buffers(model)) if self.smooth else None
            cached = self._cached = (weakref.ref(model), _structure(self, model), snapshots)
        return _Capture(self, model, cached[1], cached[2])

    def finish(self, capture: _Capture, batch, loss_fn, loss, grads, *, lr: float = 0.05,
               restore: bool = True) -> list[tuple[str, list, int]]:
        """The ``(probe, rows, iters)`` parts of the rows (:func:`~._tidy.tidy_parts` makes the
        frame; the trainer keeps the parts and builds one frame at the end), from the forward
        that ``capture`` watched, its loss and the gradients of ``capture.params`` (None for an
        unused one). Smoothness moves the weights and evaluates from the buffers saved by
        :meth:`begin`; the weights are put back, and the buffers as they were on entry when
        ``restore``."""
        capture.close()
        model = capture.model
        parts = {}
        if self.health:
            parts["channel_health"] = ("channel_health",
                                       health_rows(model, capture.acts, capture.seen,
                                                   self.thresholds, gains=capture.gains)[0], 1)
        if self.layer_norms and not self.smooth:
            by_id = dict(zip(map(id, capture.params), grads))
            parts["layer_norms"] = ("layer_norms", norm_rows(
                capture.weights, [by_id[id(w)] for _, w in capture.weights]), 1)
        if self.smooth:
            etas = eta_grid(lr, None, _SMOOTH_ETAS[self.smooth])
            entry_buffers = snapshot_buffers(model, into=capture.entry) if restore else None
            try:  # smoothness_rows puts the weights back itself
                rows, _, (w_n, g_n) = smoothness_rows(
                    model, batch, loss_fn, capture.params, capture.layers, capture.buffers, loss,
                    grads, etas, lr)
            finally:
                if restore:
                    restore_buffers(entry_buffers)
            parts[self.smooth] = ("smoothness", rows, len(etas) + 1)
            if self.layer_norms:  # the same layers (capture.weights): their norms are taken
                parts["layer_norms"] = ("layer_norms", rows_from_norms(
                    [name for name, _ in capture.weights], w_n, g_n), 1)
        return [parts[n] for n in self.names if n in parts]


def run_together(model, batch, loss_fn, *, names: Sequence[str] = ("layer_norms", "channel_health",
                                                                    "smoothness_small"),
                 lr: float = 0.05, mode: str = "train") -> pd.DataFrame:
    """Run the probes ``names`` (a subset of :data:`FUSABLE`) on one batch, sharing their passes.

    Args:
        model, batch, loss_fn: as for every probe.
        names: which probes; at most one of ``smoothness`` / ``smoothness_small``.
        lr: the training learning rate (smoothness's step-size grid and ``lr_effective``).
        mode: ``"train"`` or ``"eval"``, for all of them.

    Returns:
        The rows each probe returns with its default options, each under its own ``probe`` name
        (``smoothness_small``'s rows are named ``smoothness``, as on its own).

    Note:
        Cost: one forward with activation hooks, one backward, and the smoothness passes
        (``num_etas`` forward/backward pairs): for ``standard``, 3 passes instead of 5; inside a
        training step (:meth:`Together.finish`), 2.
    """
    return Together(names, mode=mode)(model, batch, loss_fn, lr=lr)
