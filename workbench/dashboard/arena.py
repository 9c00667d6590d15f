"""Arena: up to four strategies trained side by side, live, with probes drawn as they arrive.

State: :class:`Lane` (one strategy, a ``param.Parameterized`` turned into a ``TrainConfig``) and
:class:`Arena` (shared settings, presets, the jobs and the figures). ``start()`` validates every
enabled lane (a bad one gives a message naming the lane; nothing starts), then starts one
:class:`~._jobs.Job` per lane; ``refresh()`` moves what the workers buffered into the figures,
progress bars and status lines. A diverged lane gets a red ``x`` and the others go on.
Each lane's test-set loss and accuracy (evaluated up to ``TESTS_PER_RUN`` times per run, in eval
mode) are drawn dashed next to its smoothed training curves: the claims about generalization
(BatchNorm at micro-batch 1, large batches) show only there.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import panel as pn
import param

from ..models import MODELS
from ..norms import NORMS
from ..train import OPTIMIZERS, TrainConfig
from ..train.schedules import BATCH_SCHEDULES, LR_DECAY, LR_SCALING
from ..viz.curves import SmoothedCurve, diverged_marker, set_log_y, smoothed_title
from ..viz.lanes import lanes_figure, probe_summary, probes_figure, thin
from ._jobs import (
    DEFAULT_DATA,
    DEFAULT_NORM,
    MAX_STEPS,
    SLOTS,
    Job,
    add_test_points,
    check_limits,
    check_model_size,
    data_config,
    datasets_for,
    eval_every,
    eval_points,
    store_for,
)
from ._session import FORM_WIDTH, Form, SessionApp, page, param_form, plotly_pane
from .presets import PRESETS

PLACEMENTS = ("pre", "post", "mix", "ln_scaling")
ARENA_PROBES = ("smoothness_small", "hessian_top_eigs", "depth_variance", "channel_health")
# Cheap budgets for live probes: a probe step should cost a few training steps, not hundreds.
PROBE_BUDGET = {"hessian_top_eigs": {"max_iter": 20, "tol": 1e-2}}
ROW_PROBE = {"smoothness_small": "smoothness"}  # the probe column of a choice's rows
NUM_LANES = 4
CURVES = ("loss", "accuracy")


def _residual(cfg: TrainConfig) -> bool:
    """Whether the run's model has residual blocks (what the depth-variance probe needs)."""
    return cfg.model.kind != "mlp" or bool(getattr(cfg.model, "residual", False))


def probe_fns(names) -> dict:
    """``{name: fn}`` for the chosen probes that exist (imported lazily: a missing one is skipped)."""
    import functools

    try:
        from ..probes import PROBES
    except Exception:  # noqa: BLE001  (a half-written probe module must not break the app)
        return {}
    # the registered functions themselves where there is no budget, so that the trainer runs
    # channel health and smoothness together inside the step
    return {n: functools.partial(PROBES[n], **PROBE_BUDGET[n]) if n in PROBE_BUDGET else PROBES[n]
            for n in names if n in PROBES}


