"""The live training app without a browser: its state object, then the served page over HTTP."""
from __future__ import annotations

import time

import pytest

pytest.importorskip("panel")
pytest.importorskip("requests")

import requests  # noqa: E402  (after the skips: a missing extra skips, never errors)

from workbench.dashboard._jobs import MAX_BATCH
from workbench.dashboard.live import (
    MAX_STEPS,
    LiveTraining,
    datasets_for,
    live_app,
    norms_for,
    wait_for,
)
from workbench.norms import norm_layouts
from workbench.store import RunStore


@pytest.fixture
def live(tmp_path):
    app = LiveTraining(store_root=tmp_path / "runs")
    yield app
    app.stop()  # never leave a worker behind: the server trains one run at a time
    app.join(10)


def _wait_until(predicate, timeout: float = 20.0, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(poll)


def test_full_run_fills_plot_progress_and_status(live, tmp_path):
    live.steps = 60
    assert live.start()
    assert live.running and live.train_button.disabled and not live.stop_button.disabled
    wait_for(live)
    assert not live.running and not live.train_button.disabled and live.stop_button.disabled
    assert live.progress.value == live.progress.max == 60
    assert list(live.figure.data[0].x) == list(range(60))
    assert live.plot.object is live.figure
    assert live.status.object.startswith("finished: final loss")
    # the dashed test loss: every 6 steps, the last after step 60, as stored
    run = RunStore(tmp_path / "runs").get(live._config.run_id)
    tested = run.frame.query("probe == 'eval' and metric == 'loss'").sort_values("step")
    test = live.figure.data[1]
    assert list(test.x) == list(range(6, 61, 6)) == tested.step.tolist()
    assert list(test.y) == tested.value.tolist() and test.line.dash == "dash"
    assert f", test loss {tested.value.iloc[-1]:.4g} after 60 steps" in live.status.object
    assert not live.alert.visible
    assert RunStore(tmp_path / "runs").has(live._config.run_id)


def test_test_losses_stream_in_while_training(live):
    live.steps, live.batch_size = 2000, 256
    assert live.start()
    _wait_until(lambda: live.refresh() or len(live.figure.data[1].x) >= 2)
    assert list(live.figure.data[1].x[:2]) == [200, 400] and live.running
    live.stop()
    live.join(10)


def test_stop_cancels_within_a_second(live, tmp_path):
    live.steps = MAX_STEPS
    assert live.start()
    _wait_until(lambda: live.refresh() or live.progress.value >= 5)
    live.stop()
    t0 = time.monotonic()
    live.join(5)
    assert time.monotonic() - t0 < 1.0
    live.refresh()
    assert live.status.object.startswith("cancelled at step")
    assert 5 <= len(live.figure.data[0].x) < MAX_STEPS
    assert not RunStore(tmp_path / "runs").has(live._config.run_id)  # only complete runs are kept


@pytest.mark.parametrize(("field", "value", "message"), [
    ("batch_size", MAX_BATCH + 1, f"batch size must be at most {MAX_BATCH}"),
    ("lr", 0.0, "lr must be > 0"),
    ("steps", MAX_STEPS + 1, f"at most {MAX_STEPS}"),
    ("seed", -1, "seed must be an integer in [0, 2**32)"),
])
def test_bad_input_shows_a_message_not_a_traceback(live, field, value, message):
    setattr(live, field, value)
    assert live.start() is False
    assert not live.running
    assert live.alert.visible and message in live.alert.object
    assert "Traceback" not in live.alert.object
    assert live.status.object.startswith("not started")
    setattr(live, field, LiveTraining.param[field].default)  # fixed: the alert goes away
    live.steps = 5
    assert live.start()
    assert not live.alert.visible
    wait_for(live)


def test_huge_lr_is_shown_as_diverged(live, tmp_path):
    live.norm, live.lr, live.steps = "none", 1e6, 100
    assert live.start()
    wait_for(live)
    assert live.status.object.startswith("diverged at step")
    marker = live.figure.data[-1]
    assert len(live.figure.data) == 3 and marker.marker.symbol == "x"  # loss, test loss, x
    assert RunStore(tmp_path / "runs").get(live._config.run_id).status == "diverged"


def test_norm_and_dataset_choices_follow_the_model(live):
    layouts = {"mlp": "features", "convnet": "conv", "transformer": "tokens"}
    for kind in ("convnet", "transformer", "mlp"):
        live.model = kind
        norms = live.param.norm.objects
        assert norms == norms_for(kind) and live.norm in norms
        assert all(layouts[kind] in norm_layouts(n) for n in norms)
        assert live.param.dataset.objects == datasets_for(kind) and live.dataset in datasets_for(kind)
        assert list(live.controls._widgets["norm"].options) == norms  # the widget follows too
    live.model = "transformer"
    assert "none" not in live.param.norm.objects and live.dataset == "markov"
    live.model = "convnet"
    assert "instance" in live.param.norm.objects and live.dataset in ("shapes", "digits")


@pytest.mark.parametrize("kind", ["mlp", "convnet", "transformer"])
def test_every_model_and_data_set_choice_trains(live, kind):
    live.model, live.steps = kind, 3
    for name in datasets_for(kind):
        live.dataset = name
        assert live.start(), live.alert.object
        wait_for(live)
        assert live.status.object.startswith("finished"), (name, live.status.object)


def test_layout_has_controls_buttons_and_plot():
    page = live_app(store_root=None, autostart=False, template=False)
    names = {type(obj).__name__ for obj in page.select()}
    assert {"Button", "Progress", "Plotly", "Alert", "Select", "IntInput", "FloatInput"} <= names


def test_served_page_answers_200(live_server):
    r = requests.get(f"{live_server}/train_app", timeout=20)
    assert r.status_code == 200
    assert "bokeh" in r.text.lower() and "Normlab" in r.text


def test_closing_the_session_cancels_the_run(live):
    live.steps = MAX_STEPS
    assert live.start()
    _wait_until(lambda: live.refresh() or live.progress.value >= 1)
    live.on_session_destroyed(session_context=None)
    live.join(2)
    live.refresh()
    assert live.status.object.startswith("cancelled at step")


def test_metric_curves_draws_one_line_per_run_and_marks_divergence():
    import pandas as pd

    from workbench.viz import metric_curves

    rows = [("a", s, "train", "loss", "", 1.0 / (s + 1)) for s in range(5)]
    rows += [("b", s, "train", "loss", "", v) for s, v in enumerate([1.0, 10.0, 1e3, float("nan")])]
    rows += [("a", 4, "eval", "loss", "", 0.3)]
    frame = pd.DataFrame(rows, columns=["run_id", "step", "probe", "metric", "layer", "value"])
    fig = metric_curves(frame, status={"a": "finished", "b": "diverged"}, log_y=True)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert [t.name for t in lines] == ["a", "b"]
    assert list(lines[1].y) == [1.0, 10.0, 1e3, None]  # NaN is a gap, not invalid JSON
    (marker,) = [t for t in fig.data if t.mode == "markers"]
    assert (marker.x[0], marker.y[0], marker.marker.symbol) == (3, 1e3, "x")
    assert fig.layout.yaxis.type == "log"
    with pytest.raises(ValueError, match="no column 'norm'"):
        metric_curves(frame, color="norm")


def test_smoothing_is_a_debiased_ema_drawn_over_the_faint_raw_line():
    import pandas as pd

    from workbench.viz import metric_curves
    from workbench.viz.curves import smooth_ema

    # weights 1/4, 1/2, 1 over the finite values so far, normalized: (1/4 + 3/2 + 5) / (7/4)
    assert smooth_ema([1.0, 3.0, float("nan"), 5.0], 0.5) == pytest.approx([1.0, 7 / 3, None, 27 / 7])
    assert smooth_ema([2.0] * 4, 0.9) == pytest.approx([2.0] * 4)  # debiased: no ramp from 0
    assert smooth_ema([1.0, 4.0], 0.0) == [1.0, 4.0]
    rows = [(r, s, "train", "loss", "", float(s % 2)) for r in "ab" for s in range(6)]
    frame = pd.DataFrame(rows, columns=["run_id", "step", "probe", "metric", "layer", "value"])
    fig = metric_curves(frame, smoothing=0.6)
    raw_a, smooth_a, raw_b, smooth_b = fig.data
    assert [t.name for t in fig.data if t.showlegend is not False] == ["a", "b"]
    assert raw_a.opacity == 0.25 and raw_a.line.color == smooth_a.line.color != smooth_b.line.color
    assert list(raw_b.y) == [0, 1, 0, 1, 0, 1]
    assert list(smooth_b.y) == pytest.approx(smooth_ema(raw_b.y, 0.6))
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"smoothing must be in \[0, 1\)"):
            metric_curves(frame, smoothing=bad)


