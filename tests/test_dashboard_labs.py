"""Curvature, Depth and Landscape state without a browser: train, measure, stop, bad input, divergence."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("panel")

from workbench.dashboard.curvature import CurvatureLab, curvature_app
from workbench.dashboard.depth import DepthLab, depth_app
from workbench.dashboard.landscape import LandscapeLab, landscape_app
from workbench.store import RunStore
from workbench.viz.curves import smooth_ema
from workbench.viz.landscape import contour_figure, surface_figure

LABS = [CurvatureLab, DepthLab, LandscapeLab]


def _run_to_end(lab, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while lab.running:
        lab.refresh()
        assert time.monotonic() < deadline, "did not finish in time"
        time.sleep(0.02)


def _small(cls, tmp_path, **kw):
    lab = cls(store_root=tmp_path / "runs")
    lab.param.update(**{"width": 16, "steps": 30, **kw})
    return lab


def test_curvature_draws_spectra_lambda_law_lr_and_trace(tmp_path):
    lab = _small(CurvatureLab, tmp_path, batch_sizes=[8, 32, 128], max_iter=20)
    assert lab.start()
    _run_to_end(lab)
    assert lab.status.object == "done: finished" and not lab.alert.visible
    density, lam, lr, trace = (p.object for p in lab.plots)
    assert len(density.data) == 4  # three batch sizes + the full data
    # log density axis, every value at or above the floor (1e-5 of the peak) so none is dropped
    assert density.layout.yaxis.type == "log"
    ys = np.concatenate([np.asarray(t.y, dtype=float) for t in density.data])
    assert ys.min() >= ys.max() * 1e-5 * (1 - 1e-12) and ys.min() > 0
    assert list(lam.data[0].x) == [8, 32, 128] and "fit" in lam.data[1].name
    assert lam.layout.yaxis.type == "log" and min(lam.data[1].y) > 0  # fit on relative residuals
    assert all(v > 0 for v in lr.data[0].y) and len(trace.data[0].x) == 3
    assert len(lab.loss_fig.data[0].x) == 30
    # the stable rate of the run's optimizer (SGD, heavy-ball momentum 0.9: 3.8 / lambda_max),
    # its fitted law, and the run itself at (B, lr)
    rows = lab.result.set_index(["metric", "batch_size"]).value
    assert list(lr.data[0].x) == [8, 32, 128]
    assert list(lr.data[0].y) == pytest.approx([3.8 / rows["lambda_max_mean", b] for b in (8, 32, 128)])
    assert lr.layout.title.text == "largest stable learning rate (SGD, momentum 0.9)"
    assert "3.8 / (" in lr.data[1].name
    assert (list(lr.data[2].x), list(lr.data[2].y)) == ([32], [0.05])
    assert lr.data[2].name == "this run: B=32, lr=0.05"
    # the full-data lines' labels sit at their lines: on a log axis plotly places an annotation
    # by the log10 of its value (a shape by the value)
    n = rows.index.get_level_values("batch_size").max()
    for fig, value in ((lam, rows["lambda_max", n]), (lr, rows["lr_max_sgd", n]),
                       (trace, rows["trace", n])):
        (line,), (label,) = fig.layout.shapes, fig.layout.annotations
        assert line.y0 == line.y1 == pytest.approx(value)
        log = fig.layout.yaxis.type == "log"
        assert label.y == pytest.approx(np.log10(value) if log else value)
        assert label.text == f"full data {value:.3g}"


def test_curvature_stable_rate_follows_the_optimizer(tmp_path):
    """Adam: the Adam-preconditioned curvature and (1 + beta1) / (1 - beta1) * 2 (38 at 0.9);
    LARS: plain gradient descent's curve, and the run is not placed on it."""
    lab = _small(CurvatureLab, tmp_path, batch_sizes=[8, 32], max_iter=10, steps=10,
                 optimizer="adam", lr=1e-3)
    assert lab.start()
    _run_to_end(lab)
    lr = lab.plots[2].object
    rows = lab.result.set_index(["metric", "batch_size"]).value
    assert list(lr.data[0].y) == pytest.approx([38 / rows["adam_lambda_max_mean", b] for b in (8, 32)])
    assert lr.layout.title.text == "largest stable learning rate (Adam, β1 0.9)"
    assert lr.data[-1].name == "this run: B=32, lr=0.001"
    lab.optimizer, lab.lr = "lars", 1.0
    assert lab.start()
    _run_to_end(lab)
    lr = lab.plots[2].object
    rows = lab.result.set_index(["metric", "batch_size"]).value
    assert list(lr.data[0].y) == pytest.approx([2 / rows["lambda_max_mean", b] for b in (8, 32)])
    assert "trust ratios not modeled" in lr.layout.title.text
    assert not any((t.name or "").startswith("this run") for t in lr.data)


