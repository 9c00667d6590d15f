"""Data sets, losses and the batch sampler: determinism, shapes, oracles, and every error message."""
from __future__ import annotations

import dataclasses
import math
import pickle

import numpy as np
import pytest
import torch

from workbench.data import (
    DATASETS,
    BatchSampler,
    DataConfig,
    Dataset,
    accuracy_for_task,
    loss_for_task,
    make_dataset,
    split_micro,
)
from workbench.data import digits as digits_module
from workbench.data import markov as markov_module
from workbench.data._spec import generator

SMALL = {"n_train": 200, "n_test": 50}


def small(name: str, seed: int = 0, **options) -> DataConfig:
    return DataConfig(name=name, seed=seed, options=options, **SMALL)


# --- determinism -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(DATASETS))
def test_same_config_gives_bitwise_identical_tensors(name):
    a, b = make_dataset(small(name)), make_dataset(small(name))
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


@pytest.mark.parametrize("name", list(DATASETS))
def test_different_seed_gives_different_data(name):
    a, b = make_dataset(small(name, seed=0)), make_dataset(small(name, seed=1))
    assert not torch.equal(a.x_train, b.x_train)
    assert not torch.equal(a.x_test, b.x_test)


@pytest.mark.parametrize("name", list(DATASETS))
def test_make_dataset_leaves_global_rng_alone(name):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    make_dataset(small(name))
    assert torch.equal(torch.get_rng_state(), before)


def test_test_set_and_task_do_not_depend_on_n_train():
    a = make_dataset(DataConfig("teacher", n_train=100, n_test=50))
    b = make_dataset(DataConfig("teacher", n_train=300, n_test=50))
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_test, b.y_test)


# --- shapes, dtypes, tasks ---------------------------------------------------------------------

EXPECTED = {  # name: (task, input_shape, y_train shape per example, num_outputs, x dtype, y dtype)
    "teacher": ("regression", (32,), (1,), 1, torch.float32, torch.float32),
    "gaussian_mixture": ("classification", (32,), (), 10, torch.float32, torch.int64),
    "shapes": ("classification", (1, 16, 16), (), 6, torch.float32, torch.int64),
    "markov": ("lm", (32,), (32,), 32, torch.int64, torch.int64),
    "digits": ("classification", (1, 8, 8), (), 10, torch.float32, torch.int64),
}


@pytest.mark.parametrize("name", list(DATASETS))
def test_shapes_dtypes_and_task(name):
    task, input_shape, y_shape, num_outputs, x_dtype, y_dtype = EXPECTED[name]
    d = make_dataset(small(name))
    assert isinstance(d, Dataset) and d.name == name and d.task == task
    assert d.input_shape == input_shape and d.num_outputs == num_outputs
    assert (d.n_train, d.n_test) == (200, 50)
    assert tuple(d.x_train.shape) == (200, *input_shape)
    assert tuple(d.x_test.shape) == (50, *input_shape)
    assert tuple(d.y_train.shape) == (200, *y_shape)
    assert tuple(d.y_test.shape) == (50, *y_shape)
    assert d.x_train.dtype == x_dtype and d.y_train.dtype == y_dtype
    assert d.vocab_size == (32 if task == "lm" else None)
    if task != "regression":
        assert 0 <= int(d.y_train.min()) and int(d.y_train.max()) < num_outputs
    assert torch.isfinite(d.x_train.float()).all()


def test_options_change_shapes():
    assert make_dataset(small("shapes", channels=3, image_size=12)).input_shape == (3, 12, 12)
    assert make_dataset(small("shapes", num_classes=4)).y_train.max() == 3
    teacher = make_dataset(small("teacher", dim=5, outputs=3))
    assert teacher.input_shape == (5,) and teacher.y_train.shape == (200, 3)
    gm = make_dataset(small("gaussian_mixture", dim=7, num_classes=3))
    assert gm.input_shape == (7,) and gm.num_outputs == 3
    mk = make_dataset(small("markov", vocab_size=8, seq_len=5, order=2, branching=2))
    assert mk.input_shape == (5,) and mk.vocab_size == mk.num_outputs == 8
    assert int(mk.x_train.max()) < 8


def test_classes_are_balanced():
    y = make_dataset(small("gaussian_mixture")).y_train
    assert torch.bincount(y).tolist() == [20] * 10


# --- markov --------------------------------------------------------------------------------------