class Lane(param.Parameterized):
    """One strategy: model, norm, WS, batch (+ micro-batch), optimizer, LR rule, seed."""

    enabled = param.Boolean(default=True, label="Train this lane")
    label = param.String(default="", doc="name on the plots (empty: described from the settings)")
    model = param.Selector(objects=list(MODELS), default="mlp")
    norm = param.Selector(objects=list(NORMS), default="batch")
    ws = param.Boolean(default=False, label="Weight standardization")
    residual = param.Boolean(default=False, label="Residual MLP",
                             doc="MLP blocks x + linear(act(norm(x))) (pre-norm), as the depth "
                                 "probes need; the ConvNet and transformer are residual already")
    virtual_batch = param.Integer(default=8, label="Ghost BN virtual batch")
    placement = param.Selector(objects=list(PLACEMENTS), default="pre", label="LN placement")
    dataset = param.Selector(objects=datasets_for("mlp"), default="gaussian_mixture")
    batch_size = param.Integer(default=32)
    micro_batch = param.Integer(default=0, label="Micro-batch (0: none)")
    batch_schedule = param.Selector(objects=list(BATCH_SCHEDULES), default="constant",
                                    label="Batch-size schedule",
                                    doc="constant; step: doubles every 'Grow every' steps; "
                                        "norm_test: grows when gradient noise dominates "
                                        "(Byrd et al.), tested every 10 steps")
    max_batch = param.Integer(default=256, label="Largest batch (growth)")
    growth_every = param.Integer(default=50, label="Grow every (steps, 'step' schedule)")
    optimizer = param.Selector(objects=list(OPTIMIZERS), default="sgd")
    lr = param.Number(default=0.05, label="Learning rate")
    lr_scaling = param.Selector(objects=list(LR_SCALING), default="none", label="LR scaling")
    warmup_steps = param.Integer(default=0)
    lr_decay = param.Selector(objects=list(LR_DECAY), default="constant", label="LR decay")
    seed = param.Integer(default=0)

    @param.depends("model", watch=True)
    def _follow_model(self):
        data = datasets_for(self.model)
        self.param.dataset.objects = data
        if self.dataset not in data:
            self.dataset = DEFAULT_DATA[self.model]
        self.norm = DEFAULT_NORM[self.model]

    def describe(self) -> str:
        if self.label:
            return self.label
        bits = [self.model + ("-res" if self.residual and self.model == "mlp" else ""),
                self.norm + ("+WS" if self.ws else "")]
        if self.model == "transformer":
            bits.append(self.placement)
        mb = f"/{self.micro_batch}" if self.micro_batch else ""
        if self.batch_schedule != "constant":  # B=32→256 (step) or B=32→≤256 (norm test)
            mb += f"→{'' if self.batch_schedule == 'step' else '≤'}{self.max_batch}"
        seed = f" seed {self.seed}" if self.seed else ""  # lanes that differ only by seed
        return f"{' '.join(bits)} B={self.batch_size}{mb} {self.optimizer} {self.lr:g}{seed}"

    def build(self, *, steps: int, width: int, depth: int) -> TrainConfig:
        """The run this lane describes; ValueError with a readable message otherwise."""
        check_limits(steps=steps, batch_size=self.batch_size, width=width, depth=depth)
        if not isinstance(self.warmup_steps, int) or not 0 <= self.warmup_steps <= steps:
            raise ValueError(f"warmup steps must be between 0 and steps={steps}, "
                             f"got {self.warmup_steps!r}")
        growth = {}
        if self.batch_schedule != "constant":
            check_limits(batch_size=self.max_batch)
            if self.max_batch <= self.batch_size:
                raise ValueError(f"a growing batch needs 'Largest batch' above the batch size "
                                 f"{self.batch_size}, got {self.max_batch}")
            growth = {"batch_schedule": self.batch_schedule, "max_batch_size": self.max_batch,
                      "growth_every": self.growth_every}
        options = {"virtual_batch_size": self.virtual_batch} if self.norm == "ghost_batch" else {}
        if self.model == "transformer":
            if self.ws:
                raise ValueError("weight standardization applies to MLP and ConvNet weights, "
                                 "not to a transformer; untick it or pick mlp/convnet")
            model = MODELS["transformer"][0](norm=self.norm, norm_options=options, depth=depth,
                                             d_model=width, placement=self.placement)
        elif self.model == "convnet":
            model = MODELS["convnet"][0](norm=self.norm, norm_options=options, ws=self.ws,
                                         channels=width, stages=depth)
        else:
            model = MODELS["mlp"][0](norm=self.norm, norm_options=options, ws=self.ws,
                                     width=width, depth=depth, residual=self.residual)
        cfg = TrainConfig(model=model, data=data_config(self.dataset), steps=steps,
                          batch_size=self.batch_size, micro_batch=self.micro_batch or None,
                          optimizer=self.optimizer, lr=self.lr, lr_scaling=self.lr_scaling,
                          warmup_steps=self.warmup_steps, lr_decay=self.lr_decay, seed=self.seed,
                          eval_every=eval_every(steps), **growth)
        return check_model_size(cfg)


