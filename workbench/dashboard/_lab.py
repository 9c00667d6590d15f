"""Train-then-measure dashboards (Curvature, Depth, Landscape) share this state class.

A :class:`ProbeLab` trains one or more variants of a small model live (a loss curve per variant,
a progress bar, Stop), optionally measures probes during training (``probe_fns``) and once at the
end (``after``, where it trained), then hands the frames to ``draw_results`` on the event loop.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import panel as pn
import param

from ..models import MODELS
from ..norms import NORMS
from ..train import OPTIMIZERS, TrainConfig
from ..viz.curves import SmoothedCurve, diverged_marker, smoothed_title
from ..viz.lanes import lanes_figure, thin
from ._jobs import (
    DEFAULT_DATA,
    DEFAULT_NORM,
    SLOTS,
    Job,
    check_limits,
    check_model_size,
    data_config,
    datasets_for,
    store_for,
)
from ._session import SessionApp, param_form, plotly_pane


class ProbeLab(SessionApp):
    """Common controls and the job loop; subclasses define variants, probes and drawings."""

    model = param.Selector(objects=list(MODELS), default="mlp")
    norm = param.Selector(objects=list(NORMS), default="batch")
    dataset = param.Selector(objects=datasets_for("mlp"), default="gaussian_mixture")
    width = param.Integer(default=32, doc="MLP width / ConvNet channels / transformer d_model")
    depth = param.Integer(default=2, doc="MLP layers / ConvNet stages / transformer blocks")
    batch_size = param.Integer(default=32)
    optimizer = param.Selector(objects=list(OPTIMIZERS), default="sgd")
    lr = param.Number(default=0.05, label="Learning rate")
    steps = param.Integer(default=100, doc="train to this step, then measure")
    seed = param.Integer(default=0)
    smoothing = param.Number(default=0.9, bounds=(0.0, 0.99), step=0.01,
                             label="Loss smoothing (EMA)",
                             doc="TensorBoard's debiased EMA of the training loss as drawn; 0 draws "
                                 "the raw per-step values")

    controls: tuple[str, ...] = ("model", "norm", "dataset", "width", "depth", "batch_size",
                                 "optimizer", "lr", "steps", "seed")
    # drawn after the subclass's controls: it changes the drawing, not the run
    view_controls: tuple[str, ...] = ("smoothing",)
    title = "lab"

    def __init__(self, store_root: str | Path | None = "data/runs", **params):
        super().__init__(**params)
        self.store = store_for(store_root)
        self.jobs: list[Job] = []
        self.names: list[str] = []
        self._curves: list[SmoothedCurve] = []
        self.probe_frames: list[list[pd.DataFrame]] = []
        self.progress = pn.indicators.Progress(value=0, max=100, sizing_mode="stretch_width",
                                               bar_color="primary")
        self.loss_fig = lanes_figure([], metric="loss", log_y=True, title=self._loss_title())
        self.loss_plot = plotly_pane(self.loss_fig, height=300, sizing_mode="stretch_width",
                                        config={"displaylogo": False})
        self.status.object = "idle: choose a model and press **Train**"

    def _loss_title(self) -> str:
        return smoothed_title("training loss", self.smoothing)

    @param.depends("smoothing", watch=True)
    def _resmooth(self) -> None:
        """Smooth the loss lines again with the new weight and redraw (also after a run)."""
        self.loss_fig.layout.title.text = self._loss_title()
        for i, curve in enumerate(self._curves):
            curve.resmooth(self.smoothing)
            self.loss_fig.data[i].x, self.loss_fig.data[i].y = thin(curve.xs, curve.drawn)
        if self._pending_finish:
            self._dirty = True
        else:
            self.loss_plot.param.trigger("object")

    @param.depends("model", watch=True)
    def _follow_model(self):
        data = datasets_for(self.model)
        self.param.dataset.objects = data
        if self.dataset not in data:
            self.dataset = DEFAULT_DATA[self.model]
        self.norm = DEFAULT_NORM[self.model]

    # -- what subclasses change ----------------------------------------------------------------
    def model_config(self, **overrides):
        kind, w, d = self.model, self.width, self.depth
        kw = {"norm": self.norm, **overrides}
        if kind == "transformer":
            return MODELS[kind][0](d_model=w, depth=d, **kw)
        if kind == "convnet":
            return MODELS[kind][0](channels=w, stages=d, **kw)
        return MODELS[kind][0](width=w, depth=d, **kw)

    def variants(self) -> list[tuple[str, TrainConfig]]:
        """``(name, config)`` per run to train; ValueError with a readable message."""
        cfg = TrainConfig(model=self.model_config(), data=data_config(self.dataset),
                          steps=self.steps, batch_size=self.batch_size, optimizer=self.optimizer,
                          lr=self.lr, seed=self.seed, eval_every=0)
        return [(f"{self.model}/{self.norm} B={self.batch_size}", cfg)]

    def validate(self) -> None:
        """Extra checks of the subclass's own controls (raise ValueError)."""

    def probe_fns(self) -> tuple[dict, int]:
        return {}, 0

    def after(self) -> Callable | None:
        """The step run on the trained model where it trained, ``fn(run, cancel) -> frame``
        (None: none). It must pickle (a module-level function or a ``functools.partial`` of
        one) for the job to train in a process of its own."""
        return None

    def draw_results(self) -> None:
        """Draw ``self.probe_frames`` / the jobs' ``extra`` frames (event loop)."""

    def clear_results(self) -> None:
        """Empty the result figures as a new run starts: a run that ends without a measurement
        (diverged, stopped, failed) must not leave the previous run's on the page."""

    # -- state ---------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._pending_finish

    _pending_finish = False  # started, and refresh() has not yet seen every job end
    _dirty = _measured = False  # new points / measurements not yet drawn
    _next_draw = 0.0  # monotonic time before which refresh() does not redraw

    def start(self) -> bool:
        if self._pending_finish:
            return False
        try:
            check_limits(steps=self.steps, batch_size=self.batch_size, width=self.width,
                         depth=self.depth)
            self.validate()
            variants = self.variants()
            for _, cfg in variants:
                check_model_size(cfg)
        except (ValueError, TypeError) as exc:
            self.show_error(str(exc))
            self.status.object = "not started: fix the value above"
            return False
        self.clear_error()
        probes, every_n = self.probe_fns()
        after = self.after()
        self.clear_results()
        self.names = [n for n, _ in variants]
        self._curves = [SmoothedCurve(self.smoothing) for _ in variants]
        self.probe_frames = [[] for _ in variants]
        self.loss_fig = lanes_figure(self.names, metric="loss", log_y=True, title=self._loss_title())
        self.loss_plot.object = self.loss_fig
        self.progress.max = sum(c.steps for _, c in variants)
        self.progress.value = 0
        self.jobs = [Job(cfg, probes=probes, probe_every=every_n, store=self.store, after=after)
                     for _, cfg in variants]
        self._pending_finish = True
        for job in self.jobs:
            job.start()
        self.status.object = "training…"
        self.train_button.disabled, self.stop_button.disabled = True, False
        self.start_periodic()
        return True

    def stop(self) -> None:
        for job in self.jobs:
            job.cancel()
        if self._pending_finish:
            self.status.object = "stopping…"

    def join(self, timeout: float = 120.0) -> None:
        for job in self.jobs:
            job.join(timeout)

    def refresh(self) -> None:
        if not self._pending_finish:
            self.stop_periodic()
            return
        changed = measured = False
        done_steps = 0
        for i, job in enumerate(self.jobs):
            points, frames = job.drain()
            curve = self._curves[i]
            for step, m in points:
                if math.isfinite(m["loss"]):
                    curve.add(step, m["loss"])
            changed |= bool(points)
            measured |= bool(frames)
            self.probe_frames[i].extend(frames)
            self.loss_fig.data[i].x, self.loss_fig.data[i].y = thin(curve.xs, curve.drawn)
            done_steps += (curve.xs[-1] + 1) if curve.xs else 0
        self.progress.value = min(done_steps, self.progress.max)
        states = {j.state for j in self.jobs}
        if any(j.cancel_token.cancelled for j in self.jobs):
            self.status.object = "stopping…"
        elif "queued" in states:
            self.status.object = SLOTS.describe()
        elif "probing" in states:
            self.status.object = "measuring the trained model… (Stop ends the measurement)"
        elif changed:
            self.status.object = f"training… {done_steps}/{self.progress.max} steps"
        if all(j.done for j in self.jobs):
            self._finish()
            return
        self._dirty |= changed
        self._measured |= measured
        if (self._dirty or self._measured) and time.monotonic() >= self._next_draw:
            t0 = time.monotonic()
            if self._measured:  # probe figures are rebuilt only when new measurements arrived
                self.draw_results()
            self.loss_plot.param.trigger("object")
            self._dirty = self._measured = False
            # back off under load: the event loop stays free at least half the time (counted
            # from the draw's start, as in the Arena: a slow draw then skips no extra tick)
            self._next_draw = t0 + 2 * (time.monotonic() - t0)

    def _finish(self) -> None:
        self._pending_finish = False
        self.stop_periodic()
        self.train_button.disabled, self.stop_button.disabled = False, True
        notes = []
        for i, job in enumerate(self.jobs):
            run = job.result
            if run.status == "diverged":
                step = run.diverged_step if run.diverged_step is not None else run.steps_done
                ys = self._curves[i].drawn  # at the end of the line drawn
                self.loss_fig.add_trace(diverged_marker(step, ys[-1] if ys else 1.0,
                                                        name=f"{self.names[i]}: diverged at step {step}"))
                notes.append(f"{self.names[i]} diverged at step {step}")
            elif run.status == "failed":
                self.show_error(f"{self.names[i]} failed: {run.error}")
                notes.append(f"{self.names[i]} failed")
            elif run.status == "cancelled":
                notes.append(f"{self.names[i]} cancelled at step {run.steps_done}")
            elif job.error:
                self.show_error(f"measuring {self.names[i]} failed: {job.error}")
            elif job.measurement_stopped:
                kept = f" and {job.saved}" if job.saved else ""
                notes.append(f"{self.names[i]} trained{kept}; its measurement was stopped")
        if all(j.result.status == "finished" for j in self.jobs):
            self.progress.value = self.progress.max
            if not any(j.measurement_stopped for j in self.jobs):
                notes.append("finished")
        self.draw_results()
        self.loss_plot.param.trigger("object")
        self.status.object = "done: " + "; ".join(notes)

    # -- layout --------------------------------------------------------------------------------
    def results_view(self) -> pn.viewable.Viewable:
        return pn.Column()

    def widgets(self) -> dict:
        return {"width": pn.widgets.IntInput, "depth": pn.widgets.IntInput,
                "batch_size": pn.widgets.IntInput, "steps": pn.widgets.IntInput,
                "seed": pn.widgets.IntInput, "lr": pn.widgets.FloatInput}

    def view(self) -> pn.viewable.Viewable:
        form = param_form(self, [*self.controls, *self.view_controls], self.widgets())
        return pn.Row(
            pn.Column(form, pn.Row(self.train_button, self.stop_button)),
            pn.Column(self.alert, self.status, self.progress, self.loss_plot, self.results_view(),
                      sizing_mode="stretch_width"),
            sizing_mode="stretch_width")