def test_markov_targets_are_inputs_shifted_by_one():
    d = make_dataset(small("markov"))
    assert torch.equal(d.x_train[:, 1:], d.y_train[:, :-1])
    assert torch.equal(d.x_test[:, 1:], d.y_test[:, :-1])
    assert d.x_train.data_ptr() != d.y_train.data_ptr()


@pytest.mark.parametrize("order", [1, 2])
def test_markov_loss_floor_matches_true_chain_nll(order):
    """The true chain's mean NLL on the data is the advertised floor (within sampling error)."""
    v, branching, seed = 8, 3, 0
    d = make_dataset(DataConfig("markov", n_train=2000, n_test=1, seed=seed,
                                options={"vocab_size": v, "seq_len": 16, "order": order,
                                         "branching": branching}))
    probs = markov_module.transitions(v, order, branching, generator(seed, "task"))
    assert ((probs > 0).sum(1) == branching).all()
    pi = markov_module.stationary(probs, v, order)
    assert torch.allclose(markov_module._step(pi, probs, v, order), pi, atol=1e-10)
    x, y = d.x_train, d.y_train  # (N, T)
    if order == 1:
        p = probs[x, y]
    else:  # the first target sees x0 only: P(x1 | x0) = pi(x0, x1) / sum_c pi(x0, c)
        first = pi.view(v, v) / pi.view(v, v).sum(1, keepdim=True)
        p = torch.cat([first[x[:, 0], y[:, 0]][:, None],
                       probs[x[:, :-1] * v + x[:, 1:], y[:, 1:]]], dim=1)
    nll = -p.log()
    assert math.isclose(float(nll.mean()), d.extra["loss_floor"], abs_tol=0.03)
    assert math.isclose(float(nll[:, 1:].mean()), d.extra["entropy"], abs_tol=0.03)
    if order == 1:
        assert d.extra["loss_floor"] == d.extra["entropy"]
    else:
        assert d.extra["loss_floor"] > d.extra["entropy"]


# --- digits --------------------------------------------------------------------------------------

def test_digits_is_the_real_sklearn_data():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    d = make_dataset(DataConfig("digits", n_train=1437, n_test=360, seed=3))
    mean, std = d.extra["mean"], d.extra["std"]
    assert abs(float(d.x_train.mean())) < 1e-4 and abs(float(d.x_train.std()) - 1) < 1e-4
    images = torch.cat([d.x_train, d.x_test]) * std + mean  # back to [0, 1]
    labels = torch.cat([d.y_train, d.y_test])
    assert images.shape == (1797, 1, 8, 8)
    assert float(images.min()) > -1e-5 and float(images.max()) < 1 + 1e-5
    # every sklearn image appears exactly once, with its label
    ours = sorted(zip((images * 16).round().to(torch.int64).flatten(1).tolist(), labels.tolist()))
    theirs = sorted(zip(bunch.images.astype(np.int64).reshape(-1, 64).tolist(), bunch.target.tolist()))
    assert ours == theirs
    raw_images, raw_labels = digits_module.load_raw()
    assert np.array_equal(raw_images[0], bunch.images[0]) and raw_labels[0] == 0
    assert np.array_equal(raw_labels, bunch.target)


# --- learnability --------------------------------------------------------------------------------

def test_gaussian_mixture_is_learnable_by_a_linear_model():
    d = make_dataset(DataConfig("gaussian_mixture", n_train=1024, n_test=512))
    w = torch.zeros(32, 10, requires_grad=True)  # plain SGD on a linear model, 200 steps
    b = torch.zeros(10, requires_grad=True)
    sampler = BatchSampler(d.n_train, seed=0)
    for _ in range(200):
        x, y = d.batch(sampler.next(64))
        loss = d.loss_fn(x @ w + b, y)
        gw, gb = torch.autograd.grad(loss, (w, b))
        with torch.no_grad():
            w -= 0.1 * gw
            b -= 0.1 * gb
    with torch.no_grad():
        acc = float(d.accuracy(d.x_test @ w + b, d.y_test))
    assert acc > 0.7  # chance is 0.1; a linear model is near Bayes-optimal here (~0.93)


# --- losses and accuracy against explicit formulas -----------------------------------------------

