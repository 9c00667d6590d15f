"""The trainer: learns, is reproducible, reports divergence and cancellation, keeps rows."""
import math
import threading

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.data import DataConfig, make_dataset
from workbench.models import ConvNetConfig, MLPConfig, TransformerConfig
from workbench.store import COLUMNS, RunStore
from workbench.train import (
    DATASET_INPUTS,
    TRAIN_METRICS,
    CancelToken,
    TrainConfig,
    every,
    log_spaced,
    train,
)

SMALL = DataConfig(name="gaussian_mixture", n_train=512, n_test=256)


def test_lowers_loss_on_gaussian_mixture():
    cfg = TrainConfig(model=MLPConfig(depth=2, width=64, norm="batch"), data=SMALL, steps=150,
                      batch_size=32, lr=0.05)
    run = train(cfg)
    assert run.status == "finished" and run.steps_done == 150
    loss = run.metric("loss")
    assert loss.iloc[-20:].mean() < 0.5 * loss.iloc[:5].mean()
    assert run.final("accuracy", "eval") > 0.6
    assert set(run.frame.columns) >= set(COLUMNS)
    train_rows = run.frame[run.frame.probe == "train"]
    assert set(train_rows.metric) == set(TRAIN_METRICS)
    assert (train_rows.groupby("step").size() == len(TRAIN_METRICS)).all()  # tidy: one row per step x metric


def test_lowers_loss_on_digits():
    cfg = TrainConfig(model=MLPConfig(depth=2, width=64, norm="layer"),
                      data=DataConfig(name="digits", n_train=1000, n_test=500), steps=150,
                      batch_size=32, optimizer="adam", lr=3e-3)
    run = train(cfg)
    assert run.status == "finished"
    assert run.final("accuracy", "eval") > 0.85  # chance is 0.1
    assert run.metric("loss").iloc[-10:].mean() < 0.2 * run.metric("loss").iloc[:3].mean()


