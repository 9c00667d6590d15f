"""LR scaling/warm-up/decay rules and batch-size schedules, including the norm test's estimator."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from workbench.train.schedules import (
    BATCH_SCHEDULES,
    LR_DECAY,
    LR_SCALING,
    lr_at,
    make_batch_schedule,
    norm_test_stats,
    scaled_lr,
)


def test_names():
    assert LR_SCALING == ("none", "linear", "sqrt")
    assert LR_DECAY == ("constant", "cosine", "linear")
    assert BATCH_SCHEDULES == ("constant", "step", "norm_test")


@pytest.mark.parametrize("rule, expected",
                         [("none", 0.1), ("linear", 0.8), ("sqrt", 0.1 * 8 ** 0.5)])
def test_scaled_lr(rule, expected):
    assert math.isclose(scaled_lr(0.1, 256, 32, rule), expected, rel_tol=1e-12)
    assert math.isclose(scaled_lr(0.1, 32, 32, rule), 0.1)  # identity at the base batch


def kw(**overrides):
    base = {"total_steps": 100, "base_lr": 0.1, "batch_size": 128, "base_batch_size": 32,
                "scaling": "linear", "warmup_steps": 10}
    return {**base, **overrides}


def test_warmup_ramps_linearly_to_scaled_lr():
    peak = 0.4
    lrs = [lr_at(s, **kw()) for s in range(12)]
    assert math.isclose(lrs[0], peak / 10)
    diffs = [b - a for a, b in itertools.pairwise(lrs[:10])]  # steps 0..9 warm up
    assert all(math.isclose(d, peak / 10) for d in diffs)  # equal increments
    assert all(math.isclose(lr, peak) for lr in lrs[9:12])
    assert lr_at(0, **kw(warmup_steps=0)) == pytest.approx(peak)


@pytest.mark.parametrize("decay", ["cosine", "linear"])
@pytest.mark.parametrize("min_ratio", [0.0, 0.1])
def test_decay_endpoints(decay, min_ratio):
    peak, floor = 0.4, 0.4 * min_ratio
    lr = lambda s: lr_at(s, **kw(decay=decay, min_lr_ratio=min_ratio))
    assert math.isclose(lr(10), peak)  # decay starts at the peak
    assert math.isclose(lr(55), (peak + floor) / 2)  # half way, both shapes
    assert math.isclose(lr(100), floor, abs_tol=1e-15)  # reaches the floor one past the end
    assert math.isclose(lr(500), floor, abs_tol=1e-15)
    assert floor < lr(99) < lr(98)
    seq = [lr(s) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(seq))
    if decay == "linear":
        assert math.isclose(lr(10 + 30), peak - (peak - floor) / 3)  # t = 30 / 90
    else:
        assert math.isclose(lr(10 + 30), floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi / 3)))


def test_constant_decay_and_no_scaling():
    assert lr_at(99, **kw(scaling="none", decay="constant")) == pytest.approx(0.1)
    assert lr_at(5, **kw(total_steps=10, warmup_steps=10, decay="cosine")) == pytest.approx(0.24)
    assert lr_at(10, **kw(total_steps=10, warmup_steps=10, decay="cosine")) == pytest.approx(0.4)


@pytest.mark.parametrize("overrides, match", [
    ({"scaling": "cubic"}, "unknown lr scaling rule 'cubic'; choose one of: none, linear, sqrt"),
    ({"decay": "step"}, "unknown lr decay 'step'; choose one of: constant, cosine, linear"),
    ({"warmup_steps": -1}, "warmup_steps must be >= 0, got -1"),
    ({"warmup_steps": 101}, "warmup_steps=101 must be <= total_steps=100"),
    ({"total_steps": 0}, "total_steps must be > 0, got 0"),
    ({"batch_size": 0}, "batch_size must be > 0, got 0"),
    ({"base_batch_size": -4}, "base_batch_size must be > 0, got -4"),
    ({"batch_size": 3.5}, "batch_size must be an integer, got 3.5"),
    ({"base_lr": -0.1}, "base_lr must be >= 0, got -0.1"),
    ({"min_lr_ratio": 1.5}, r"min_lr_ratio must be in \[0, 1\], got 1.5"),
])
def test_lr_bad_inputs(overrides, match):
    with pytest.raises(ValueError, match=match):
        lr_at(0, **kw(**overrides))


def test_lr_bad_step():
    with pytest.raises(ValueError, match="step must be >= 0, got -1"):
        lr_at(-1, **kw())


def test_constant_batch():
    sched = make_batch_schedule("constant", batch_size=64)
    assert {sched.batch_size(s) for s in (0, 1, 10**6)} == {64}
    sched.observe(0, micro_grads=[torch.ones(3), -torch.ones(3)], micro_batch=32)  # ignored
    assert sched.batch_size(1) == 64 and not sched.needs_grads(0)


def test_cap_not_a_multiple_rounds_down():
    sched = make_batch_schedule("step", batch_size=32, max_batch_size=100, growth_every=1,
                                multiple_of=8)
    assert [sched.batch_size(s) for s in range(4)] == [32, 64, 96, 96]


def test_step_growth_with_cap():
    sched = make_batch_schedule("step", batch_size=32, max_batch_size=200 // 8 * 8,
                                growth_factor=2, growth_every=10, multiple_of=8)
    sizes = [sched.batch_size(s) for s in range(0, 60, 10)]
    assert sizes == [32, 64, 128, 200, 200, 200]
    assert sched.batch_size(9) == 32 and sched.batch_size(10**12) == 200
    odd = make_batch_schedule("step", batch_size=8, growth_factor=1.5, growth_every=1,
                              multiple_of=4)
    assert [odd.batch_size(s) for s in range(4)] == [8, 12, 20, 28]  # ceil to multiples of 4
    sizes = [odd.batch_size(s) for s in range(40)]
    assert all(a <= b for a, b in itertools.pairwise(sizes))


def test_virtual_batch_keeps_grown_sizes_off_a_last_virtual_batch_of_one():
    """Ghost BN on an MLP cannot normalize a virtual batch of one example: a grown size n with
    n % v == 1 moves up by one, or down by one at the cap; the sizes never shrink."""
    step = make_batch_schedule("step", batch_size=2, max_batch_size=8, growth_every=5,
                               virtual_batch=3)
    assert [step.batch_size(s) for s in range(0, 20, 5)] == [2, 5, 8, 8]  # 4 = 3 + 1 -> 5
    capped = make_batch_schedule("step", batch_size=6, max_batch_size=25, growth_every=1,
                                 virtual_batch=4)
    assert [capped.batch_size(s) for s in range(4)] == [6, 12, 24, 24]  # cap 25 = 6 * 4 + 1
    sched = norm_sched(virtual_batch=4)
    sched.observe(0, micro_grads=pair(1.1))  # asks 141 = 35 * 4 + 1 -> 142
    assert sched.batch_size(1) == 142 and sched.last_test["requested_batch_size"] == 141
    sched.observe(5, micro_grads=pair(100.0))  # asks far above the cap of 1024: capped
    assert sched.batch_size(6) == 1024
    with pytest.raises(ValueError, match="batch_size=5 leaves one example in the last virtual batch"):
        make_batch_schedule("step", batch_size=5, virtual_batch=4)
    with pytest.raises(ValueError, match="virtual_batch applies to batches that go through"):
        make_batch_schedule("step", batch_size=8, multiple_of=4, virtual_batch=4)


def test_estimator_exact_on_symmetric_pair():
    """g_1 = mu + d, g_2 = mu - d: g_bar = mu and sum ||g_i - g_bar||^2 = 2 ||d||^2."""
    mu, d = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 2.0])
    sigma2, mean_sq = norm_test_stats([mu + d, mu - d], micro_batch=16)
    assert sigma2 == pytest.approx(16 * 2 * 5.0) and mean_sq == pytest.approx(9.0)


def test_estimator_is_unbiased_for_per_example_variance():
    """Per-example gradients mu + N(0, s^2 I_P); micro-batch means have covariance s^2/m I_P.

    E[sigma2] = m * E[sample variance of the g_i] = m * P s^2 / m = P s^2 = tr(Cov).
    """
    gen = torch.Generator().manual_seed(0)
    k, m, p, s, trials = 4, 8, 50, 0.7, 400
    mu = torch.randn(p, generator=gen, dtype=torch.float64)
    noise = torch.randn(trials, k, p, generator=gen, dtype=torch.float64) * (s / math.sqrt(m))
    sigma2 = torch.tensor([norm_test_stats(mu + noise[t], m)[0] for t in range(trials)])
    # each estimate is P s^2 chi2_{P(k-1)} / (P(k-1)): sd = P s^2 sqrt(2 / (P(k-1)))
    sd_of_mean = p * s**2 * math.sqrt(2 / (p * (k - 1))) / math.sqrt(trials)
    assert abs(sigma2.mean().item() - p * s**2) < 4 * sd_of_mean
    g = (mu + noise[0]).to(torch.float32)  # also accepts one (k, P) tensor
    assert norm_test_stats(g, m)[0] == pytest.approx(norm_test_stats(list(mu + noise[0]), m)[0],
                                                     rel=1e-5)


def norm_sched(**overrides):
    base = {"batch_size": 32, "max_batch_size": 1024, "theta": 0.5, "check_every": 5}
    return make_batch_schedule("norm_test", **{**base, **overrides})


def pair(spread_sq: float):
    """Two micro-batch gradients with ||g_bar||^2 = 1 and sum ||g_i - g_bar||^2 = 2 spread_sq."""
    mu = torch.tensor([1.0, 0.0], dtype=torch.float64)
    d = torch.tensor([0.0, math.sqrt(spread_sq)], dtype=torch.float64)
    return [mu + d, mu - d]


def test_norm_test_growth_decision():
    # B = 32, k = 2, m = 16; sigma2 = 32 * spread_sq; grow iff sigma2 / 32 > 0.25 * 1.
    sched = norm_sched()
    assert sched.needs_grads(0) and not sched.needs_grads(3) and sched.needs_grads(10)
    sched.observe(0, micro_grads=pair(0.2))  # sigma2 / B = 0.2 <= 0.25: keep
    assert sched.batch_size(1) == 32 and not sched.last_test["grew"]
    sched.observe(5, micro_grads=pair(1.0))  # sigma2 = 32 -> asks ceil(32 / 0.25) = 128
    assert sched.batch_size(6) == 128
    t = sched.last_test
    assert t["grew"] and t["requested_batch_size"] == 128 and t["batch_size"] == 32
    assert t["per_example_grad_variance"] == pytest.approx(32.0) and t["mean_grad_sq_norm"] == 1.0
    sched.observe(10, micro_grads=pair(1.0), micro_batch=64)  # B = 128, sigma2 = 128: 1 > 0.25
    assert sched.batch_size(11) == 512
    sched.observe(15, micro_grads=pair(4.0), micro_batch=256)  # asks 8192: capped
    assert sched.batch_size(16) == 1024
    sched.observe(20, micro_grads=pair(100.0))  # capped already: stays
    assert sched.batch_size(21) == 1024


def test_norm_test_never_shrinks_and_rounds_up():
    sched = norm_sched(multiple_of=32)
    sched.observe(0, micro_grads=pair(1.1))  # sigma2 = 35.2 -> asks 141 -> 160
    assert sched.batch_size(1) == 160
    sched.observe(5, micro_grads=pair(0.0))  # no noise at all: no change, never shrinks
    sched.observe(10, micro_grads=[torch.zeros(4), torch.zeros(4)])
    assert sched.batch_size(11) == 160
    sched.observe(11)  # no grads: no-op
    assert sched.batch_size(12) == 160


def test_norm_test_zero_mean_gradient():
    grads = [torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])]  # g_bar = 0, noise only
    capped = norm_sched()
    capped.observe(0, micro_grads=grads)
    assert capped.batch_size(1) == 1024
    uncapped = norm_sched(max_batch_size=None, growth_factor=4)
    uncapped.observe(0, micro_grads=grads)
    assert uncapped.batch_size(1) == 128


def test_batch_schedule_state_dict_round_trip():
    sched = norm_sched()
    sched.observe(0, micro_grads=pair(1.0))
    fresh = norm_sched()
    fresh.load_state_dict(sched.state_dict())
    assert fresh.batch_size(1) == 128 and fresh.last_test == sched.last_test
    with pytest.raises(ValueError, match="batch schedule state is for 'norm_test', not 'step'"):
        make_batch_schedule("step", batch_size=32).load_state_dict(sched.state_dict())


def test_norm_test_needs_two_micro_grads():
    match = r"k >= 2 flattened micro-batch gradients, got shape \(1, 3\)"
    with pytest.raises(ValueError, match=match):
        norm_sched().observe(0, micro_grads=[torch.ones(3)])


@pytest.mark.parametrize("kind, overrides, match", [
    ("adaptive", {}, "unknown batch schedule 'adaptive'; choose one of: constant, step, norm_test"),
    ("step", {"batch_size": 0}, "batch_size must be > 0, got 0"),
    ("step", {"max_batch_size": 16}, "max_batch_size=16 must be >= batch_size=32"),
    ("step", {"max_batch_size": 0}, "max_batch_size must be > 0, got 0"),
    ("norm_test", {"theta": 0.0}, "theta must be > 0, got 0.0"),
    ("norm_test", {"theta": -1.0}, "theta must be > 0, got -1.0"),
    ("step", {"growth_factor": 0.5}, "growth_factor must be >= 1, got 0.5"),
    ("step", {"growth_every": 0}, "growth_every must be > 0, got 0"),
    ("norm_test", {"check_every": 0}, "check_every must be > 0, got 0"),
    ("norm_test", {"multiple_of": 0}, "multiple_of must be > 0, got 0"),
    ("norm_test", {"multiple_of": 5}, ("multiple_of=5 does not divide batch_size=32; valid values: "
                                       "1, 2, 4, 8, 16, 32")),
])
def test_batch_schedule_bad_inputs(kind, overrides, match):
    with pytest.raises(ValueError, match=match):
        make_batch_schedule(kind, **{"batch_size": 32, **overrides})