def test_classification_loss_and_accuracy():
    gen = torch.Generator().manual_seed(0)
    out, tgt = torch.randn(6, 4, generator=gen), torch.tensor([0, 3, 1, 1, 2, 0])
    explicit = sum(-math.log(math.exp(out[i, tgt[i]]) / out[i].exp().sum()) for i in range(6)) / 6
    fn = loss_for_task("classification")
    assert math.isclose(float(fn(out, tgt)), float(explicit), rel_tol=1e-5)
    correct = sum(int(out[i].argmax() == tgt[i]) for i in range(6))
    assert math.isclose(float(accuracy_for_task("classification")(out, tgt)), correct / 6)


def test_lm_loss_and_accuracy_average_over_all_tokens():
    gen = torch.Generator().manual_seed(1)
    out, tgt = torch.randn(3, 5, 7, generator=gen), torch.randint(0, 7, (3, 5), generator=gen)
    nll = [-torch.log_softmax(out[n, t], 0)[tgt[n, t]] for n in range(3) for t in range(5)]
    assert math.isclose(float(loss_for_task("lm")(out, tgt)), float(sum(nll) / 15), rel_tol=1e-5)
    hits = [int(out[n, t].argmax() == tgt[n, t]) for n in range(3) for t in range(5)]
    assert math.isclose(float(accuracy_for_task("lm")(out, tgt)), sum(hits) / 15, rel_tol=1e-6)


def test_regression_loss_is_plain_mse_and_has_no_accuracy():
    gen = torch.Generator().manual_seed(2)
    out, tgt = torch.randn(5, 2, generator=gen), torch.randn(5, 2, generator=gen)
    explicit = sum(float(out[i, k] - tgt[i, k]) ** 2 for i in range(5) for k in range(2)) / 10
    assert math.isclose(float(loss_for_task("regression")(out, tgt)), explicit, rel_tol=1e-5)
    assert accuracy_for_task("regression") is None
    d = make_dataset(small("teacher"))
    assert d.accuracy(out, tgt) is None
    with pytest.raises(ValueError, match=r"outputs shape \(5,\) does not match targets shape"):
        d.loss_fn(out[:, 0], tgt[:, :1])


@pytest.mark.parametrize("name", list(DATASETS))
def test_dataset_methods_use_the_picklable_task_functions(name):
    d = make_dataset(small(name))
    fn = pickle.loads(pickle.dumps(loss_for_task(d.task)))
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(8, *d.y_train.shape[1:], d.num_outputs, generator=gen)
    if d.task == "regression":
        out = out[..., 0]
    x, y = d.batch(torch.arange(8))
    assert torch.equal(x, d.x_train[:8]) and torch.equal(y, d.y_train[:8])
    assert torch.equal(d.loss_fn(out, y), fn(out, y))
    moved = d.to("cpu")
    assert moved is not d and torch.equal(moved.x_train, d.x_train) and moved.n_test == d.n_test


# --- sampler -------------------------------------------------------------------------------------

def draw(sampler: BatchSampler, sizes) -> torch.Tensor:
    return torch.cat([sampler.next(b) for b in sizes])


@pytest.mark.parametrize("mode", ["reshuffle", "single"])
def test_each_epoch_visits_every_index_once(mode):
    n = 20
    stream = draw(BatchSampler(n, shuffle=mode, seed=4), [7] * 8 + [4])  # 60 = 3 epochs
    epochs = stream.view(3, n)
    for e in range(3):
        assert sorted(epochs[e].tolist()) == list(range(n))
    if mode == "single":
        assert torch.equal(epochs[0], epochs[1]) and torch.equal(epochs[1], epochs[2])
    else:
        assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    assert not torch.equal(epochs[0], torch.arange(n))


def test_none_mode_is_in_order():
    assert draw(BatchSampler(5, shuffle="none"), [3, 3, 4]).tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]


def test_wrap_around_into_the_next_epoch():
    s = BatchSampler(10, seed=1)
    p0, p1 = s.permutation(0).clone(), s.permutation(1).clone()
    s.next(4), s.next(4)
    assert s.next(4).tolist() == p0[8:].tolist() + p1[:2].tolist()
    assert s.epoch == pytest.approx(1.2)


def test_batch_size_changes_mid_run_keep_the_stream():
    a = draw(BatchSampler(17, seed=2), [1, 5, 11, 3, 9, 5])  # no batch across an epoch's end
    b = draw(BatchSampler(17, seed=2), [17, 17])
    assert torch.equal(a, b)
    s = BatchSampler(17, seed=2)
    assert [len(s.next(k)) for k in (1, 5, 16)] == [1, 5, 16] and s.epoch == pytest.approx(22 / 17)


