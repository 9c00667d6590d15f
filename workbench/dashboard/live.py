"""Live training: pick a model, norm, data set and batch size, train it, watch the loss stream in.

State lives in :class:`LiveTraining` and is testable without a browser: ``start()`` builds a
``TrainConfig`` (its ValueError becomes a message on the page) and hands it to a
:class:`~._jobs.Job` (a worker thread that trains in a process of its own, as in the other
dashboards), which only appends to a locked buffer; ``refresh()``, run every 200 ms on the
session's event loop, moves buffered points into the plot, progress bar and status. The event
loop never trains, and the worker never touches a widget.
"""
from __future__ import annotations

import math
from pathlib import Path

import panel as pn
import param

from ..models import MODELS
from ..store import RunStore
from ..train import OPTIMIZERS, TrainConfig
from ..viz.curves import diverged_marker, live_loss_figure, set_log_y
from ..viz.lanes import thin

# Helpers, limits and the server-wide training slots are shared with the other dashboards.
from ._jobs import (  # noqa: E402
    DEFAULT_DATA,
    DEFAULT_NORM,
    MAX_STEPS,
    Job,
    add_test_points,
    check_limits,
    check_model_size,
    data_config,
    datasets_for,
    eval_every,
    eval_points,
    norms_for,
)
from ._session import FORM_WIDTH, Form, SessionApp, plotly_pane  # noqa: E402


