"""on_batch: a probe measured on one fixed batch at every step, whatever the trainer hands it."""
import functools
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.data import DataConfig, make_dataset
from workbench.models import MLPConfig
from workbench.probes import channel_health, on_batch, smoothness, smoothness_small
from workbench.train import TrainConfig, every, train

SMALL = DataConfig(name="gaussian_mixture", n_train=256, n_test=64)
CFG = TrainConfig(model=MLPConfig(depth=2, width=16, norm="batch"), data=SMALL, steps=9,
                  batch_size=16, lr=0.2, eval_every=0)


def _held_out():
    ds = make_dataset(SMALL)
    return ds.x_test, ds.y_test


class Recorder:
    """A probe that notes the inputs it was given (a module-level class: it pickles)."""

    def __init__(self):
        self.seen = []

    def __call__(self, model, batch, loss_fn):
        self.seen.append(batch[0].clone())
        return pd.DataFrame({"probe": ["rec"], "metric": ["n"], "value": [float(len(batch[0]))]})


def test_the_probe_sees_the_fixed_batch_every_time_and_measures_it():
    x, y = _held_out()
    rec = Recorder()
    run = train(CFG, probes={"rec": on_batch(rec, (x, y))}, schedule=every(3), flat_params=False)
    assert len(rec.seen) >= 3 and all(torch.equal(s, x) for s in rec.seen)
    # the rows are the wrapped probe's own: channel health of the trained model on the batch
    run = train(CFG, probes={"health": on_batch(channel_health, (x, y))},
                schedule=lambda s, n: s == n - 1)
    got = run.frame[run.frame.probe == "channel_health"]
    alone = channel_health(run.model, (x, y))  # the trained model: the same rows (other values)
    assert set(got.step) == {CFG.steps - 1}
    assert sorted(zip(got.layer, got.metric)) == sorted(zip(alone.layer, alone.metric))


def test_the_learning_rate_reaches_a_probe_that_takes_one_and_a_fixed_one_is_kept():
    x, y = _held_out()

    def lr_of(probes):
        f = train(CFG, probes=probes, schedule=every(4)).frame
        f = f[(f.probe == "smoothness") & (f.layer != "")].pivot_table(
            index=["step", "layer"], columns="metric", values="value")
        return (f.lr_effective * f.weight_norm ** 2).to_numpy()

    np.testing.assert_allclose(lr_of({"s": on_batch(smoothness_small, (x, y))}), 0.2, rtol=1e-5)
    fixed = on_batch(functools.partial(smoothness, lr=0.01, num_etas=2), (x, y))
    np.testing.assert_allclose(lr_of({"s": fixed}), 0.01, rtol=1e-5)
    # a probe without an lr keyword is not given one
    run = train(CFG, probes={"h": on_batch(channel_health, (x, y))}, schedule=every(4))
    assert run.status == "finished"


def test_it_pickles_and_says_what_is_wrong():
    x, y = _held_out()
    probe = pickle.loads(pickle.dumps(on_batch(channel_health, (x, y))))
    assert torch.equal(probe.batch[0], x) and probe.__name__ == "channel_health"
    with pytest.raises(TypeError, match="probe function"):
        on_batch("channel_health", (x, y))
    with pytest.raises(ValueError, match="two tensors"):
        on_batch(channel_health, x)
    with pytest.raises(ValueError, match="same number"):
        on_batch(channel_health, (x, y[:3]))