@pytest.mark.parametrize("shuffle", ["reshuffle", "single", "none"])
def test_a_batch_across_two_epochs_holds_no_example_twice(shuffle):
    """The next epoch's head used to be taken as it came: with a fresh permutation it could hold
    examples of the last epoch's tail, and 41 of 100 batches of 7 out of 10 held one twice."""
    n, gen = 10, torch.Generator().manual_seed(0)
    sizes = torch.randint(1, n + 1, (300,), generator=gen).tolist()
    s = BatchSampler(n, shuffle=shuffle, seed=0)
    batches = [s.next(b) for b in sizes]
    assert all(len(set(b.tolist())) == len(b) for b in batches)
    stream = torch.cat(batches)
    epochs = stream[: len(stream) // n * n].view(-1, n)
    assert all(sorted(e.tolist()) == list(range(n)) for e in epochs)  # each epoch: each once
    assert stream.tolist() == draw(BatchSampler(n, shuffle=shuffle, seed=0), sizes).tolist()
    # resumed right after a batch that wrapped, the stream goes on identically
    s = BatchSampler(n, shuffle=shuffle, seed=0)
    draw(s, [7, 7])  # the second batch wraps
    state = s.state_dict()
    resumed = BatchSampler(n, shuffle=shuffle, seed=3)
    resumed.load_state_dict(state)
    assert torch.equal(draw(resumed, [2, 5, 9]), draw(s, [2, 5, 9]))


def test_sampler_is_seeded_and_ignores_the_global_rng():
    torch.manual_seed(0)
    a = draw(BatchSampler(30, seed=5), [8] * 5)
    torch.manual_seed(99)
    state = torch.get_rng_state()
    b = draw(BatchSampler(30, seed=5), [8] * 5)
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(a, draw(BatchSampler(30, seed=6), [8] * 5))
    assert a.dtype == torch.int64


def test_state_dict_resumes_exactly():
    s = BatchSampler(13, shuffle="reshuffle", seed=7)
    draw(s, [5, 5, 5])
    state = s.state_dict()
    expected = draw(s, [6, 6, 6])
    resumed = BatchSampler(13, seed=0)
    resumed.load_state_dict(state)
    assert torch.equal(draw(resumed, [6, 6, 6]), expected)
    with pytest.raises(ValueError, match="n=13.*n=12"):
        BatchSampler(12).load_state_dict(state)


def test_split_micro():
    idx = torch.arange(12)
    parts = split_micro(idx, 4)
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert split_micro(idx, None)[0] is idx and len(split_micro(idx, None)) == 1
    assert len(split_micro(idx, 12)) == 1


# --- config round trip and every error message ---------------------------------------------------

def test_config_round_trip_and_resolved_options():
    cfg = DataConfig("markov", n_train=10, n_test=5, seed=3, options={"order": 2})
    assert DataConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.resolved_options() == {"vocab_size": 32, "seq_len": 32, "order": 2, "branching": 4}
    assert DataConfig.smoke().n_train == 256
    opts = {"noise": 0.5}
    cfg = DataConfig("teacher", options=opts)
    opts["noise"] = 9.0  # the config keeps its own copy
    assert cfg.options == {"noise": 0.5}


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "mnist"}, ("unknown data set 'mnist'; choose one of: teacher, gaussian_mixture, "
                         "shapes, markov, digits")),
    ({"name": "teacher", "options": {"nois": 0.1}},
     "unknown option 'nois' for data set 'teacher'; valid options: dim, width, outputs, noise"),
    ({"name": "digits", "options": {"dim": 3}}, "valid options: \\(none\\)"),
    ({"n_train": 0}, "n_train must be > 0, got 0"),
    ({"n_test": -5}, "n_test must be > 0, got -5"),
    ({"n_train": 2.5}, "n_train must be an integer, got 2.5"),
    ({"seed": -1}, "seed must be >= 0, got -1"),
    ({"name": "digits", "n_train": 1500, "n_test": 400},
     "data set 'digits' has 1797 examples; n_train=1500 \\+ n_test=400 = 1900 exceeds it"),
    ({"name": "digits"}, "n_train=2048 \\+ n_test=512 = 2560 exceeds it"),
    ({"name": "teacher", "options": {"noise": -0.1}}, "teacher option noise must be >= 0"),
    ({"name": "teacher", "options": {"dim": 0}}, "teacher option dim must be > 0, got 0"),
    ({"name": "gaussian_mixture", "options": {"num_classes": 1}}, "num_classes must be >= 2"),
    ({"name": "shapes", "options": {"channels": 2}},
     "unknown shapes option channels 2; choose one of: 1, 3"),
    ({"name": "shapes", "options": {"num_classes": 7}},
     "unknown shapes option num_classes 7; choose one of: 2, 3, 4, 5, 6"),
    ({"name": "shapes", "options": {"image_size": 4}}, "image_size must be >= 8, got 4"),
    ({"name": "markov", "options": {"order": 3}}, "unknown markov option order 3; choose one of: 1, 2"),
    ({"name": "markov", "options": {"branching": 40}}, "branching=40 exceeds vocab_size=32"),
    ({"options": "separation=3"}, "options must be a dict"),
])
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**kwargs)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown DataConfig field 'size'; valid fields: name, "
                                         "n_train, n_test, seed, options"):
        DataConfig.from_dict({"name": "teacher", "size": 3})


