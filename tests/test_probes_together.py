"""Layer norms, channel health and smoothness run together (and inside a training step): the
same rows as each probe on its own, for fewer passes."""
import functools

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.data import DataConfig, make_dataset
from workbench.models import ConvNetConfig, MLPConfig, build_model, fit_to_data
from workbench.probes import PROBES, channel_health, layer_norms, smoothness, smoothness_small
from workbench.probes._tidy import tidy_parts
from workbench.probes.together import FUSABLE, Together, run_together
from workbench.train import TrainConfig, every, resolve_probes, train
from workbench.utils import preserved_state

SMALL = DataConfig(name="gaussian_mixture", n_train=512, n_test=256)
KEY = ["step", "probe", "metric", "layer"]


def _setup(model_cfg, data):
    ds = make_dataset(data)
    torch.manual_seed(0)
    model = build_model(fit_to_data(model_cfg, ds.input_shape, ds.num_outputs, ds.task)).train()
    return model, (ds.x_train[:24], ds.y_train[:24]), ds.loss_fn


def _state(model):
    return ([p.detach().clone() for p in model.parameters()],
            [b.detach().clone() for b in model.buffers()])


@pytest.mark.parametrize("model_cfg, data", [
    (MLPConfig(depth=3, width=16, norm="batch"), SMALL),
    (MLPConfig(depth=2, width=16, norm="batch_channel", residual=True), SMALL),
    (ConvNetConfig(stages=2, channels=8, norm="group", norm_options={"groups": 2}),
     DataConfig(name="shapes", n_train=64, n_test=32)),
])
def test_together_equals_each_probe_alone_and_leaves_the_model(model_cfg, data):
    model, batch, loss_fn = _setup(model_cfg, data)
    params, buffers = _state(model)
    alone = pd.concat([layer_norms(model, batch, loss_fn), channel_health(model, batch, loss_fn),
                       smoothness_small(model, batch, loss_fn, lr=0.1)], ignore_index=True)
    both = run_together(model, batch, loss_fn, lr=0.1)
    pd.testing.assert_frame_equal(alone, both)
    after_params, after_buffers = _state(model)
    assert all(torch.equal(a, b) for a, b in zip(params, after_params))
    assert all(torch.equal(a, b) for a, b in zip(buffers, after_buffers))
    # the other subsets, and the full smoothness grid
    pd.testing.assert_frame_equal(
        pd.concat([layer_norms(model, batch, loss_fn), channel_health(model, batch, loss_fn)],
                  ignore_index=True),
        run_together(model, batch, loss_fn, names=["layer_norms", "channel_health"]))
    pd.testing.assert_frame_equal(
        pd.concat([channel_health(model, batch, loss_fn, mode="eval"),
                   smoothness(model, batch, loss_fn, mode="eval")], ignore_index=True),
        run_together(model, batch, loss_fn, names=["channel_health", "smoothness"], mode="eval"))


class _TwoLayersOneName(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(6, 5), torch.nn.Linear(5, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))

    def named_layers(self):
        return [("x", self.a), ("x", self.b)]


def test_layer_norms_with_smoothness_keep_each_layer_whatever_its_name():
    """With smoothness, layer_norms take its per-layer norms, layer by layer: a weight on the
    root module (layer "") and two layers of one name keep rows of their own."""
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g))
    loss_fn = torch.nn.functional.cross_entropy
    torch.manual_seed(0)
    for model in (torch.nn.Linear(6, 3), _TwoLayersOneName()):
        alone = layer_norms(model, batch, loss_fn)
        both = run_together(model, batch, loss_fn, names=["layer_norms", "smoothness_small"])
        pd.testing.assert_frame_equal(alone, both[both.probe == "layer_norms"])
        assert alone.value.nunique() == len(alone)  # (the two "x" layers differ)