def test_labelled_hline_puts_its_label_on_the_line_on_log_and_linear_axes():
    import plotly.graph_objects as go

    from workbench.viz import labelled_hline

    for axis, label_y in (("log", 2.0), ("linear", 100.0)):
        fig = go.Figure(go.Scatter(x=[1, 2], y=[1, 1000]))
        fig.update_yaxes(type=axis)
        labelled_hline(fig, 100.0, "full data")
        (line,), (label,) = fig.layout.shapes, fig.layout.annotations
        assert line.y0 == line.y1 == 100.0 and (label.y, label.text) == (label_y, "full data")
    fig = go.Figure()
    fig.update_yaxes(type="log")
    labelled_hline(fig, -1.0, "below zero")  # no place on a log axis: the line, no label
    assert len(fig.layout.shapes) == 1 and not fig.layout.annotations


def test_all_slots_busy_is_a_message_not_a_queue(live, monkeypatch):
    from workbench.dashboard import _jobs

    busy = _jobs.TrainingSlots(1)
    assert busy.try_acquire()
    monkeypatch.setattr(_jobs, "SLOTS", busy)
    assert live.start() is False and not live.running
    assert "training slots on this server are busy" in live.alert.object
    busy.release()
    live.steps = 5
    assert live.start()
    wait_for(live)
    assert live.status.object.startswith("finished") and busy.in_use == 0