def test_sampler_and_task_errors():
    with pytest.raises(ValueError, match="unknown shuffle mode 'random'; choose one of: reshuffle, "
                                         "single, none"):
        BatchSampler(10, shuffle="random")
    with pytest.raises(ValueError, match="n must be > 0, got 0"):
        BatchSampler(0)
    s = BatchSampler(10)
    with pytest.raises(ValueError, match="batch_size=11 exceeds the number of examples n=10"):
        s.next(11)
    with pytest.raises(ValueError, match="batch_size must be > 0, got 0"):
        s.next(0)
    with pytest.raises(ValueError, match="micro_batch=5 does not divide batch_size=12; valid values: "
                                         "1, 2, 3, 4, 6, 12"):
        split_micro(torch.arange(12), 5)
    with pytest.raises(ValueError, match="micro_batch must be > 0"):
        split_micro(torch.arange(12), 0)
    with pytest.raises(ValueError, match="unknown task 'ranking'; choose one of: classification, "
                                         "regression, lm"):
        loss_for_task("ranking")
    with pytest.raises(ValueError, match="unknown split 'val'; choose one of: train, test"):
        make_dataset(small("teacher")).batch(torch.arange(2), split="val")


@pytest.mark.parametrize(("name", "options"), [
    ("teacher", {"dim": 5, "outputs": 3}), ("gaussian_mixture", {"dim": 7}),
    ("shapes", {"channels": 3, "image_size": 12}), ("markov", {"seq_len": 9}),
])
def test_example_bytes_is_what_the_tensors_take(name, options):
    """The memory guard's per-example size is exact: the generated tensors' bytes per example."""
    cfg = small(name, **options)
    d = make_dataset(cfg)
    total = sum(t.numel() * t.element_size() for t in (d.x_train, d.y_train, d.x_test, d.y_test))
    assert DATASETS[name].example_bytes(cfg.resolved_options()) * (cfg.n_train + cfg.n_test) == total


def test_a_data_set_larger_than_memory_is_refused_before_generating(monkeypatch):
    from workbench.data import config as config_module

    cfg = DataConfig(name="shapes", n_train=100_000_000, n_test=512)  # 1032 bytes an example
    with pytest.raises(ValueError, match=r"'shapes' with n_train=100000000 and n_test=512 needs at "
                       r"least 96\.1 GiB for its tensors, more than the 2\.0 GiB of memory available; "
                       r"use fewer examples \(at most about 2080895 in all here"):
        config_module.check_fits_in_memory(cfg, available=2 * 2**30)
    # make_dataset asks before building anything
    monkeypatch.setattr(config_module, "available_memory", lambda: 2**20)
    def never(*args, **kwargs):
        raise AssertionError("generated before the check")

    monkeypatch.setitem(DATASETS, "shapes", dataclasses.replace(DATASETS["shapes"], build=never))
    with pytest.raises(ValueError, match="more than the 0.0 GiB of memory available"):
        make_dataset(DataConfig(name="shapes", n_train=1000, n_test=100))
    config_module.check_fits_in_memory(DataConfig(name="digits", n_train=1000, n_test=100), available=1)