def test_finish_inside_a_step_restores_weights_and_entry_buffers():
    model, batch, loss_fn = _setup(MLPConfig(depth=2, width=16, norm="batch_channel"), SMALL)
    probe = Together(["layer_norms", "channel_health", "smoothness_small"])
    with preserved_state(model):  # the reference: the probe run before the step
        expected = probe(model, batch, loss_fn, lr=0.1)
    capture = probe.begin(model)
    loss = loss_fn(model(batch[0]), batch[1])  # the "training" forward moves the BCN buffers
    capture.close()
    loss.backward()
    params, buffers = _state(model)
    got = tidy_parts(probe.finish(capture, batch, loss_fn, loss, [p.grad for p in capture.params],
                                  lr=0.1))
    pd.testing.assert_frame_equal(expected, got)
    after_params, after_buffers = _state(model)
    assert all(torch.equal(a, b) for a, b in zip(params, after_params))
    assert all(torch.equal(a, b) for a, b in zip(buffers, after_buffers))
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("norm, micro", [("batch", None), ("batch_channel", None), ("power", None),
                                         ("batch", 8)])
def test_training_with_the_preset_gives_the_probes_rows_and_the_same_curve(norm, micro):
    cfg = TrainConfig(model=MLPConfig(depth=2, width=16, norm=norm), data=SMALL, steps=15,
                      batch_size=32, micro_batch=micro, lr=0.07, eval_every=0)
    fused = train(cfg, probes="standard", schedule=every(4))
    # the same probes as plain callables: not fused, run before the step
    alone = {"layer_norms": functools.partial(layer_norms),
             "channel_health": functools.partial(channel_health),
             "smoothness_small": functools.partial(smoothness, num_etas=2)}
    separate = train(cfg, probes=alone, schedule=every(4))
    plain = train(cfg)
    np.testing.assert_array_equal(fused.metric("loss").values, plain.metric("loss").values)
    a, b = (r.frame[~r.frame.probe.isin(["train", "eval"])].sort_values(KEY, kind="stable", ignore_index=True)
            for r in (fused, separate))
    assert len(a) == len(b) > 0 and sorted(a.step.unique()) == [0, 4, 8, 12, 14]
    pd.testing.assert_frame_equal(a.drop(columns="run_id"), b.drop(columns="run_id"))


@pytest.mark.parametrize("name", FUSABLE)
def test_one_probe_alone_runs_in_the_step_with_the_rows_it_gives_before_the_step(name):
    cfg = TrainConfig(model=MLPConfig(depth=2, width=16, norm="batch"), data=SMALL, steps=9,
                      batch_size=32, lr=0.07, eval_every=0)
    in_step = train(cfg, probes=[name], schedule=every(4))
    # the registered function as a plain callable: not wrapped, run before the step
    before = train(cfg, probes={name: functools.partial(PROBES[name])}, schedule=every(4))
    a, b = (r.frame[~r.frame.probe.isin(["train", "eval"])].sort_values(KEY, kind="stable", ignore_index=True)
            for r in (in_step, before))
    assert len(a) == len(b) > 0 and sorted(a.step.unique()) == [0, 4, 8]
    pd.testing.assert_frame_equal(a.drop(columns="run_id"), b.drop(columns="run_id"))
    np.testing.assert_array_equal(in_step.metric("loss").values, train(cfg).metric("loss").values)


def test_the_trainer_passes_its_learning_rate_to_smoothness():
    cfg = TrainConfig(model=MLPConfig(depth=2, width=16, norm="batch"), data=SMALL, steps=5,
                      batch_size=32, lr=0.2)
    for probes in (["smoothness_small"], "standard"):
        f = train(cfg, probes=probes, schedule=every(4)).frame
        f = f[f.probe == "smoothness"].pivot_table(index=["step", "layer"], columns="metric",
                                                   values="value")[["lr_effective", "weight_norm"]].dropna()
        assert len(f) >= 4  # two steps x two layers at least
        np.testing.assert_allclose(f.lr_effective * f.weight_norm ** 2, 0.2, rtol=1e-5)
    # a partial that fixed lr keeps it
    f = train(cfg, probes={"s": functools.partial(smoothness, lr=0.01, num_etas=2)},
              schedule=every(4)).frame
    f = f[f.probe == "smoothness"].pivot_table(index=["step", "layer"], columns="metric",
                                               values="value")[["lr_effective", "weight_norm"]].dropna()
    assert len(f) >= 4
    np.testing.assert_allclose(f.lr_effective * f.weight_norm ** 2, 0.01, rtol=1e-5)