def test_lab_loss_lines_are_smoothed_and_redrawn_when_the_weight_changes(tmp_path):
    lab = _small(DepthLab, tmp_path, depth=2, steps=25, probe_every=10, placements=["pre", "post"])
    assert lab.start()
    _run_to_end(lab)
    store = RunStore(tmp_path / "runs")
    raw = {name: store.get(cfg.run_id).metric("loss").tolist() for name, cfg in lab.variants()}
    assert lab.loss_fig.layout.title.text == "training loss (smoothed: EMA 0.9)"
    for i, name in enumerate(lab.names):
        assert len(raw[name]) == 25
        assert list(lab.loss_fig.data[i].y) == pytest.approx(smooth_ema(raw[name], 0.9))
    lab.smoothing = 0.0  # after the run: redrawn at once, from the raw values
    assert lab.loss_fig.layout.title.text == "training loss"
    assert list(lab.loss_fig.data[1].y) == pytest.approx(raw[lab.names[1]])
    lab.smoothing = 0.5
    assert list(lab.loss_fig.data[0].y) == pytest.approx(smooth_ema(raw[lab.names[0]], 0.5))
    lab.smoothing = 0.3  # before the next run: its lines start with this weight
    assert lab.start()
    _run_to_end(lab)
    assert list(lab.loss_fig.data[0].y) == pytest.approx(smooth_ema(raw[lab.names[0]], 0.3))


def test_depth_heatmaps_per_placement(tmp_path):
    lab = _small(DepthLab, tmp_path, depth=3, steps=20, probe_every=10,
                 placements=["pre", "post"])
    assert lab.start()
    _run_to_end(lab)
    assert lab.status.object == "done: finished"
    pre, post = lab.heatmaps[0].object, lab.heatmaps[1].object
    assert list(pre.data[0].x) == [0, 10, 19] and list(pre.data[0].y) == [0, 1, 2]
    assert post.layout.title.text.startswith("post")
    assert {t.name for t in lab.lines.object.data} == {"pre", "post"}
    assert lab.lines.object.layout.yaxis.type == "log" and lab.lines.object.layout.xaxis.dtick == 1
    lab.metric = "grad_norm"  # redraws without retraining
    assert "grad_norm" in lab.heatmaps[0].object.layout.title.text


def test_depth_lines_use_a_log_axis_only_for_positive_values():
    import pandas as pd

    from workbench.viz.depth import depth_lines

    metric = "skip_loss_increase"

    def frame(values):
        return pd.DataFrame({"step": 5, "metric": metric, "value": values,
                             "layer": [f"blocks.{i}" for i in range(len(values))]})

    fig = depth_lines({"pre": frame([0.1, 0.2]), "post": frame([0.3, 0.01, 0.02])}, metric)
    assert fig.layout.yaxis.type == "log" and list(fig.data[1].x) == [0, 1, 2]
    # skipping a block can lower the loss: on a log axis that point would vanish
    fig = depth_lines({"pre": frame([0.1, 0.2]), "post": frame([0.3, -0.01])}, metric)
    assert len(fig.data) == 2 and fig.layout.yaxis.type == "linear"


@pytest.mark.parametrize("dims", [1, 2])
def test_landscape_line_contour_surface(tmp_path, dims):
    lab = _small(LandscapeLab, tmp_path, dims=dims, grid=9, mode="eval")
    assert lab.start()
    _run_to_end(lab)
    assert lab.status.object == "done: finished"
    assert len(lab.line_plot.object.data[0].x) == 9
    if dims == 2:
        assert lab.surface_plot.object.data[0].z.shape == (9, 9)
        assert lab.contour_plot.object.data[0].z.shape == (9, 9)