def test_same_seed_same_frame_different_seed_differs():
    cfg = TrainConfig.smoke()
    a, b = train(cfg), train(cfg)
    cols = ["run_id", "step", "probe", "metric", "layer", "value"]
    ta = a.frame[a.frame.metric != "wall_time"][cols].reset_index(drop=True)
    tb = b.frame[b.frame.metric != "wall_time"][cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(ta, tb)
    c = train(cfg.replace(seed=1))
    assert c.run_id != a.run_id
    assert not a.metric("loss").equals(c.metric("loss"))


def test_huge_lr_diverges_and_keeps_rows(tmp_path):
    cfg = TrainConfig(model=MLPConfig(depth=2, width=32), data=SMALL, steps=200, batch_size=32,
                      lr=1e6, momentum=0.9)
    run = train(cfg, store=RunStore(tmp_path))
    assert run.status == "diverged"
    assert run.diverged_step is not None and run.diverged_step < 199
    loss = run.metric("loss")
    assert loss.index.max() == run.diverged_step and not math.isfinite(loss.iloc[-1])
    assert len(loss) == run.diverged_step + 1  # every step up to divergence kept
    stored = RunStore(tmp_path).get(run.run_id)
    assert stored.status == "diverged" and len(stored.frame) == len(run.frame)


@pytest.mark.parametrize("probe", ["hessian_top_eigs", "hessian_trace", "hessian_vs_batch_size"])
def test_a_curvature_probe_on_a_blown_up_model_leaves_the_run_diverged(probe, tmp_path):
    """The probes run before the step's forward: on the step where the loss turns NaN/inf,
    Lanczos fails on it first. The run is still diverged at that step with the same rows as
    without the probe (the NaN loss included), not failed; a probe that fails on a finite loss
    still fails it."""
    cfg = TrainConfig(model=MLPConfig(depth=2, width=16), data=SMALL, steps=20, lr=1e6)
    plain = train(cfg)
    run = train(cfg, probes=[probe], schedule=every(1), store=RunStore(tmp_path))
    assert plain.status == run.status == "diverged" and run.error is None
    assert run.diverged_step == plain.diverged_step > 0

    def train_rows(r):  # the per-step metrics but the wall clock
        f = r.frame[(r.frame.probe == "train") & (r.frame.metric != "wall_time")]
        return f[COLUMNS].reset_index(drop=True)

    pd.testing.assert_frame_equal(train_rows(run), train_rows(plain))
    assert set(run.frame.probe) >= {"train", probe}
    assert RunStore(tmp_path).get(run.run_id).status == "diverged"

    def broken(model, batch, loss_fn):
        raise RuntimeError("a bug in a probe")

    with pytest.warns(RuntimeWarning, match="a bug in a probe"):
        failed = train(cfg.replace(lr=0.05), probes={"broken": broken})
    assert failed.status == "failed" and "a bug in a probe" in failed.error


def test_cancel_stops_between_steps(tmp_path):
    token = CancelToken()
    seen = []

    def on_step(step, metrics):
        seen.append(step)
        if step == 4:
            token.cancel()

    run = train(TrainConfig.smoke().replace(steps=1000), cancel=token, callback=on_step,
                store=str(tmp_path))
    assert run.status == "cancelled" and run.steps_done == 5 and seen == list(range(5))
    assert run.metric("loss").index.max() == 4
    assert RunStore(tmp_path).get(run.run_id).status == "cancelled"


def test_callback_gets_the_test_metrics_of_every_evaluation_but_the_last():
    seen = {}
    run = train(TrainConfig.smoke().replace(steps=25, eval_every=10),
                callback=lambda step, metrics: seen.setdefault(step, dict(metrics)))
    tested = {step: m for step, m in seen.items() if "test_loss" in m}
    assert sorted(tested) == [9, 19]  # evaluated after steps 9 and 19; after 24 only in the rows
    evals = run.frame[run.frame.probe == "eval"].pivot(index="step", columns="metric", values="value")
    assert list(evals.index) == [10, 20, 25]
    for step, m in tested.items():
        assert m["test_loss"] == evals.loss[step + 1]
        assert m["test_accuracy"] == evals.accuracy[step + 1]
    assert all(set(m) == set(TRAIN_METRICS) for step, m in seen.items() if step not in tested)
    train_rows = run.frame[run.frame.probe == "train"]
    assert set(train_rows.metric) == set(TRAIN_METRICS)  # not in the training rows


def test_cancel_from_another_thread():
    token = CancelToken()
    result = {}
    cfg = TrainConfig.smoke().replace(steps=100_000)
    thread = threading.Thread(target=lambda: result.setdefault("run", train(cfg, cancel=token)))
    thread.start()
    threading.Timer(0.5, token.cancel).start()
    thread.join(timeout=10)
    assert not thread.is_alive() and result["run"].status == "cancelled"


def test_failure_is_recorded_not_raised():
    def broken_probe(model, batch, loss_fn):
        raise RuntimeError("probe exploded")

    with pytest.warns(RuntimeWarning, match="probe exploded"):
        run = train(TrainConfig.smoke(), probes={"broken": broken_probe}, schedule=every(5))
    assert run.status == "failed" and "probe exploded" in run.error


def test_probes_run_on_schedule_and_leave_training_unchanged():
    cfg = TrainConfig.smoke().replace(model=MLPConfig(depth=2, width=16, norm="batch"))
    plain = train(cfg)
    probed = train(cfg, probes=["layer_norms"], schedule=every(5))
    rows = probed.frame[probed.frame.probe == "layer_norms"]
    assert sorted(rows.step.unique()) == [0, 5, 10, 15, 19]
    assert {"hvps", "iters", "converged"} <= set(probed.frame.columns)
    # probes leave the model exactly as found: the training curve is unchanged
    assert probed.metric("loss").equals(plain.metric("loss"))


def test_a_preset_leaves_out_what_the_model_cannot_be_measured_by():
    """A linear-activation MLP has no activations for channel health: the presets leave it out
    (warned, noted in the meta) instead of failing the run; named on its own it still fails."""
    cfg = TrainConfig.smoke().replace(model=MLPConfig(depth=2, width=16, activation="linear"))
    with pytest.warns(RuntimeWarning, match="channel_health left out: channel_health needs "
                                            "activation modules"):
        run = train(cfg, probes="standard")
    assert run.status == "finished"
    assert set(run.frame.probe) == {"train", "eval", "layer_norms", "smoothness"}
    assert list(run.meta["skipped_probes"]) == ["channel_health"]
    alone = train(cfg, probes=["channel_health"])
    assert alone.status == "failed" and "needs activation modules" in alone.error
    relu = train(TrainConfig.smoke(), probes="standard")  # nothing left out where it applies
    assert "channel_health" in set(relu.frame.probe) and "skipped_probes" not in relu.meta


def test_callable_probe_rows_get_their_name_step_and_whole_model_layer():
    import pandas as pd

    def gap(model, batch, loss_fn):  # no probe or layer column: named by its key, layer ""
        return pd.DataFrame({"metric": ["gap"], "value": [1.0]})

    cfg = TrainConfig.smoke().replace(model=MLPConfig(depth=2, width=16, norm="batch"))
    from workbench.probes import layer_norms

    run = train(cfg, probes={"gap": gap, "layer_norms": layer_norms}, schedule=every(10))
    rows = run.frame[run.frame.probe == "gap"]
    assert rows.step.tolist() == [0, 10, 19] and (rows.layer == "").all()
    assert (run.frame[run.frame.probe == "layer_norms"].layer != "").all()

    def clashing(model, batch, loss_fn):
        return pd.DataFrame({"metric": ["x"], "value": [1.0], "step": [7]})

    with pytest.warns(RuntimeWarning, match="sets itself"):
        bad = train(cfg, probes={"clashing": clashing}, schedule=every(10))
    assert bad.status == "failed" and "'step'" in bad.error and bad.frame is not None


def test_log_spaced_schedule():
    s = log_spaced(5)
    steps = [t for t in range(1000) if s(t, 1000)]
    assert steps[0] == 0 and steps[-1] == 999 and 4 <= len(steps) <= 6
    assert every(10)(0, 100) and every(10)(99, 100) and not every(10)(5, 100)
    # numpy integers are integers (a loop over np.arange), bools and floats are not
    assert every(np.int64(10))(20, 100) and log_spaced(np.int64(5)).steps(1000) == s.steps(1000)
    assert log_spaced(3).steps(1) == {0}
    for bad in (True, 2.0, 0, -1):
        with pytest.raises(ValueError, match="every\\(n\\) needs a positive integer n"):
            every(bad)
    for bad in (True, 1, 4.0):
        with pytest.raises(ValueError, match="log_spaced\\(k\\) needs an integer k >= 2"):
            log_spaced(bad)
    with pytest.raises(ValueError, match="total_steps must be a positive integer, got 0"):
        log_spaced(3).steps(0)


def test_micro_batches_accumulate_to_the_full_batch_gradient():
    """Without batch-dependent norms, accumulation over micro-batches equals one big batch."""
    base = TrainConfig(model=MLPConfig(depth=2, width=16, norm="layer"), data=SMALL, steps=10,
                       batch_size=32, lr=0.1)
    a, b = train(base), train(base.replace(micro_batch=8))
    assert torch.allclose(torch.tensor(a.metric("loss").values), torch.tensor(b.metric("loss").values),
                          atol=1e-5)


def test_micro_batches_change_batchnorm():
    """With BatchNorm, micro-batches change what BN sees, so the runs differ."""
    base = TrainConfig(model=MLPConfig(depth=2, width=16, norm="batch"), data=SMALL, steps=10,
                       batch_size=32, lr=0.1)
    a, b = train(base), train(base.replace(micro_batch=4))
    assert not torch.allclose(torch.tensor(a.metric("loss").values), torch.tensor(b.metric("loss").values))


def test_batch_growth_and_lr_scaling():
    cfg = TrainConfig(model=MLPConfig(depth=1, width=16), data=SMALL, steps=30, batch_size=16,
                      batch_schedule="step", growth_every=10, max_batch_size=64,
                      lr=0.01, lr_scaling="linear", base_batch_size=16, warmup_steps=5)
    run = train(cfg)
    bs = run.metric("batch_size")
    assert list(bs.loc[[0, 10, 20, 29]]) == [16, 32, 64, 64]
    lr = run.metric("lr")
    assert lr.loc[4] == pytest.approx(0.01) and lr.loc[0] < lr.loc[4]
    assert lr.loc[15] == pytest.approx(0.02) and lr.loc[25] == pytest.approx(0.04)
    assert run.metric("examples").iloc[-1] == 10 * 16 + 10 * 32 + 10 * 64


def test_ghost_batch_growth_skips_a_last_virtual_batch_of_one():
    """Ghost BN (virtual batches of 3) on an MLP growing 2 -> 4 -> 8: 4 would leave one example
    in its last virtual batch (it used to fail at that step), so the run trains at 5."""
    cfg = TrainConfig.smoke().replace(
        model=MLPConfig(depth=2, width=16, norm="ghost_batch", norm_options={"virtual_batch_size": 3}),
        batch_size=2, max_batch_size=8, batch_schedule="step", growth_every=5)
    run = train(cfg)
    assert run.status == "finished", run.error
    assert list(run.metric("batch_size")) == [2] * 5 + [5] * 5 + [8] * (cfg.steps - 10)
    assert cfg.schedule_virtual_batch() == 3
    assert cfg.replace(batch_size=4, micro_batch=2).schedule_virtual_batch() is None  # passes of 2


def test_norm_test_grows_batch_when_noise_dominates():
    cfg = TrainConfig(model=MLPConfig(depth=1, width=16), data=SMALL, steps=40, batch_size=8,
                      batch_schedule="norm_test", norm_test_theta=0.1, norm_test_every=5,
                      max_batch_size=128, lr=0.05)
    run = train(cfg)
    bs = run.metric("batch_size")
    assert bs.is_monotonic_increasing and bs.iloc[-1] > 8


@pytest.mark.parametrize("model, data", [
    (TransformerConfig(depth=2, d_model=16, norm="rms", placement="mix", mix_fraction=0.5),
     DataConfig(name="markov", n_train=256, n_test=64)),
    (MLPConfig(depth=2, width=16, norm="batch_channel", norm_options={"groups": 4}, ws=True),
     DataConfig(name="teacher", n_train=256, n_test=64)),
    (ConvNetConfig(stages=1, channels=8, norm="ghost_batch", norm_options={"virtual_batch_size": 4}),
     DataConfig(name="shapes", n_train=128, n_test=64)),
])
def test_every_model_kind_trains(model, data):
    for optimizer in ("lars", "lamb"):
        run = train(TrainConfig(model=model, data=data, steps=8, batch_size=16, optimizer=optimizer,
                                lr=0.01))
        assert run.status == "finished", run.error


def test_dataset_inputs_table_matches_datasets():
    for name, kind in DATASET_INPUTS.items():
        ds = make_dataset(DataConfig(name=name, n_train=16, n_test=8))
        got = "tokens" if ds.task == "lm" else ("images" if len(ds.input_shape) == 3 else "features")
        assert got == kind, name


def test_config_round_trip_and_stable_id():
    cfg = TrainConfig(model=MLPConfig(norm="group", norm_options={"groups": 4}), micro_batch=8)
    back = TrainConfig.from_dict(cfg.to_dict())
    assert back == cfg and back.run_id == cfg.run_id
    assert cfg.replace(lr=0.1).run_id != cfg.run_id


@pytest.mark.parametrize("changes, match", [
    (dict(optimizer="adam", nesterov=True), r"nesterov=True applies to optimizers sgd, lars; got .adam."),
    (dict(optimizer="adagrad"), r"unknown optimizer 'adagrad'.*sgd, adam, adamw, lars, lamb"),
    (dict(batch_size=0), r"batch_size must be > 0"),
    (dict(steps=-3), r"steps must be > 0"),
    (dict(micro_batch=5), r"micro_batch=5 does not divide batch_size=32.*1, 2, 4, 8, 16, 32"),
    (dict(lr_scaling="cubic"), r"unknown lr_scaling 'cubic'.*none, linear, sqrt"),
    (dict(batch_schedule="grow"), r"unknown batch_schedule 'grow'"),
    (dict(batch_schedule="step"), r"needs max_batch_size"),
    (dict(max_batch_size=16), r"max_batch_size=16 is smaller than batch_size=32"),
    (dict(shuffle="twice"), r"unknown shuffle 'twice'.*reshuffle, single, none"),
    (dict(batch_size=4096), r"batch size 4096 is larger than the training set"),
    (dict(lr=float("nan")), r"lr must be > 0"),
    (dict(data=DataConfig(name="markov")), r"model 'mlp' cannot take data set 'markov'.*transformer"),
    (dict(model=ConvNetConfig(), data=DataConfig(name="teacher")), r"'convnet' cannot take.*shapes, digits"),
    (dict(momentum=1.0), r"momentum must be in \[0, 1\), got 1.0"),
    (dict(optimizer="lars", momentum=5.0), r"momentum must be in \[0, 1\), got 5.0"),
    (dict(steps=5, warmup_steps=10), r"warmup_steps=10 is more than steps=5"),
    (dict(model=MLPConfig(norm="batch"), batch_size=3, batch_schedule="norm_test", max_batch_size=64),
     r"norm='batch' needs 2 examples per chunk: batch_size must be at least 4, got 3"),
])
def test_bad_train_configs(changes, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**changes)


@pytest.mark.parametrize("norm, batch_size, cap", [
    ("batch", 6, 64), ("batch", 7, 64), ("ghost_batch", 6, 64), ("batch_channel", 5, 64),
    ("none", 7, 64), ("batch", 16, 37),
])
def test_norm_test_runs_at_batch_sizes_without_four_equal_chunks(norm, batch_size, cap):
    """The norm test splits a batch without micro-batches into chunks of B // k (the first k m
    examples): B = 6, 7 or 37 have no four equal chunks, which once meant chunks of one example
    that batch statistics cannot run on. It must train, test and grow like any batch size."""
    cfg = TrainConfig(model=MLPConfig(depth=2, width=16, norm=norm), data=SMALL,
                      batch_size=batch_size, steps=40, batch_schedule="norm_test",
                      max_batch_size=cap, norm_test_every=2, norm_test_theta=0.05)
    run = train(cfg)
    assert run.status == "finished", run.error
    sizes = run.metric("batch_size")
    assert sizes.iloc[0] == batch_size and sizes.iloc[-1] > batch_size  # the test ran, and grew
    assert sizes.max() <= cap


def test_concurrent_runs_are_reproducible():
    """Runs in threads (as dashboards do) give the same frames as runs one after another."""
    cfgs = [TrainConfig.smoke().replace(seed=s) for s in (0, 1, 2)]
    alone = [train(c).metric("loss") for c in cfgs]
    results = {}
    threads = [threading.Thread(target=lambda c=c: results.setdefault(c.seed, train(c)))
               for c in cfgs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c, ref in zip(cfgs, alone):
        assert results[c.seed].metric("loss").equals(ref)


def test_recorded_lr_follows_the_schedule_every_step():
    from workbench.train import lr_at

    cfg = TrainConfig.smoke().replace(steps=30, warmup_steps=5, lr_decay="cosine", lr=0.1)
    lr = train(cfg).metric("lr")
    expected = [lr_at(s, total_steps=30, base_lr=0.1, batch_size=16, base_batch_size=32,
                      warmup_steps=5, decay="cosine") for s in range(30)]
    assert lr.tolist() == pytest.approx(expected)
    assert len(set(lr.round(12))) == 29  # new value every step, but warm-up ends where cosine starts


def test_the_finished_progress_bar_shows_the_last_steps_loss(capsys):
    run = train(TrainConfig.smoke().replace(steps=12), progress=True)
    last = capsys.readouterr().err.split("\r")[-1]  # the bar as it was left
    assert "12/12" in last and f"loss={run.metric('loss').iloc[-1]:.4f}" in last, last


def test_a_curvature_probe_on_a_non_finite_held_out_batch_is_skipped_with_a_warning():
    """The step's own loss is finite but the probe's batch gives NaN (a held-out batch the model
    overflows on, or one holding NaN): that probe has no rows at that step and says why; the
    run and the other probes go on. Any other failure of a probe still fails the run."""
    from workbench.probes import on_batch
    from workbench.probes.hessian_top_eigs import hessian_top_eigs

    cfg = TrainConfig(model=MLPConfig(depth=2, width=16), data=SMALL, steps=6, lr=0.05)
    from workbench.probes.layer_norms import layer_norms

    dim = make_dataset(SMALL).x_train.shape[1]
    bad = torch.full((8, dim), float("nan")), torch.zeros(8, dtype=torch.long)
    with pytest.warns(UserWarning, match="probe 'held_out' skipped: the loss at the current weights is nan"):
        run = train(cfg, probes={"held_out": on_batch(hessian_top_eigs, bad), "layer_norms": layer_norms},
                    schedule=every(2))
    assert run.status == "finished"
    assert "held_out" not in set(run.frame.probe)
    assert sorted(run.frame[run.frame.probe == "layer_norms"].step.unique()) == [0, 2, 4, 5]
