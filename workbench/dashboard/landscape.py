"""Landscape: 1-D, 2-D (contour) and 3-D surface slices of the loss around trained weights.

Trains one model live, then evaluates ``probes.landscape`` on a grid around its weights in its
training process. BatchNorm mode (train: batch statistics; eval: running statistics) is selectable.
"""
from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd
import panel as pn
import param

from ..train.worker import landscape_after
from ..viz.landscape import contour_figure, line_figure, surface_figure
from ._lab import ProbeLab
from ._session import page, plotly_pane

MAX_GRID = 41


class LandscapeLab(ProbeLab):
    """Train, then a plane (or line) of losses around the trained weights."""

    dims = param.Selector(objects=[1, 2], default=2, label="Slice dimensions")
    grid = param.Integer(default=21, doc=f"points per axis (at most {MAX_GRID})")
    span = param.Number(default=1.0, doc="coordinate range [-span, span] (filter-normalized)")
    direction = param.Selector(objects=["random", "hessian"], default="random")
    mode = param.Selector(objects=["train", "eval"], default="train",
                          label="BN mode (train: batch stats, eval: running stats)")
    examples = param.Integer(default=256, doc="training examples the loss is evaluated on")

    controls = (*ProbeLab.controls, "dims", "grid", "span", "direction", "mode", "examples")
    title = "landscape"

    def __init__(self, store_root: str | Path | None = "data/runs", **params):
        super().__init__(store_root, **params)
        self.result: pd.DataFrame | None = None
        kw = {"height": 380, "sizing_mode": "stretch_width", "config": {"displaylogo": False}}
        empty = pd.DataFrame({"metric": [], "alpha": [], "beta": [], "value": []})
        self.line_plot = plotly_pane(line_figure(empty), **kw)
        self.contour_plot = plotly_pane(contour_figure(empty), **kw)
        self.surface_plot = plotly_pane(surface_figure(empty), **kw)

    def validate(self) -> None:
        if not isinstance(self.grid, int) or not 3 <= self.grid <= MAX_GRID:
            raise ValueError(f"grid points per axis must be between 3 and {MAX_GRID}, got {self.grid!r}")
        if not (isinstance(self.span, (int, float)) and 0 < self.span <= 10):
            raise ValueError(f"span must be in (0, 10], got {self.span!r}")
        if not isinstance(self.examples, int) or not 2 <= self.examples <= 2048:
            raise ValueError(f"examples must be between 2 and 2048, got {self.examples!r}")

    def after(self):
        return functools.partial(landscape_after, examples=self.examples, dims=self.dims,
                                 steps=self.grid, span=float(self.span), direction=self.direction,
                                 mode=self.mode, seed=self.seed)

    def draw_results(self) -> None:
        frames = [j.extra for j in self.jobs if j.done and j.extra is not None]
        if not frames:
            return
        self.result = frames[0]
        self.line_plot.object = line_figure(self.result)
        if self.result["beta"].notna().any():
            self.contour_plot.object = contour_figure(self.result)
            self.surface_plot.object = surface_figure(self.result)

    def results_view(self):
        return pn.Column(self.line_plot, pn.Row(self.contour_plot, self.surface_plot,
                                                sizing_mode="stretch_width"),
                         sizing_mode="stretch_width")

    def widgets(self) -> dict:
        return {**super().widgets(), "grid": pn.widgets.IntInput, "span": pn.widgets.FloatInput,
                "examples": pn.widgets.IntInput, "dims": pn.widgets.RadioButtonGroup,
                "mode": pn.widgets.RadioButtonGroup}


def landscape_app(store_root: str | Path | None = "data/runs", template: bool = True):
    pn.extension("plotly")
    lab = LandscapeLab(store_root=store_root)
    lab.bind_session()
    return page("landscape", lab.view(), template=template)