def test_landscape_interpolates_toward_a_stored_run(tmp_path):
    import torch

    from workbench.store import RunStore

    store = RunStore(tmp_path / "runs")
    small = _small(LandscapeLab, tmp_path, batch_size=16, dims=1, grid=5)
    assert small.start()
    _run_to_end(small)
    (stored,) = store.run_ids()
    lab = _small(LandscapeLab, tmp_path, batch_size=128, dims=1, grid=5)
    lab.direction = "stored run"  # lists the store's runs, the newest first
    assert lab.other_run == stored and stored in list(lab.param.other_run.objects)[0]
    assert lab.start()
    _run_to_end(lab)
    assert lab.status.object == "done: finished", lab.alert.object
    f = lab.result.sort_values("alpha")
    assert f.alpha.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert f"to stored run {stored} (1)" in lab.line_plot.object.layout.title.text
    assert len(lab.param.other_run.objects) == 2 and lab.other_run == stored  # listed, kept
    # the ends are the two trained models' losses on the same 256 examples (train mode)
    (mine,) = set(store.run_ids()) - {stored}
    for run_id, value in ((mine, f.value.iloc[0]), (stored, f.value.iloc[-1])):
        run = store.restore(run_id)
        with torch.no_grad():
            loss = run.dataset.loss_fn(run.model(run.dataset.x_train[:256]), run.dataset.y_train[:256])
        assert value == pytest.approx(loss.item(), rel=1e-5), run_id


def test_landscape_stored_run_must_exist_and_match(tmp_path):
    lab = _small(LandscapeLab, tmp_path, dims=1, grid=5, direction="stored run")
    assert lab.other_run is None and lab.start() is False
    assert "no stored run to interpolate toward" in lab.alert.object
    lab.direction = "random"
    assert lab.start()
    _run_to_end(lab)
    lab.direction = "stored run"  # now the run just trained is listed
    assert lab.start() is False and "is this very configuration" in lab.alert.object
    lab.width = 24
    assert lab.start() is False
    assert "another model or data set (mlp/batch w16 d2 · gaussian_mixture) than this lab " \
           "(mlp/batch w24 d2 · gaussian_mixture)" in lab.alert.object


@pytest.mark.parametrize("cls", LABS)
def test_stop_within_a_second(cls, tmp_path):
    lab = _small(cls, tmp_path, steps=2000)
    assert lab.start()
    deadline = time.monotonic() + 20
    while not (lab.refresh() or lab.progress.value >= 2):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    t0 = time.monotonic()
    lab.stop()
    lab.join(5)
    assert time.monotonic() - t0 < 1.0
    _run_to_end(lab, 5)
    assert "cancelled at step" in lab.status.object


@pytest.mark.parametrize(("cls", "setup", "message"), [
    (CurvatureLab, {"batch_sizes": []}, "at least one Hessian batch size"),
    (CurvatureLab, {"batch_size": 5000}, "batch size must be at most"),
    (DepthLab, {"placements": []}, "at least one LN placement"),
    (DepthLab, {"norm": "group"}, "unknown transformer norm"),
    (DepthLab, {"depth": 3}, "Mix-LN at depth 3 has no Post-LN block"),
    (LandscapeLab, {"grid": 1000}, "grid points per axis"),
    (LandscapeLab, {"lr": -1.0}, "lr must be > 0"),
    (CurvatureLab, {"model": "convnet", "width": 256, "depth": 4}, "78.3M parameters; at most 8M"),
])
def test_bad_input_is_a_message(cls, setup, message, tmp_path):
    lab = _small(cls, tmp_path, **setup)
    assert lab.start() is False and not lab.running
    assert lab.alert.visible and message in lab.alert.object
    assert lab.status.object.startswith("not started")