class LiveTraining(SessionApp):
    """Train one model live and plot its loss; one instance per browser session."""

    model = param.Selector(objects=list(MODELS), default="mlp", doc="model family")
    norm = param.Selector(objects=norms_for("mlp"), default="batch",
                          doc="normalization layer (only those valid for the model)")
    dataset = param.Selector(objects=datasets_for("mlp"), default="gaussian_mixture",
                             doc="data set (only those the model can take)")
    batch_size = param.Integer(default=32, doc="examples per step")
    steps = param.Integer(default=200, doc=f"optimizer steps (at most {MAX_STEPS})")
    optimizer = param.Selector(objects=list(OPTIMIZERS), default="sgd")
    lr = param.Number(default=0.05, label="Learning rate", doc="learning rate")
    seed = param.Integer(default=0)
    log_y = param.Boolean(default=True, label="Log-scale loss axis")

    def __init__(self, store_root: str | Path | None = "data/runs", **params):
        super().__init__(**params)
        self.store = RunStore(store_root) if store_root is not None else None
        self._job: Job | None = None
        self._xs: list[int] = []
        self._ys: list[float] = []
        self._config: TrainConfig | None = None

        self.figure = live_loss_figure(log_y=self.log_y)
        self._tests: tuple[list, list] = ([], [])  # (steps, test losses), as evaluated
        self.plot = plotly_pane(self.figure, height=380)
        self.progress = pn.indicators.Progress(value=0, max=self.steps, bar_color="primary",
                                               sizing_mode="stretch_width")
        self.status.object = "idle: choose a model and press **Train**"
        self.controls = Form(
            self, parameters=["model", "norm", "dataset", "batch_size", "steps", "optimizer", "lr",
                              "seed", "log_y"],
            widgets={"batch_size": pn.widgets.IntInput, "steps": pn.widgets.IntInput,
                     "lr": pn.widgets.FloatInput, "seed": pn.widgets.IntInput},
            show_name=False, width=FORM_WIDTH)

    # -- choices follow the model --------------------------------------------------------------
    @param.depends("model", watch=True)
    def _update_choices(self):
        norms, data = norms_for(self.model), datasets_for(self.model)
        self.param.norm.objects = norms
        self.param.dataset.objects = data
        with param.parameterized.batch_call_watchers(self):
            if self.norm not in norms:
                self.norm = DEFAULT_NORM[self.model] if DEFAULT_NORM[self.model] in norms else norms[0]
            if self.dataset not in data:
                self.dataset = DEFAULT_DATA[self.model]

    @param.depends("log_y", watch=True)
    def _update_axis(self):
        set_log_y(self.figure, self.log_y)
        self.plot.param.trigger("object")

    # -- state ---------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """A run was started and ``refresh()`` has not yet seen it end."""
        return self._job is not None

    def build_config(self) -> TrainConfig:
        """The run the controls describe; raises ValueError with a readable message."""
        check_limits(steps=self.steps, batch_size=self.batch_size)
        model_cfg = MODELS[self.model][0](norm=self.norm)
        return check_model_size(TrainConfig(
            model=model_cfg, data=data_config(self.dataset), steps=self.steps,
            batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr, seed=self.seed,
            eval_every=eval_every(self.steps)))

    def start(self) -> bool:
        """Validate the controls and start a training Job; False if it did not start."""
        if self.running:
            return False
        try:
            cfg = self.build_config()
        except (ValueError, TypeError) as exc:
            self.show_error(str(exc))
            self.status.object = "not started: fix the value above"
            return False
        job = Job(cfg, store=self.store)
        if not job.reserve():
            self.show_error(f"all {job.slots.capacity} training slots on this server are busy; "
                             "press Train again when one frees up")
            return False
        self.clear_error()
        self._config = cfg
        self._xs, self._ys = [], []
        self._tests = ([], [])
        self.figure = live_loss_figure(log_y=self.log_y,
                                       title=f"loss: {self.model}/{self.norm}, {self.dataset}, "
                                             f"batch {self.batch_size}, {self.optimizer} lr {self.lr:g}")
        self.plot.object = self.figure
        self.progress.max, self.progress.value = cfg.steps, 0
        self.status.object = f"training… run `{cfg.run_id}`"
        self.train_button.disabled, self.stop_button.disabled = True, False
        job.start()  # on failure it gives the slot back itself
        self._job = job
        self.start_periodic()
        return True

    def stop(self) -> None:
        """Ask the worker to stop; it ends before its next step (well within a second)."""
        if self._job is not None:
            self._job.cancel()
            self.status.object = "stopping…"

    def join(self, timeout: float | None = None) -> None:
        """Wait for the worker (tests and scripts; never call this on the event loop)."""
        if self._job is not None:
            self._job.join(timeout)

    # -- event loop ----------------------------------------------------------------------------
    def refresh(self) -> None:
        """Move buffered points into the plot, progress bar and status (on the session's loop)."""
        job = self._job
        if job is None:
            return
        done = job.done  # read first: a finished job's buffer is complete
        points, _ = job.drain()
        if points:
            for step, metrics in points:
                loss = metrics["loss"]
                if math.isfinite(loss):  # NaN/inf are not JSON; divergence gets a marker instead
                    self._xs.append(step)
                    self._ys.append(loss)
            add_test_points(points, "loss", self._tests)
            trace = self.figure.data[0]
            trace.x, trace.y = thin(self._xs, self._ys)
            self.figure.data[1].x, self.figure.data[1].y = self._tests
            step, metrics = points[-1]
            self.progress.value = min(step + 1, self.progress.max)
            if not done and not job.cancel_token.cancelled:
                self.status.object = (f"training… step {step + 1}/{self.progress.max}, "
                                      f"loss {metrics['loss']:.4g}")
            self.plot.param.trigger("object")  # sends the whole figure: only when it changed
        if done:
            self._finish(job.result, job.saved)

    def _finish(self, run, saved: str | None) -> None:
        self._job = None
        self.stop_periodic()
        self.train_button.disabled, self.stop_button.disabled = False, True
        note = f" ({saved})" if saved else ""
        steps, tested = eval_points(run, "loss")
        if tested:  # every evaluation, the one after the last step too
            self.figure.data[1].x, self.figure.data[1].y = steps, tested
            self.plot.param.trigger("object")
        if run.status == "finished":
            self.progress.value = self.progress.max
            test = f", test loss {tested[-1]:.4g}" if tested else ""
            self.status.object = (f"finished: final loss {run.final('loss'):.4g}{test} after "
                                  f"{run.steps_done} steps in {run.wall_time:.1f} s{note}")
        elif run.status == "diverged":
            step = run.diverged_step if run.diverged_step is not None else run.steps_done
            y = self._ys[-1] if self._ys else 1.0
            self.figure.add_trace(diverged_marker(step, y, name=f"diverged at step {step}"))
            self.plot.param.trigger("object")
            self.status.object = f"diverged at step {step}: the loss became NaN/inf{note}"
        elif run.status == "cancelled":
            self.status.object = f"cancelled at step {run.steps_done}"
        else:
            self.show_error(f"training failed: {run.error}")
            self.status.object = f"failed at step {run.steps_done}"

    # -- layout --------------------------------------------------------------------------------
    def view(self) -> pn.viewable.Viewable:
        self.bind_session()
        return pn.Row(
            pn.Column(self.controls, pn.Row(self.train_button, self.stop_button)),
            pn.Column(self.alert, self.status, self.progress, self.plot,
                      sizing_mode="stretch_width"),
            sizing_mode="stretch_width")

    def __panel__(self) -> pn.viewable.Viewable:
        return self.view()


def live_app(store_root: str | Path | None = "data/runs", autostart: bool | None = None,
             template: bool = True):
    """The served page: a LiveTraining in a template; ``?autostart=1`` starts a run on load."""
    pn.extension("plotly")
    live = LiveTraining(store_root=store_root)
    if autostart is None:
        autostart = pn.state.session_args.get("autostart", [b""])[0] in (b"1", b"true", b"yes")
    if autostart:
        pn.state.onload(live.start)
    if not template:
        return live.view()
    return pn.template.FastListTemplate(title="Normlab: live training", main=[live.view()],
                                        main_max_width="1400px", theme_toggle=False)


def wait_for(live: LiveTraining, timeout: float = 60.0) -> None:
    """Join the worker, then ``refresh()``: the synchronous path for tests and notebooks."""
    live.join(timeout)
    if live._job is not None and live._job.thread.is_alive():
        raise TimeoutError(f"training still running after {timeout} s")
    live.refresh()


def serve_live(port: int, *, store_root: str | Path | None = None, address: str = "127.0.0.1"):
    """Serve every dashboard (``/train_app``, ``/arena``, ``/runs`` ...) from a background thread.

    Returns Panel's server thread; call ``.stop()`` on it. ``/liveness`` answers once it is up.
    """
    from .server import serve_apps

    return serve_apps(port, store_root=store_root, address=address)