def test_which_probe_lists_are_fused():
    assert [type(f) for f in resolve_probes("standard").values()] == [Together]
    assert list(resolve_probes("cheap")) == ["layer_norms+channel_health"]
    # one alone is wrapped too (it then runs inside the training step), under its own name
    for name in FUSABLE:
        ((key, fn),) = resolve_probes([name]).items()
        assert key == name and isinstance(fn, Together) and fn.names == (name,)
    custom = functools.partial(channel_health, mode="eval")  # not the registered defaults
    assert resolve_probes({"channel_health": custom}) == {"channel_health": custom}
    both = resolve_probes(["smoothness", "smoothness_small", "layer_norms"])
    assert list(both) == ["smoothness", "smoothness_small", "layer_norms"]  # two grids: not fused
    mixed = resolve_probes(["hessian_trace", "layer_norms", "smoothness"])
    assert list(mixed) == ["hessian_trace", "layer_norms+smoothness"]
    # a preset in a list stands for its probes, each probe once
    assert list(resolve_probes(["cheap", "hessian_trace", "layer_norms"])) == [
        "layer_norms+channel_health", "hessian_trace"]
    assert list(resolve_probes(["standard"])) == list(resolve_probes("standard"))
    with pytest.raises(ValueError, match="unknown probe 'cheep'; choose one of: .* or a preset"):
        resolve_probes(["cheep"])


def test_bad_together_input():
    with pytest.raises(ValueError, match="hessian_trace.*choose one of"):
        Together(["layer_norms", "hessian_trace"])
    with pytest.raises(ValueError, match="one smoothness variant"):
        Together(["smoothness", "smoothness_small"])
    with pytest.raises(ValueError, match="mode"):
        Together(["layer_norms"], mode="test")


def test_probe_callback_streams_every_probe_frame_as_stored():
    cfg = TrainConfig(model=MLPConfig(depth=2, width=16, norm="batch"), data=SMALL, steps=9,
                      batch_size=32, eval_every=0)
    seen = []

    def gap(model, batch, loss_fn):  # a callable without a probe column: named by its key
        return pd.DataFrame({"metric": ["gap"], "value": [1.0]})

    run = train(cfg, probes={"layer_norms": layer_norms, "smoothness_small": smoothness_small,
                             "gap": gap}, schedule=every(4),
                probe_callback=lambda step, frame: seen.append(frame.assign(step=step)))
    streamed = pd.concat(seen, ignore_index=True)
    assert set(streamed.probe) == {"layer_norms", "smoothness", "gap"}
    assert sorted(streamed.step.unique()) == [0, 4, 8]
    stored = run.frame[~run.frame.probe.isin(["train", "eval"])]
    key = ["step", "probe", "metric", "layer"]
    a = stored.sort_values(key, ignore_index=True)
    b = streamed.sort_values(key, ignore_index=True)
    assert a[key].astype(str).equals(b[key].astype(str))
    np.testing.assert_array_equal(a.value.values, b.value.values)


def test_a_reused_capture_refreshes_its_snapshots_and_the_probe_still_pickles():
    import pickle

    model, batch, loss_fn = _setup(MLPConfig(depth=2, width=16, norm="batch"), SMALL)
    probe = Together(["layer_norms", "channel_health", "smoothness_small"])
    frames = []
    for _ in range(3):  # three "training" steps: each moves the BN buffers
        with preserved_state(model):
            expected = probe(model, batch, loss_fn, lr=0.1)
        capture = probe.begin(model, reuse=True)
        loss = loss_fn(model(batch[0]), batch[1])
        capture.close()
        loss.backward()
        _, buffers = _state(model)
        frames.append(tidy_parts(probe.finish(capture, batch, loss_fn, loss,
                                              [p.grad for p in capture.params], lr=0.1)))
        pd.testing.assert_frame_equal(expected, frames[-1])  # before-step buffers, every time
        assert all(torch.equal(a, b) for a, b in zip(buffers, _state(model)[1]))  # entry kept
        model.zero_grad()
    clone = pickle.loads(pickle.dumps(probe))  # the per-model cache stays behind
    assert clone.names == probe.names and not hasattr(clone, "_cached")