def test_diverged_run_is_marked_and_not_measured(tmp_path):
    lab = _small(CurvatureLab, tmp_path, batch_sizes=[8, 32], max_iter=10, steps=10)
    assert lab.start()
    _run_to_end(lab)
    assert lab.result is not None and len(lab.plots[1].object.data[0].x) == 2
    lab.param.update(norm="none", lr=1e6, steps=60)  # the next run diverges
    assert lab.start()
    _run_to_end(lab)
    assert "diverged at step" in lab.status.object
    assert lab.loss_fig.data[-1].marker.symbol == "x"
    # nothing measured, and nothing of the previous run's measurement left on the page
    assert lab.result is None
    assert all(trace.x is None or len(trace.x) == 0 for p in lab.plots for trace in p.object.data)


def test_landscape_clears_the_previous_slices_and_titles_what_it_measured(tmp_path):
    lab = _small(LandscapeLab, tmp_path, dims=2, grid=5)
    assert lab.start()
    _run_to_end(lab)
    assert lab.contour_plot.object.data and lab.surface_plot.object.data[0].z is not None
    lab.param.update(dims=1, batch_size=64)
    assert lab.start()
    lab.direction = "stored run"  # picked during the run: this run's line is still random
    _run_to_end(lab)
    assert len(lab.line_plot.object.data[0].x) == 5
    empty = pd.DataFrame({"metric": [], "alpha": [], "beta": [], "value": []})
    assert lab.contour_plot.object.to_json() == contour_figure(empty).to_json()
    assert lab.surface_plot.object.to_json() == surface_figure(empty).to_json()
    assert "stored run" not in (lab.line_plot.object.layout.title.text or "")


def test_landscape_stored_run_deleted_since_listed_is_a_message(tmp_path):
    from workbench.store import RunStore

    lab = _small(LandscapeLab, tmp_path, dims=1, grid=5)
    assert lab.start()
    _run_to_end(lab)
    lab.param.update(direction="stored run", batch_size=64)
    gone = lab.other_run
    RunStore(tmp_path / "runs").delete(gone)
    assert lab.start() is False and not lab.running
    assert f"stored run {gone} is no longer in the store" in lab.alert.object
    assert lab.other_run is None and gone not in lab.param.other_run.objects  # list refreshed


def test_stop_during_the_measurement_keeps_the_trained_run(tmp_path):
    """A ConvNet's Hessians at B = 8 and 32 take tens of seconds: Stop ends the measurement
    within a second; the trained run is kept (saved), and the page says what happened."""
    from workbench.store import RunStore

    lab = _small(CurvatureLab, tmp_path, model="convnet", steps=10, batch_sizes=[8, 32],
                 num_batches=2, max_iter=200)
    assert lab.start()
    deadline = time.monotonic() + 60
    while lab.jobs[0].state != "probing":
        lab.refresh()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    lab.refresh()
    assert lab.status.object.startswith("measuring the trained model")
    t0 = time.monotonic()
    lab.stop()
    lab.refresh()
    assert lab.status.object == "stopping…"  # not overwritten by "measuring…"
    lab.join(5)
    assert time.monotonic() - t0 < 1.5
    _run_to_end(lab, 5)
    (run_id,) = RunStore(tmp_path / "runs").run_ids()
    assert lab.status.object == (f"done: convnet/batch B=32 trained and saved as `{run_id}`; its "
                                 "measurement was stopped")
    assert lab.result is None and not lab.alert.visible


@pytest.mark.parametrize("factory", [curvature_app, depth_app, landscape_app])
def test_layouts(factory):
    names = {type(o).__name__ for o in factory(store_root=None, template=False).select()}
    assert {"Button", "Progress", "Plotly", "Alert"} <= names


@pytest.mark.parametrize("cls", LABS)
def test_form_follows_the_declared_order_with_view_controls_last(cls, tmp_path):
    """``pn.Param`` alone orders by declaration (the base class's parameters first): the form
    follows ``controls`` and puts the drawing-only ``smoothing`` after them."""
    import panel as pn

    lab = cls(store_root=tmp_path / "runs")
    form = lab.view()[0][0]
    shown = [w.name for piece in form if isinstance(piece, pn.Param) for w in piece.layout]
    wanted = [lab.param[name].label for name in (*lab.controls, *lab.view_controls)]
    assert shown == [label for label in wanted if label in shown]
    assert shown[-1] == "Loss smoothing (EMA)"
    groups = sum(not isinstance(piece, pn.Param) for piece in form)  # button/box groups
    assert len(shown) + groups == len(wanted)