class Arena(SessionApp):
    """Up to four lanes trained live; one instance per browser session."""

    preset = param.Selector(objects=["custom", *PRESETS], default="custom")
    steps = param.Integer(default=200, doc=f"optimizer steps per lane (at most {MAX_STEPS})")
    width = param.Integer(default=32, doc="MLP width / ConvNet channels / transformer d_model")
    depth = param.Integer(default=2, doc="MLP layers / ConvNet stages / transformer blocks")
    probes = param.ListSelector(default=[], objects=list(ARENA_PROBES), label="Probes")
    probe_every = param.Integer(default=20, doc="steps between probe measurements")
    log_y = param.Boolean(default=True, label="Log-scale loss axis")
    smoothing = param.Number(default=0.9, bounds=(0.0, 0.99), step=0.01,
                             label="Smoothing (EMA of the per-step curves)",
                             doc="TensorBoard's debiased EMA; 0 draws the raw per-step values, "
                                 "which at small batch sizes are mostly noise")

    def __init__(self, store_root: str | Path | None = "data/runs", **params):
        super().__init__(**params)
        self.store = store_for(store_root)
        self.lanes = [Lane(name=f"lane{i}", enabled=i < 2, seed=i) for i in range(NUM_LANES)]
        self.jobs: list[Job | None] = [None] * NUM_LANES
        self.progress = [pn.indicators.Progress(value=0, max=100, sizing_mode="stretch_width",
                                                bar_color="primary") for _ in range(NUM_LANES)]
        self.lane_status = [pn.pane.Markdown("", sizing_mode="stretch_width")
                            for _ in range(NUM_LANES)]
        self.status.object = "idle: set up the lanes (or pick a preset) and press **Train**"
        self.preset_doc = pn.pane.Markdown("", sizing_mode="stretch_width")
        self._curves: list[dict[str, SmoothedCurve]] = [{} for _ in range(NUM_LANES)]  # lane -> metric
        # lane -> metric -> (steps, values) on the test set, as evaluated (never smoothed)
        self._tests: list[dict[str, tuple[list, list]]] = [{} for _ in range(NUM_LANES)]
        self._probe_frames: list[list] = [[] for _ in range(NUM_LANES)]
        self._probes_new = [False] * NUM_LANES  # frames arrived since the probe plot was drawn
        self._dirty, self._next_draw, self._next_slow = False, 0.0, 0.0
        self._last: list[tuple[int, dict] | None] = [None] * NUM_LANES  # latest (step, metrics)
        self._names: list[str] = [""] * NUM_LANES  # captured at start: lanes may be edited later
        self._note = ""  # what the status line adds for the whole run
        self.loss_fig = lanes_figure([], metric="loss", log_y=self.log_y)
        self.acc_fig = lanes_figure([], metric="accuracy")
        self.probe_fig = probes_figure([], [])
        self._drawn_probes: list[str] = []
        kw = {"height": 330, "sizing_mode": "stretch_width", "config": {"displaylogo": False}}
        self.loss_plot, self.acc_plot, self.probe_plot = (
            plotly_pane(f, **kw) for f in (self.loss_fig, self.acc_fig, self.probe_fig))

    # -- presets -------------------------------------------------------------------------------
    @param.depends("preset", watch=True)
    def apply_preset(self) -> None:
        spec = PRESETS.get(self.preset)
        if spec is None:
            self.preset_doc.object = ""
            return
        # probes and their interval are the preset's, or none and the default
        self.param.update(**{"probes": [], "probe_every": self.param.probe_every.default,
                             **spec["shared"]})
        for i, lane in enumerate(self.lanes):
            settings = spec["lanes"][i] if i < len(spec["lanes"]) else None
            defaults = {k: p.default for k, p in lane.param.objects().items() if k != "name"}
            lane.model = (settings or {}).get("model", "mlp")  # first: it resets dataset/norm
            lane.param.update(**{**defaults, "seed": 0, **(settings or {}), "enabled": settings is not None})
        self.preset_doc.object = spec["doc"]

    # -- state ---------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return any(j is not None for j in self.jobs)

    def build_configs(self) -> list[tuple[int, TrainConfig]]:
        """``(lane index, config)`` for every enabled lane; ValueError names the lane at fault."""
        if not isinstance(self.probe_every, int) or self.probe_every < 1:
            raise ValueError(f"probe every must be a positive number of steps, got {self.probe_every!r}")
        out = []
        for i, lane in enumerate(self.lanes):
            if not lane.enabled:
                continue
            try:
                out.append((i, lane.build(steps=self.steps, width=self.width, depth=self.depth)))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"lane {i + 1} ({lane.describe()}): {exc}") from None
        if not out:
            raise ValueError("no lane is enabled: tick 'Train this lane' on at least one")
        first: dict[str, int] = {}
        for i, cfg in out:  # a seeded run repeats exactly: the same curves, one stored run
            j = first.setdefault(cfg.run_id, i)
            if j != i:
                raise ValueError(f"lanes {j + 1} and {i + 1} have the same settings, so they would "
                                 "train the same run twice (training is seeded): change one, e.g. "
                                 "its seed, or turn it off")
        return out

    def start(self) -> bool:
        """Validate the lanes and start one worker per enabled lane; False if nothing started."""
        if self.running:
            return False
        try:
            configs = self.build_configs()
        except ValueError as exc:
            self.show_error(str(exc))
            self.status.object = "not started: fix the value above"
            return False
        self.clear_error()
        names = self._names = [lane.describe() for lane in self.lanes]
        self.loss_fig = lanes_figure(names, metric="loss", log_y=self.log_y, test=True)
        self.acc_fig = lanes_figure(names, metric="accuracy", test=True)
        self._title_curves()
        self._drawn_probes = [p for p in ARENA_PROBES if p in self.probes]
        self.probe_fig = probes_figure(names, self._drawn_probes)
        self.probe_plot.height = max(330, self.probe_fig.layout.height)
        self.loss_plot.object, self.acc_plot.object, self.probe_plot.object = (
            self.loss_fig, self.acc_fig, self.probe_fig)
        probes = probe_fns(self.probes)
        skipped = [i for i, cfg in configs if "depth_variance" in probes and not _residual(cfg)]
        self._note = (f" (depth variance is not measured on lane(s) "
                      f"{', '.join(str(i + 1) for i in skipped)}: a plain MLP has no residual "
                      "blocks; tick 'Residual MLP')") if skipped else ""
        for i, cfg in configs:
            self._curves[i] = {m: SmoothedCurve(self.smoothing) for m in CURVES}
            self._tests[i] = {m: ([], []) for m in CURVES}
            self._last[i] = None
            self._probe_frames[i], self._probes_new[i] = [], False
            self.progress[i].max, self.progress[i].value = cfg.steps, 0
            self.lane_status[i].object = f"**{names[i]}**: waiting to start"
            mine = {n: f for n, f in probes.items() if n != "depth_variance" or i not in skipped}
            job = Job(cfg, probes=mine, probe_every=self.probe_every, store=self.store,
                      label=names[i])
            self.jobs[i] = job
            job.start()
        for i in set(range(NUM_LANES)) - {i for i, _ in configs}:  # off: nothing of the last run
            self.lane_status[i].object, self.progress[i].value = "", 0
            self._curves[i], self._tests[i], self._last[i] = {}, {}, None
            self._probe_frames[i], self._probes_new[i] = [], False
        self.status.object = f"training {len(configs)} lane(s)…{self._note}"
        self.train_button.disabled, self.stop_button.disabled = True, False
        self.start_periodic()
        return True

    def stop(self) -> None:
        """Cancel every lane; each ends before its next step (well within a second)."""
        for job in self.jobs:
            if job is not None:
                job.cancel()
        if self.running:
            self.status.object = "stopping…"

    def join(self, timeout: float = 60.0) -> None:
        for job in self.jobs:
            if job is not None:
                job.join(timeout)

    def _title_curves(self) -> None:
        for fig, metric in ((self.loss_fig, "loss"), (self.acc_fig, "accuracy")):
            fig.layout.title.text = smoothed_title(metric, self.smoothing) + "; dashed: test set"

    @param.depends("log_y", watch=True)
    def _log_axis(self) -> None:
        set_log_y(self.loss_fig, self.log_y)
        self.loss_plot.param.trigger("object")

    @param.depends("smoothing", watch=True)
    def _resmooth(self) -> None:
        """Smooth every curve again with the new weight and redraw (also after a run)."""
        for curves in self._curves:
            for curve in curves.values():
                curve.resmooth(self.smoothing)
        self._title_curves()
        if self.running:
            self._dirty = True
        else:
            self._draw()

    # -- event loop ----------------------------------------------------------------------------
    def refresh(self) -> None:
        """Move buffered points into the figures, bars and status lines."""
        changed = False
        for i, job in enumerate(self.jobs):
            if job is None:
                continue
            done = job.done  # read first: a finished job's buffer is complete
            points, frames = job.drain()
            if points:
                changed = True
                for metric, curve in self._curves[i].items():
                    for step, m in points:
                        v = m.get(metric)
                        if v is not None and math.isfinite(v):
                            curve.add(step, v)
                    add_test_points(points, metric, self._tests[i][metric])
                self._last[i] = points[-1]  # bar and status line: once a second, in _draw
            elif job.state == "queued":
                self.lane_status[i].object = f"**{self._names[i]}**: {SLOTS.describe()}"
            if frames:
                changed = True
                self._probe_frames[i].extend(frames)
                self._probes_new[i] = True
            if done:
                self._finish_lane(i, job)
                changed = True
        self._dirty |= changed
        if self._dirty and (not self.running or time.monotonic() >= self._next_draw):
            self._draw()
        if not self.running:
            self.stop_periodic()

    def _draw(self) -> None:
        """Redraw; the next redraw starts no sooner than twice this one's time after its start
        (see ``_next_draw``)."""
        import pandas as pd

        t0 = time.monotonic()
        slow = not self.running or t0 >= self._next_slow  # accuracy, probes: 1/s
        new_probes = slow and any(self._probes_new)
        for i in range(NUM_LANES):
            if slow and self._last[i] is not None and self.jobs[i] is not None:
                step, metrics = self._last[i]
                self.progress[i].value = min(step + 1, self.progress[i].max)
                grows = self.jobs[i].cfg.batch_schedule != "constant"
                size = f", batch {metrics['batch_size']}" if grows else ""
                self.lane_status[i].object = (f"**{self._names[i]}**: step "
                                              f"{step + 1}/{self.progress[i].max}, "
                                              f"loss {metrics['loss']:.4g}{size}")
            # the accuracy figure is sent once a second: its traces are set only then
            figures = [(self.loss_fig, "loss")] + ([(self.acc_fig, "accuracy")] if slow else [])
            for fig, metric in figures:
                curve = self._curves[i].get(metric)
                if curve is not None and i < len(fig.data):
                    fig.data[i].x, fig.data[i].y = thin(curve.xs, curve.drawn)
                tested = self._tests[i].get(metric)
                if tested is not None and NUM_LANES + i < len(fig.data):
                    fig.data[NUM_LANES + i].x, fig.data[NUM_LANES + i].y = tested
            if slow and self._probes_new[i]:
                self._probes_new[i] = False
                frame = pd.concat(self._probe_frames[i], ignore_index=True)
                self._probe_frames[i] = [frame]  # concatenated once, not on every redraw
                for r, probe in enumerate(self._drawn_probes):
                    trace = self.probe_fig.data[r * NUM_LANES + i]
                    s = probe_summary(frame[frame["probe"] == ROW_PROBE.get(probe, probe)])
                    trace.x, trace.y = s["step"].tolist(), s["value"].tolist()
        # a figure is sent whole when triggered (tens of ms each): the probes' only when new
        # frames came in since their last draw
        plots = [self.loss_plot] + ([self.acc_plot] if slow else [])
        for plot in plots + ([self.probe_plot] if new_probes else []):
            plot.param.trigger("object")
        if slow:
            self._next_slow = time.monotonic() + 1.0
        self._dirty = False
        # Under load (several lanes on few cores) a redraw can take 100+ ms of the event loop;
        # backing off keeps the loop free at least half the time, so Stop and typing stay
        # responsive. (Counted from the end of the draw, a 1/s accuracy redraw of ~100 ms
        # skipped the next 200 ms tick of the loss curve too: 3.8 updates/s instead of 5.)
        self._next_draw = t0 + 2 * (time.monotonic() - t0)

    def _finish_lane(self, i: int, job: Job) -> None:
        self.jobs[i] = None
        run, name = job.result, self._names[i]
        note = f" ({job.saved})" if job.saved else ""
        if len(run.frame) and self._tests[i]:  # every evaluation, the one after the last step too
            self._tests[i] = {metric: eval_points(run, metric) for metric in CURVES}
        self.progress[i].value = min(run.steps_done, self.progress[i].max)
        if run.status == "finished":
            self.progress[i].value = self.progress[i].max
            test = ""
            for metric in ("accuracy", "loss"):  # the test accuracy where the data set has one
                values = self._tests[i].get(metric, ([], []))[1]
                if values:
                    test = f", test {metric} {values[-1]:.4g}"
                    break
            self.lane_status[i].object = (f"**{name}**: finished, final loss {run.final('loss'):.4g}"
                                          f"{test} in {run.wall_time:.1f} s{note}")
        elif run.status == "diverged":
            step = run.diverged_step if run.diverged_step is not None else run.steps_done
            ys = self._curves[i]["loss"].drawn  # at the end of the line drawn
            self.loss_fig.add_trace(diverged_marker(step, ys[-1] if ys else 1.0,
                                                    name=f"{name}: diverged at step {step}"))
            self.lane_status[i].object = f"**{name}**: diverged at step {step} (loss NaN/inf){note}"
        elif run.status == "cancelled":
            self.lane_status[i].object = f"**{name}**: cancelled at step {run.steps_done}"
        else:
            self.show_error(f"lane {i + 1} ({name}) failed: {run.error}")
            self.lane_status[i].object = f"**{name}**: failed at step {run.steps_done}"
        if not self.running:
            self.train_button.disabled, self.stop_button.disabled = False, True
            self.status.object = f"done: every lane has ended{self._note}"

    # -- layout --------------------------------------------------------------------------------
    def view(self) -> pn.viewable.Viewable:
        shared = param_form(self, ["preset", "steps", "width", "depth", "probes", "probe_every",
                                   "log_y", "smoothing"],
                            {"steps": pn.widgets.IntInput, "width": pn.widgets.IntInput,
                             "depth": pn.widgets.IntInput, "probe_every": pn.widgets.IntInput,
                             "probes": pn.widgets.CheckBoxGroup})
        cards = []
        for i, lane in enumerate(self.lanes):
            form = Form(lane, show_name=False, sizing_mode="stretch_width", widgets={
                "batch_size": pn.widgets.IntInput, "micro_batch": pn.widgets.IntInput,
                "max_batch": pn.widgets.IntInput, "growth_every": pn.widgets.IntInput,
                "virtual_batch": pn.widgets.IntInput, "warmup_steps": pn.widgets.IntInput,
                "seed": pn.widgets.IntInput, "lr": pn.widgets.FloatInput})
            cards.append(pn.Card(self.lane_status[i], self.progress[i], form,
                                 title=f"Lane {i + 1}", width=FORM_WIDTH + 20))
        return pn.Column(
            pn.Row(pn.Column(shared, pn.Row(self.train_button, self.stop_button)),
                   pn.Column(self.alert, self.status, self.preset_doc, self.loss_plot,
                             sizing_mode="stretch_width"), sizing_mode="stretch_width"),
            pn.Row(self.acc_plot, self.probe_plot, sizing_mode="stretch_width"),
            # the lanes wrap where four forms do not fit side by side (in a row they widened the
            # page, and every stretching plot with it, past the window's right edge)
            pn.FlexBox(*cards, flex_wrap="wrap", sizing_mode="stretch_width"),
            sizing_mode="stretch_width")


def arena_app(store_root: str | Path | None = "data/runs", template: bool = True):
    """The served Arena page (``?preset=N`` selects the N-th preset on load)."""
    pn.extension("plotly")
    arena = Arena(store_root=store_root)
    arena.bind_session()
    return page("arena", arena.view(), template=template)
