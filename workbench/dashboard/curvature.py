"""Curvature: Hessian spectra against batch size for a model trained to a chosen step.

Trains one model live (:class:`~._lab.ProbeLab`), then, in its training process, measures
``probes.hessian_vs_batch_size`` on its training set: overlaid densities per batch size,
``lambda_max`` against B with the fitted ``a + c/B`` law, the implied largest stable learning rate
for the run's optimizer (``2 (1 + momentum) / lambda_max`` for SGD with heavy-ball momentum) with
the run itself placed against it, and the trace.
"""
from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd
import panel as pn
import param

from ..probes.hessian_vs_batch_size import optimizer_lr_options
from ..train.worker import hessian_vs_batch_size_after
from ..viz.curvature import density_figure, lambda_max_figure, stable_lr_figure, trace_figure
from ._lab import ProbeLab
from ._session import page, plotly_pane

BATCH_SIZES = (4, 8, 16, 32, 64, 128, 256, 512)
FIGURES = (density_figure, lambda_max_figure, stable_lr_figure, trace_figure)
_EMPTY = pd.DataFrame(columns=["metric", "batch_size", "value", "eigenvalue"])


def stable_lr_options(cfg) -> dict:
    """``stable_lr_figure``'s options for a run: which rates, the title, and the run's own point
    where the drawn threshold is its optimizer's (what ``hessian_vs_batch_size_after`` measured,
    :func:`~workbench.probes.hessian_vs_batch_size.optimizer_lr_options`: SGD with its momentum,
    Adam with its beta1; for LARS/LAMB the curve is plain gradient descent's and the run is not
    placed on it)."""
    kw = optimizer_lr_options(cfg.to_dict())
    if "momentum" in kw:
        kind = "Nesterov momentum" if kw["nesterov"] else "momentum"
        what = f"SGD, {kind} {kw['momentum']:g}" if kw["momentum"] else "SGD without momentum"
    elif "adam_beta1" in kw:
        what = f"{'Adam' if cfg.optimizer == 'adam' else 'AdamW'}, β1 {kw['adam_beta1']:g}"
    else:
        return {"what": f"plain gradient descent; {cfg.optimizer.upper()}'s trust ratios not modeled"}
    return {"optimizer": cfg.optimizer, "what": what, "run_lr": cfg.lr,
            "run_batch_size": cfg.batch_size}


class CurvatureLab(ProbeLab):
    """Train, then Hessian spectra of mini-batches of several sizes and of the full data."""

    batch_sizes = param.ListSelector(default=[8, 32, 128, 512], objects=list(BATCH_SIZES),
                                     label="Hessian batch sizes")
    num_batches = param.Integer(default=2, doc="mini-batches per size (mean ± std)")
    max_iter = param.Integer(default=30, label="Lanczos steps per Hessian")
    mode = param.Selector(objects=["train", "eval"], default="train",
                          label="BN statistics (train: batch, eval: running)")

    controls = (*ProbeLab.controls, "batch_sizes", "num_batches", "max_iter", "mode")
    title = "curvature"

    def __init__(self, store_root: str | Path | None = "data/runs", **params):
        super().__init__(store_root, **params)
        self.result: pd.DataFrame | None = None
        kw = {"height": 300, "sizing_mode": "stretch_width", "config": {"displaylogo": False}}
        self.plots = [plotly_pane(f(_EMPTY), **kw) for f in FIGURES]

    def clear_results(self) -> None:
        self.result = None
        for plot, f in zip(self.plots, FIGURES, strict=True):
            plot.object = f(_EMPTY)

    def validate(self) -> None:
        if not self.batch_sizes:
            raise ValueError("pick at least one Hessian batch size")
        if not isinstance(self.num_batches, int) or not 1 <= self.num_batches <= 8:
            raise ValueError(f"mini-batches per size must be between 1 and 8, got {self.num_batches!r}")
        if not isinstance(self.max_iter, int) or not 5 <= self.max_iter <= 200:
            raise ValueError(f"Lanczos steps must be between 5 and 200, got {self.max_iter!r}")

    def after(self):
        return functools.partial(hessian_vs_batch_size_after, batch_sizes=list(self.batch_sizes),
                                 num_batches=self.num_batches, max_iter=self.max_iter,
                                 density_steps=20, mode=self.mode, seed=self.seed)

    def draw_results(self) -> None:
        done = [j for j in self.jobs if j.done and j.extra is not None]
        if not done:
            return
        self.result, cfg = done[0].extra, done[0].cfg
        figures = [functools.partial(f, **stable_lr_options(cfg)) if f is stable_lr_figure else f
                   for f in FIGURES]
        for plot, f in zip(self.plots, figures, strict=True):
            plot.object = f(self.result)

    def results_view(self):
        return pn.GridBox(*self.plots, ncols=2, sizing_mode="stretch_width")

    def widgets(self) -> dict:
        return {**super().widgets(), "batch_sizes": pn.widgets.MultiChoice,
                "num_batches": pn.widgets.IntInput, "max_iter": pn.widgets.IntInput}


def curvature_app(store_root: str | Path | None = "data/runs", template: bool = True):
    pn.extension("plotly")
    lab = CurvatureLab(store_root=store_root)
    lab.bind_session()
    return page("curvature", lab.view(), template=template)
