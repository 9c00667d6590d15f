"""The Arena's state without a browser: lanes, presets, progress, Stop, bad input, divergence, queue."""
from __future__ import annotations

import math
import time

import pytest

pytest.importorskip("panel")

from bokeh.document import Document  # noqa: E402

from workbench.dashboard import _jobs, arena
from workbench.dashboard.arena import Arena, Lane
from workbench.dashboard.presets import PRESETS
from workbench.store import RunStore
from workbench.viz.curves import smooth_ema


@pytest.fixture
def app(tmp_path):
    a = Arena(store_root=tmp_path / "runs")
    a.width, a.depth = 16, 2
    yield a
    a.stop()
    a.join(10)


def _run_to_end(a: Arena, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while a.running:
        a.refresh()
        assert time.monotonic() < deadline, "the arena did not finish in time"
        time.sleep(0.02)


def _wait(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_two_lanes_stream_curves_probes_and_are_saved(app, tmp_path):
    app.steps, app.probes, app.probe_every = 30, ["channel_health", "smoothness_small"], 10
    app.lanes[1].norm = "layer"
    assert app.start()
    assert app.train_button.disabled and not app.stop_button.disabled
    _run_to_end(app)
    assert not app.train_button.disabled and app.stop_button.disabled
    assert [len(app.loss_fig.data[i].x) for i in range(2)] == [30, 30]
    assert [len(app.acc_fig.data[i].x) for i in range(2)] == [30, 30]
    assert [app.progress[i].value for i in range(2)] == [30, 30]
    # one panel per probe (in ARENA_PROBES order), one line per lane in each: trace r*4 + lane
    titles = [a.text for a in app.probe_fig.layout.annotations]
    assert titles == ["smoothness_small: beta_smoothness", "channel_health: dead_fraction"]
    for r in range(2):
        for lane in range(2):
            assert list(app.probe_fig.data[4 * r + lane].x) == [0, 10, 20, 29]  # + the last step
    assert all(math.isfinite(v) for v in app.probe_fig.data[0].y)
    assert all(0 <= v <= 1 for v in app.probe_fig.data[4].y)  # a fraction of channels
    assert all("finished" in app.lane_status[i].object for i in range(2))
    assert app.lane_status[2].object == "" and app.status.object.startswith("done")
    store = RunStore(tmp_path / "runs")
    assert len(store.run_ids()) == 2
    # dashed test-set lines (trace 4 + lane): every evaluation, steps // 10 apart and at the end,
    # as stored; those before the end arrived while training
    for lane, (_, cfg) in enumerate(app.build_configs()):
        assert store.get(cfg.run_id).meta["label"] == app._names[lane]  # the Runs app shows it
        evals = store.get(cfg.run_id).frame.query("probe == 'eval'")
        for fig, metric in ((app.loss_fig, "loss"), (app.acc_fig, "accuracy")):
            rows = evals[evals.metric == metric].sort_values("step")
            test = fig.data[4 + lane]
            assert test.name.endswith(" (test)") and test.line.dash == "dash"
            assert list(test.x) == list(range(3, 31, 3)) == rows.step.tolist()
            assert list(test.y) == rows.value.tolist()
        accuracy = evals[evals.metric == "accuracy"].sort_values("step").value.iloc[-1]
        assert f", test accuracy {accuracy:.4g} in " in app.lane_status[lane].object


@pytest.mark.parametrize("probes", [[], ["channel_health"]])
def test_the_probe_plot_is_sent_only_when_new_probe_rows_came_in(app, probes):
    """Each trigger sends the whole figure to the browser (tens of ms of the event loop); with
    no probe chosen the probe plot is sent once, when Train sets its empty figure."""
    app.steps, app.probes, app.probe_every = 300, probes, 100
    sent = []
    app.probe_plot.param.watch(lambda event: sent.append(event), "object")
    assert app.start()
    deadline = time.monotonic() + 60
    while app.running:  # every refresh draws, the probes' plot included (slow every time)
        app._next_slow = app._next_draw = 0.0
        app.refresh()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    frames = sum(len(f["step"].unique()) for f in app._probe_frames[0])
    assert frames == (4 if probes else 0)  # steps 0, 100, 200, 299
    assert 1 + (1 if probes else 0) <= len(sent) <= 1 + 2 * frames  # two lanes: a draw per lane's
    if probes:
        assert list(app.probe_fig.data[0].x) == list(app.probe_fig.data[1].x) == [0, 100, 200, 299]


def test_a_lane_turned_off_keeps_nothing_of_the_last_run(app):
    app.steps = 12
    assert app.start()
    _run_to_end(app)
    assert len(app.loss_fig.data[1].x) == 12 and list(app.loss_fig.data[5].x) == [2, 4, 6, 8, 10, 12]
    app.lanes[1].enabled = False
    app.lanes[0].dataset = "teacher"  # regression: no accuracy, the status gives the test loss
    assert app.start()
    _run_to_end(app)
    assert len(app.loss_fig.data[0].x) == 12 and ", test loss " in app.lane_status[0].object
    for fig in (app.loss_fig, app.acc_fig):
        assert [len(fig.data[i].x) for i in (1, 5)] == [0, 0]  # its line and its dashed test line


def test_test_points_stream_in_while_training(app):
    _long_run(app)
    app.lanes[1].enabled = False
    assert app.start()
    _wait(lambda: app.refresh() or len(app._tests[0]["accuracy"][0]) >= 2)
    assert app.running
    app._next_slow = 0.0  # the accuracy figure is redrawn once a second: now
    app._draw()
    assert list(app.acc_fig.data[4].x[:2]) == [200, 400]
    assert all(0 <= v <= 1 for v in app.acc_fig.data[4].y)
    app.stop()
    app.join(5)
    _run_to_end(app, 5)


def test_curves_are_smoothed_and_redrawn_when_the_weight_or_axis_changes(app, tmp_path):
    app.steps = 30
    assert app.start()
    _run_to_end(app)
    store = RunStore(tmp_path / "runs")
    cfg = app.lanes[1].build(steps=app.steps, width=app.width, depth=app.depth)
    raw = store.get(cfg.run_id).metric("loss").tolist()  # lane 2's per-step training losses
    assert len(raw) == 30 and list(app.loss_fig.data[1].y) == pytest.approx(smooth_ema(raw, 0.9))
    assert app.loss_fig.layout.title.text == "loss (smoothed: EMA 0.9); dashed: test set"
    # what the page is sent: the Bokeh models' layout changes (a figure changed in place must
    # still be sent: Panel's own copy shared the figure's dicts, and sent nothing)
    sent = {}
    for name in ("loss", "acc"):
        model = getattr(app, f"{name}_plot").get_root(Document())
        sent[name] = []
        model.on_change("layout", lambda attr, old, new, name=name: sent[name].append(new))
    app.smoothing = 0.0  # after the run: redrawn at once, from the raw values
    assert list(app.loss_fig.data[1].y) == pytest.approx(raw)
    assert app.loss_fig.layout.title.text == "loss; dashed: test set"
    assert app.acc_fig.layout.title.text == "accuracy; dashed: test set"
    app.smoothing = 0.5
    assert list(app.loss_fig.data[1].y) == pytest.approx(smooth_ema(raw, 0.5))
    assert app.loss_fig.layout.yaxis.type == "log"
    app.log_y = False
    assert app.loss_fig.layout.yaxis.type == "linear"
    assert [(lay["title"]["text"], lay["yaxis"]["type"]) for lay in sent["loss"]] == [
        ("loss; dashed: test set", "log"), ("loss (smoothed: EMA 0.5); dashed: test set", "log"),
        ("loss (smoothed: EMA 0.5); dashed: test set", "linear")]
    assert [lay["title"]["text"] for lay in sent["acc"]] == [
        "accuracy; dashed: test set", "accuracy (smoothed: EMA 0.5); dashed: test set"]


def _long_run(app):
    """2000 steps of a few ms each, for tests that must act mid-run: a training process runs a
    toy model's 2000 steps in about a second."""
    app.steps, app.width, app.depth = 2000, 128, 4
    for lane in app.lanes:
        lane.batch_size = 256


def test_stop_cancels_every_lane_within_a_second(app):
    _long_run(app)
    assert app.start()
    _wait(lambda: app.refresh() or app.progress[0].value >= 3)
    t0 = time.monotonic()
    app.stop()
    app.join(5)
    assert time.monotonic() - t0 < 1.0
    _run_to_end(app, 5)
    assert all("cancelled at step" in app.lane_status[i].object for i in range(2)), [app.lane_status[i].object for i in range(2)]
    assert 3 <= len(app.loss_fig.data[0].x) < 2000


@pytest.mark.parametrize(("setup", "message"), [
    (lambda a: setattr(a.lanes[0], "batch_size", 100_000), "lane 1"),
    (lambda a: setattr(a, "steps", 10**6), "steps must be at most"),
    (lambda a: setattr(a, "width", 4096), "width must be at most"),
    (lambda a: setattr(a.lanes[1], "lr", 0.0), "lr must be > 0"),
    (lambda a: (setattr(a.lanes[1], "model", "transformer"), setattr(a.lanes[1], "norm", "group")),
     "unknown transformer norm"),
    (lambda a: setattr(a.lanes[0], "warmup_steps", 500), "warmup"),
    (lambda a: a.lanes[0].param.update(model="transformer", ws=True), "weight standardization"),
    (lambda a: [lane.param.update(enabled=False) for lane in a.lanes], "no lane is enabled"),
    # within the width and depth limits, but 2e10 parameters: it froze the machine once
    (lambda a: (a.param.update(width=256, depth=8), a.lanes[1].param.update(model="convnet")),
     "lane 2 (convnet batch B=32 sgd 0.05 seed 1): this model has 20,043.7M parameters; at most 8M"),
    # lanes that cannot train: refused at Train with a message naming the fix, not at step 0
    (lambda a: setattr(a.lanes[0], "seed", 2**64), "lane 1 (mlp batch B=32 sgd 0.05 seed "
     "18446744073709551616): seed must be an integer in [0, 2**32)"),
    (lambda a: a.lanes[0].param.update(batch_size=1), "batch_size=1 leaves one value per feature"),
    (lambda a: a.lanes[1].param.update(micro_batch=1), "micro_batch=1 leaves one value per feature"),
    (lambda a: a.lanes[0].param.update(norm="ghost_batch", virtual_batch=1),
     "virtual_batch_size=1 on (N, C) features normalizes each value by itself"),
    (lambda a: a.lanes[0].param.update(norm="ghost_batch", batch_size=33),
     "use a batch size that is not 1 more than a multiple of 8, e.g. 32"),
    (lambda a: a.lanes[1].param.update(batch_schedule="step", max_batch=32),
     "lane 2 (mlp batch B=32→32 sgd 0.05 seed 1): a growing batch needs 'Largest batch' above "
     "the batch size 32, got 32"),
    (lambda a: a.lanes[1].param.update(batch_schedule="norm_test", max_batch=4096),
     "batch size must be at most 1024 in the dashboard, got 4096"),
    # the same settings in two lanes (names aside): one seeded run, trained twice
    (lambda a: a.lanes[2].param.update(**{k: v for k, v in a.lanes[0].param.values().items()
                                          if k not in ("name", "label")}, label="copy"),
     "lanes 1 and 3 have the same settings"),
])
def test_bad_input_shows_a_message_and_starts_nothing(app, setup, message):
    setup(app)
    assert app.start() is False
    assert not app.running and app.alert.visible
    assert message in app.alert.object and "Traceback" not in app.alert.object
    assert app.status.object.startswith("not started")


def test_a_diverged_lane_is_marked_and_the_other_goes_on(app):
    app.steps = 60
    app.lanes[1].param.update(norm="none", lr=1e6)
    assert app.start()
    _run_to_end(app)
    assert "diverged at step" in app.lane_status[1].object
    assert "finished" in app.lane_status[0].object
    markers = [t for t in app.loss_fig.data if t.mode == "markers"]
    assert len(markers) == 1 and markers[0].marker.symbol == "x"
    assert len(app.loss_fig.data[0].x) == 60


def test_a_lane_named_diverged_is_drawn_like_any_other(app):
    app.steps = 20
    app.lanes[0].label = "diverged"  # a name, not a status: its curve must still be drawn
    assert app.start()
    _run_to_end(app)
    assert app.loss_fig.data[0].name == "diverged"
    assert len(app.loss_fig.data[0].x) == 20 and len(app.acc_fig.data[0].x) == 20


def test_every_preset_sets_four_valid_distinct_lanes(app):
    for name, spec in PRESETS.items():
        app.preset = name
        configs = app.build_configs()
        assert [lane.label for lane in app.lanes] == [lane["label"] for lane in spec["lanes"]]
        assert len({cfg.run_id for _, cfg in configs}) == 4, name
        assert app.preset_doc.object == spec["doc"]
    app.preset = "micro-batch: BN vs GN vs GN+WS vs BCN"
    cfgs = dict(app.build_configs())
    assert cfgs[3].model.norm == "batch_channel" and cfgs[3].model.ws and cfgs[0].micro_batch == 1
    assert app.probes == [] and all(cfg.eval_every == 20 for cfg in cfgs.values())
    app.preset = "LN placement: Pre vs Post vs Mix vs LN scaling"
    assert app.probes == ["depth_variance"] and app.probe_every == 25 and app.depth == 8
    app.preset = "large batch: SGD vs LARS, Adam vs LAMB"  # the probes are the preset's
    assert app.probes == [] and app.probe_every == 20


def _preset_lanes(app, preset, labels, **shared):
    """Train only the lanes ``labels`` of a preset (with ``shared`` changed) to the end."""
    app.preset = preset
    app.param.update(**shared)
    for lane in app.lanes:
        lane.enabled = lane.label in labels
    assert app.start()
    _run_to_end(app, 180)
    assert all("finished" in app.lane_status[i].object for i in range(4) if app.lanes[i].enabled)
    return [app.lanes.index(next(lane for lane in app.lanes if lane.label == name)) for name in labels]


def test_the_micro_batch_preset_shows_batchnorm_failing_at_test_time(app):
    """What the preset's doc says a user sees: BN at micro-batch 1 trains, and its test accuracy
    (the dashed line) collapses; GN + WS's does not."""
    bn, gnws = _preset_lanes(app, "micro-batch: BN vs GN vs GN+WS vs BCN", ["BN", "GN+WS"], steps=150)
    train_acc = [app.acc_fig.data[i].y[-1] for i in (bn, gnws)]  # smoothed training accuracy
    test_acc = [app.acc_fig.data[4 + i].y[-1] for i in (bn, gnws)]
    assert min(train_acc) > 0.8, train_acc
    assert test_acc[0] < test_acc[1] - 0.3, test_acc


def test_the_ln_placement_preset_shows_the_variance_growth_in_the_probe_panel(app):
    pre, post = _preset_lanes(app, "LN placement: Pre vs Post vs Mix vs LN scaling",
                              ["Pre-LN", "Post-LN"], steps=100)
    assert app.probe_fig.layout.annotations[0].text == "depth_variance: stream_out_variance"
    first, last = ([app.probe_fig.data[i].y[k] for i in (pre, post)] for k in (0, -1))
    assert last[0] > 1.5 * first[0], "Pre-LN's stream variance should grow during training"
    assert last[0] > 3 * last[1] and last[1] < 1.5, "Post-LN keeps it near 1"


def test_a_preset_trains_in_the_arena(app):
    app.preset = "large batch: SGD vs LARS, Adam vs LAMB"
    app.steps, app.width = 20, 16
    assert app.start()
    _run_to_end(app)
    assert all("finished" in app.lane_status[i].object for i in range(4)), \
        [s.object for s in app.lane_status]


def test_queue_message_when_the_server_cap_is_reached(app, monkeypatch):
    slots = _jobs.TrainingSlots(1)
    monkeypatch.setattr(_jobs, "SLOTS", slots)
    monkeypatch.setattr(arena, "SLOTS", slots)
    _long_run(app)  # the first lane must still be training
    assert app.start()
    _wait(lambda: app.refresh() or any("queued:" in s.object for s in app.lane_status))
    assert slots.in_use == 1
    app.stop()
    app.join(5)
    _run_to_end(app, 5)
    assert slots.in_use == 0


def test_closing_the_tab_stops_the_session(app):
    _long_run(app)
    assert app.start()
    _wait(lambda: app.refresh() or app.progress[0].value >= 1)
    app.on_session_destroyed(None)
    app.join(2)
    _run_to_end(app, 5)
    assert "cancelled" in app.lane_status[0].object


def test_lane_choices_follow_the_model():
    lane = Lane()
    lane.model = "transformer"
    assert lane.dataset == "markov" and lane.norm == "layer"
    lane.model = "convnet"
    assert lane.dataset in ("shapes", "digits") and lane.norm == "batch"


def test_layout_has_lanes_buttons_and_plots():
    page = arena.arena_app(store_root=None, template=False)
    names = [type(obj).__name__ for obj in page.select()]
    assert names.count("Progress") == 4 and names.count("Plotly") == 3
    assert {"Button", "Alert", "Card", "CheckBoxGroup"} <= set(names)


def test_thin_keeps_the_last_point_and_sends_float_arrays():
    import numpy as np

    from workbench.viz.lanes import thin

    xs, ys = list(range(1001)), [float(i) ** 0.5 for i in range(1001)]
    x, y = thin(xs, ys, max_points=400)
    assert x.dtype == y.dtype == np.float64  # Bokeh ships these as binary buffers
    assert len(x) <= 401 and x[0] == 0 and x[-1] == 1000 and y[-1] == ys[-1]
    assert np.all(np.diff(x) > 0) and np.allclose(y, np.sqrt(x))
    x, y = thin(xs[:50], ys[:50])
    assert list(x) == xs[:50]  # short curves pass whole


def test_live_smoothness_follows_each_lanes_learning_rate(app, tmp_path):
    app.steps, app.probes, app.probe_every = 12, ["smoothness_small"], 5
    app.lanes[0].lr, app.lanes[1].lr = 0.02, 0.3
    assert app.start()
    _run_to_end(app)
    store = RunStore(tmp_path / "runs")
    seen = set()
    for run_id in store.run_ids():
        run = store.get(run_id)
        f = run.frame[run.frame.probe == "smoothness"]
        f = f.pivot_table(index=["step", "layer"], columns="metric", values="value")
        f = f[["lr_effective", "weight_norm"]].dropna()
        assert len(f)
        lr = run.config["lr"]
        assert (abs(f.lr_effective * f.weight_norm ** 2 / lr - 1) < 1e-4).all()
        seen.add(lr)
    assert seen == {0.02, 0.3}


def test_status_lines_name_the_run_started_not_the_lane_edited_since(app, tmp_path):
    _long_run(app)
    app.lanes[1].enabled = False
    assert app.start()
    app.lanes[0].param.update(batch_size=512, optimizer="adam", norm="layer")  # mid-run edits
    _wait(lambda: app.refresh() or app.progress[0].value >= 3)
    app._draw()
    assert app.lane_status[0].object.startswith("**mlp batch B=256 sgd 0.05**: step")
    app.stop()
    _run_to_end(app, 5)
    assert app.lane_status[0].object.startswith("**mlp batch B=256 sgd 0.05**: cancelled")
    assert app.loss_fig.data[0].name == "mlp batch B=256 sgd 0.05"


def test_depth_variance_is_measured_on_residual_lanes_and_skipped_with_a_note_elsewhere(app):
    app.steps, app.probes, app.probe_every = 10, ["depth_variance"], 5
    app.lanes[1].param.update(model="transformer")
    assert app.start()
    assert "depth variance is not measured on lane(s) 1: a plain MLP" in app.status.object
    _run_to_end(app)
    assert all("finished" in app.lane_status[i].object for i in range(2))
    assert not app.alert.visible
    assert app.status.object.startswith("done") and "lane(s) 1: a plain MLP" in app.status.object
    assert len(app.probe_fig.data[0].x or ()) == 0  # lane 1: nothing measured
    assert list(app.probe_fig.data[1].x) == [0, 5, 9]  # lane 2, the transformer: measured
    app.lanes[0].residual = True  # a residual MLP has blocks to measure
    assert app.lanes[0].describe() == "mlp-res batch B=32 sgd 0.05"
    assert app.start()
    assert "not measured" not in app.status.object
    _run_to_end(app)
    assert list(app.probe_fig.data[0].x) == [0, 5, 9] and all(v > 0 for v in app.probe_fig.data[0].y)


def test_a_lane_grows_its_batch(app, tmp_path):
    """The 'step' schedule doubles the batch every 'Grow every' steps up to 'Largest batch'; the
    lane's status line shows the batch in use, and the run's rows record it."""
    app.steps = 40
    app.lanes[0].param.update(batch_size=16, batch_schedule="step", max_batch=64, growth_every=10)
    app.lanes[1].param.update(batch_size=16, batch_schedule="norm_test", max_batch=256)
    assert app._names == [""] * 4 and app.lanes[0].describe() == "mlp batch B=16→64 sgd 0.05"
    assert app.start()
    _run_to_end(app)
    assert all("finished" in app.lane_status[i].object for i in range(2))
    store = RunStore(tmp_path / "runs")
    sizes = [store.get(app.lanes[i].build(steps=40, width=16, depth=2).run_id).metric("batch_size")
             for i in range(2)]
    assert sizes[0].tolist() == [16] * 10 + [32] * 10 + [64] * 20
    assert sizes[1].is_monotonic_increasing and 16 <= sizes[1].min() <= sizes[1].max() <= 256
    _long_run(app)  # mid-run: the status line names the batch in use
    app.lanes[0].param.update(batch_size=16, max_batch=64, growth_every=5)
    app.lanes[1].batch_schedule = "constant"
    assert app.start()
    _wait(lambda: app.refresh() or app.progress[0].value >= 20, timeout=60)
    app._draw()
    assert app.lane_status[0].object.endswith(", batch 64")
    assert ", batch" not in app.lane_status[1].object  # lane 2: a constant batch
    app.stop()
    _run_to_end(app, 5)
