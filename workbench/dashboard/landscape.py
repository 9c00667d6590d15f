"""Landscape: 1-D, 2-D (contour) and 3-D surface slices of the loss around trained weights.

Trains one model live, then evaluates ``probes.landscape`` on a grid around its weights in its
training process. BatchNorm mode (train: batch statistics; eval: running statistics) is selectable.
Directions: random (filter-normalized), the top Hessian eigenvectors, or the straight line to a
stored run of the same model and data (Goodfellow et al.'s interpolation; between a small- and a
large-batch solution, Keskar et al.'s sharp-vs-flat picture); its weights are read from the run
store, picked from a list (no path or id is typed).
"""
from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd
import panel as pn
import param

from ..train import TrainConfig
from ..train.worker import landscape_after
from ..viz.landscape import contour_figure, line_figure, surface_figure
from ._lab import ProbeLab
from ._session import page, plotly_pane

MAX_GRID = 41


class LandscapeLab(ProbeLab):
    """Train, then a plane (or line) of losses around the trained weights."""

    dims = param.Selector(objects=[1, 2], default=2, label="Slice dimensions")
    grid = param.Integer(default=21, doc=f"points per axis (at most {MAX_GRID})")
    span = param.Number(default=1.0, doc="coordinate range [-span, span] (filter-normalized); "
                                         "toward a stored run [0, span], 1 at that run")
    direction = param.Selector(objects=["random", "hessian", "stored run"], default="random",
                               doc="stored run: the line from the trained weights (0) to a "
                                   "stored run's (1), the second axis random")
    other_run = param.Selector(default=None, objects=[], allow_None=True,
                               label="Stored run (direction 'stored run')",
                               doc="a stored run of the same model and data set")
    mode = param.Selector(objects=["train", "eval"], default="train",
                          label="BN mode (train: batch stats, eval: running stats)")
    examples = param.Integer(default=256, doc="training examples the loss is evaluated on")

    controls = (*ProbeLab.controls, "dims", "grid", "span", "direction", "other_run", "mode",
                "examples")
    title = "landscape"

    def __init__(self, store_root: str | Path | None = "data/runs", **params):
        super().__init__(store_root, **params)
        self.result: pd.DataFrame | None = None
        kw = {"height": 380, "sizing_mode": "stretch_width", "config": {"displaylogo": False}}
        self.line_plot = plotly_pane(line_figure(_EMPTY), **kw)
        self.contour_plot = plotly_pane(contour_figure(_EMPTY), **kw)
        self.surface_plot = plotly_pane(surface_figure(_EMPTY), **kw)
        self.list_stored_runs()

    def clear_results(self) -> None:
        self.result = None
        for plot, f in ((self.line_plot, line_figure), (self.contour_plot, contour_figure),
                        (self.surface_plot, surface_figure)):
            plot.object = f(_EMPTY)

    @param.depends("direction", watch=True)
    def list_stored_runs(self) -> None:
        """The stored runs with weights, newest first, as ``label -> run id`` choices."""
        runs = []
        if self.store is not None and self.direction == "stored run":  # config and meta only
            runs = [run for run in self.store.runs(rows=False)
                    if run.status in ("finished", "cancelled") and self.store.has_weights(run.run_id)]
        runs.sort(key=lambda r: r.started_at, reverse=True)
        self.param.other_run.objects = {_label(r): r.run_id for r in runs}
        if self.other_run not in self.param.other_run.objects.values():
            self.other_run = runs[0].run_id if runs else None

    def validate(self) -> None:
        if not isinstance(self.grid, int) or not 3 <= self.grid <= MAX_GRID:
            raise ValueError(f"grid points per axis must be between 3 and {MAX_GRID}, got {self.grid!r}")
        if not (isinstance(self.span, (int, float)) and 0 < self.span <= 10):
            raise ValueError(f"span must be in (0, 10], got {self.span!r}")
        if not isinstance(self.examples, int) or not 2 <= self.examples <= 2048:
            raise ValueError(f"examples must be between 2 and 2048, got {self.examples!r}")
        if self.direction == "stored run":
            self._check_other_run()

    def _check_other_run(self) -> None:
        """The stored run exists, has weights and the same model and data as this lab's."""
        if self.store is None:
            raise ValueError("direction 'stored run' needs the run store; this server has none")
        if self.other_run is None:
            raise ValueError("no stored run to interpolate toward: train one first (here or in "
                             "the Arena), then pick it under 'Stored run'")
        try:
            other = TrainConfig.from_dict(self.store.get(self.other_run, rows=False).config)
        except KeyError:  # deleted since the list was made
            gone = self.other_run
            self.list_stored_runs()
            raise ValueError(f"stored run {gone} is no longer in the store: pick another under "
                             "'Stored run' (the list is refreshed)") from None
        (_, mine), = self.variants()
        if other.run_id == mine.run_id:
            raise ValueError(f"stored run {self.other_run} is this very configuration: change "
                             "what differs (batch size, optimizer, lr, seed, steps)")
        if (other.model, other.data) != (mine.model, mine.data):
            raise ValueError(f"stored run {self.other_run} has another model or data set "
                             f"({_describe(other)}) than this lab ({_describe(mine)}): the line "
                             "between them needs the same parameters")

    def after(self):
        kw = {}
        if self.direction == "stored run":
            kw = {"other_run": self.other_run, "store_root": str(self.store.root)}
        return functools.partial(landscape_after, examples=self.examples, dims=self.dims,
                                 steps=self.grid, span=float(self.span),
                                 direction="checkpoint" if kw else self.direction,
                                 mode=self.mode, seed=self.seed, **kw)

    def draw_results(self) -> None:
        self.list_stored_runs()  # the run just trained is a choice for the next one
        done = [j for j in self.jobs if j.done and j.extra is not None]
        if not done:
            return
        self.result = done[0].extra
        line = line_figure(self.result)
        # the stored run this job measured toward (its own ``after``), whatever is picked now
        toward = done[0].after.keywords.get("other_run")
        if toward is not None:  # before the pane gets it: it sends what it is given
            line.update_layout(title=f"1-D slice: trained weights (0) to stored run {toward} (1)")
        self.line_plot.object = line
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


_EMPTY = pd.DataFrame({"metric": [], "alpha": [], "beta": [], "value": []})


def _model_and_data(config: dict) -> str:
    m = config.get("model", {})
    size = m.get("width") or m.get("channels") or m.get("d_model")
    depth = m.get("depth") or m.get("stages")
    return f"{m.get('kind')}/{m.get('norm')} w{size} d{depth} · {config.get('data', {}).get('name')}"


def _label(run) -> str:
    c = run.config
    return (f"{run.run_id} · {_model_and_data(c)} · B={c.get('batch_size')} {c.get('optimizer')} "
            f"lr={c.get('lr')}")


def _describe(cfg: TrainConfig) -> str:
    return _model_and_data(cfg.to_dict())


def landscape_app(store_root: str | Path | None = "data/runs", template: bool = True):
    pn.extension("plotly")
    lab = LandscapeLab(store_root=store_root)
    lab.bind_session()
    return page("landscape", lab.view(), template=template)
