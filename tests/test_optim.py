"""LARS/LAMB against their update rules written out by hand (float64); build_optimizer wiring."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from workbench.train.optim import LAMB, LARS, OPTIMIZERS, build_optimizer, param_groups


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 2)).double()


def batches(n: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, generator=gen, dtype=torch.float64),
             torch.randn(8, 2, generator=gen, dtype=torch.float64)) for _ in range(n)]


def loss_of(model, x, y):
    return (model(x) - y).square().mean()


# ---- hand-written update rules: one tensor at a time, plain Python arithmetic ----

def lars_ref(w, g, state, *, lr, momentum, wd, eta, nesterov, adapt):
    """The LARS rule of the docstring, for one tensor; returns the new weight."""
    if adapt:
        w_norm, g_norm = w.norm().item(), g.norm().item()
        local = eta * w_norm / (g_norm + wd * w_norm) if w_norm > 0 and g_norm > 0 else 1.0
        d = g + wd * w
    else:
        local, d = 1.0, g
    v = momentum * state.get("v", torch.zeros_like(w)) + lr * local * d
    state["v"] = v
    step = momentum * v + lr * local * d if nesterov else v
    return w - step


def lamb_ref(w, g, state, *, lr, betas, eps, wd, adapt):
    """The LAMB rule of the docstring, for one tensor; returns the new weight."""
    b1, b2 = betas
    t = state["t"] = state.get("t", 0) + 1
    m = state["m"] = b1 * state.get("m", torch.zeros_like(w)) + (1 - b1) * g
    v = state["v"] = b2 * state.get("v", torch.zeros_like(w)) + (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
    r = m_hat / (v_hat.sqrt() + eps) + (wd * w if adapt else 0.0)
    w_norm, r_norm = w.norm().item(), r.norm().item()
    trust = w_norm / r_norm if adapt and w_norm > 0 and r_norm > 0 else 1.0
    return w - lr * trust * r


def run_against_ref(opt_name, ref, hyper, opt_kwargs, steps=4):
    model = tiny_model()
    ref_model = copy.deepcopy(model)
    opt = build_optimizer(opt_name, model, **opt_kwargs)
    adapt = {id(p): p.ndim >= 2 for p in ref_model.parameters()}
    states = {id(p): {} for p in ref_model.parameters()}
    for x, y in batches(steps):
        opt.zero_grad()
        loss_of(model, x, y).backward()
        opt.step()
        ref_model.zero_grad()
        loss_of(ref_model, x, y).backward()
        with torch.no_grad():
            for p in ref_model.parameters():
                p.copy_(ref(p, p.grad, states[id(p)], adapt=adapt[id(p)], **hyper))
        for p, q in zip(model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_matches_hand_rule(nesterov):
    hyper = {"lr": 0.5, "momentum": 0.9, "wd": 0.01, "eta": 0.02, "nesterov": nesterov}
    run_against_ref("lars", lars_ref, hyper, {"lr": 0.5, "momentum": 0.9, "nesterov": nesterov,
                                                  "weight_decay": 0.01, "trust_coefficient": 0.02})


def test_lamb_matches_hand_rule():
    hyper = {"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-6, "wd": 0.1}
    run_against_ref("lamb", lamb_ref, hyper,
                    {"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1})


def raw_params():
    """Four adapted tensors covering the edge cases: w = 0, g = 0, both 0, and ordinary."""
    torch.manual_seed(3)
    ws = [torch.zeros(2, 3), torch.randn(2, 3), torch.zeros(3, 2), torch.randn(3, 3)]
    gs = [torch.randn(2, 3), torch.zeros(2, 3), torch.zeros(3, 2), torch.randn(3, 3)]
    params = [nn.Parameter(w.double()) for w in ws]
    for p, g in zip(params, gs):
        p.grad = g.double()
    return params


def test_lars_zero_norm_edge_cases():
    params = raw_params()
    before = [p.detach().clone() for p in params]
    opt = LARS(params, lr=0.1, momentum=0.0, weight_decay=0.5, trust_coefficient=0.01)
    opt.step()
    for w0, p in zip(before, params):
        expected = lars_ref(w0, p.grad, {}, lr=0.1, momentum=0.0, wd=0.5, eta=0.01,
                            nesterov=False, adapt=True)
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=0)
    # w = 0, g != 0: local_lr = 1, a plain SGD step
    torch.testing.assert_close(params[0].detach(), -0.1 * params[0].grad)
    # g = 0, w != 0: local_lr = 1, pure decay step w - lr * wd * w
    torch.testing.assert_close(params[1].detach(), before[1] * (1 - 0.1 * 0.5))
    assert params[2].abs().max() == 0  # both 0: nothing moves


def test_lamb_zero_norm_edge_cases():
    params = raw_params()
    before = [p.detach().clone() for p in params]
    opt = LAMB(params, lr=0.1, weight_decay=0.0)
    opt.step()
    for w0, p in zip(before, params):
        expected = lamb_ref(w0, p.grad, {}, lr=0.1, betas=(0.9, 0.999), eps=1e-8, wd=0.0,
                            adapt=True)
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=0)
    # w = 0: trust 1, an Adam step of size lr * sign(g) (up to eps)
    torch.testing.assert_close(params[0].detach(), -0.1 * params[0].grad.sign(), rtol=1e-6, atol=0)
    torch.testing.assert_close(params[1].detach(), before[1])  # r = 0 with wd = 0: no move


def test_grad_none_params_are_skipped():
    a, b = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(2, 2))
    a.grad = torch.ones(2, 2)
    for opt in (LARS([a, b], lr=0.1), LAMB([a, b], lr=0.1)):
        opt.step()
        assert b.detach().eq(1).all() and b not in opt.state and a in opt.state


def test_param_groups_split_and_exclusion():
    model = tiny_model()
    weights, no_adapt = param_groups(model, 0.05)
    assert weights["adapt"] and not no_adapt["adapt"]
    assert weights["weight_decay"] == 0.05 and no_adapt["weight_decay"] == 0.0
    assert [p.shape for p in weights["params"]] == [(5, 3), (2, 5)]
    assert all(p.ndim == 1 for p in no_adapt["params"]) and len(no_adapt["params"]) == 4
    model[0].bias.requires_grad_(False)
    assert len(param_groups(model, 0.0)[1]["params"]) == 3


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_norm_params_not_decayed_nor_adapted(name):
    """With a zero gradient, decay is the only force: weights shrink, 1-D params stay put."""
    model = tiny_model()
    opt = build_optimizer(name, model, lr=0.1, weight_decay=0.5, trust_coefficient=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, p0 in zip(model.parameters(), before):
        if p.ndim == 1:
            torch.testing.assert_close(p.detach(), p0, rtol=0, atol=0)
        else:
            assert p.norm() < p0.norm()


def test_no_adapt_groups_are_plain_sgd_and_adam():
    """adapt=False: LARS is momentum SGD, LAMB is Adam (no trust ratio, no decay)."""
    for ours, theirs in [
        (lambda ps: LARS([{"params": ps, "adapt": False}], lr=0.1, momentum=0.9, weight_decay=0.3),
         lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
        (lambda ps: LAMB([{"params": ps, "adapt": False}], lr=0.01, weight_decay=0.3),
         lambda ps: torch.optim.Adam(ps, lr=0.01)),
    ]:
        a, b = tiny_model(), tiny_model()
        opt_a, opt_b = ours(list(a.parameters())), theirs(list(b.parameters()))
        for x, y in batches(5):
            for model, opt in ((a, opt_a), (b, opt_b)):
                opt.zero_grad()
                loss_of(model, x, y).backward()
                opt.step()
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_dict_round_trip_resumes_identically(name):
    kwargs = {"lr": 0.05, "weight_decay": 0.01, "trust_coefficient": 0.02}
    data = batches(6)
    model = tiny_model()
    opt = build_optimizer(name, model, **kwargs)

    def train(model, opt, chunk):
        for x, y in chunk:
            def closure(x=x, y=y):
                opt.zero_grad()
                loss = loss_of(model, x, y)
                loss.backward()
                return loss
            assert torch.isfinite(opt.step(closure))

    train(model, opt, data[:3])
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    train(model, opt, data[3:])
    resumed = tiny_model(seed=7)
    resumed.load_state_dict(saved_model)
    opt2 = build_optimizer(name, resumed, **kwargs)
    opt2.load_state_dict(saved_opt)
    train(resumed, opt2, data[3:])
    for p, q in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_trains_tiny_regression(name):
    torch.manual_seed(0)
    x = torch.randn(128, 6)
    y = x @ torch.randn(6, 1) + 0.5
    model = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 1))
    lr = {"sgd": 0.05, "adam": 0.01, "adamw": 0.01, "lars": 1.0, "lamb": 0.01}[name]
    opt = build_optimizer(name, model, lr=lr, weight_decay=1e-4, trust_coefficient=0.01)
    first = None
    for _ in range(150):
        opt.zero_grad()
        loss = loss_of(model, x, y)
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW), ("lars", LARS),
                                       ("lamb", LAMB)])
def test_build_optimizer_class_and_groups(name, cls):
    model = tiny_model()
    opt = build_optimizer(name, model, lr=0.1, weight_decay=0.02)
    assert type(opt) is cls
    assert [g["name"] for g in opt.param_groups] == ["weights", "no_adapt"]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.02, 0.0]
    assert [g["adapt"] for g in opt.param_groups] == [True, False]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_torch_optimizers_match_torch_with_same_groups(name):
    a, b = tiny_model(), tiny_model()
    opt_a = build_optimizer(name, a, lr=0.03, momentum=0.8, nesterov=name == "sgd",
                            weight_decay=0.1, betas=(0.85, 0.99), eps=1e-7)
    groups = [{"params": [p for p in b.parameters() if p.ndim >= 2], "weight_decay": 0.1},
              {"params": [p for p in b.parameters() if p.ndim < 2], "weight_decay": 0.0}]
    opt_b = {"sgd": lambda: torch.optim.SGD(groups, lr=0.03, momentum=0.8, nesterov=True),
             "adam": lambda: torch.optim.Adam(groups, lr=0.03, betas=(0.85, 0.99), eps=1e-7),
             "adamw": lambda: torch.optim.AdamW(groups, lr=0.03, betas=(0.85, 0.99), eps=1e-7),
             }[name]()
    for x, y in batches(4):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            loss_of(model, x, y).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "adagrad"},
     "unknown optimizer 'adagrad'; choose one of: sgd, adam, adamw, lars, lamb"),
    ({"lr": 0.0}, "lr must be > 0, got 0.0"),
    ({"lr": -1.0}, "lr must be > 0, got -1.0"),
    ({"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1.0"),
    ({"momentum": -0.1}, "momentum must be >= 0, got -0.1"),
    ({"nesterov": True, "momentum": 0.0}, "nesterov=True needs momentum > 0, got momentum=0.0"),
    ({"name": "adam", "nesterov": True},
     "nesterov=True applies only to sgd and lars, not optimizer 'adam'"),
    ({"weight_decay": -0.1}, "weight_decay must be >= 0, got -0.1"),
    ({"name": "adam", "betas": (0.9, 1.0)}, r"betas\[1\] must be in \[0, 1\), got 1.0"),
    ({"name": "lamb", "eps": 0.0}, "eps must be > 0, got 0.0"),
    ({"name": "lars", "trust_coefficient": 0.0}, "trust_coefficient must be > 0, got 0.0"),
])
def test_bad_inputs_name_the_value(kwargs, match):
    kwargs = {"name": "sgd", "lr": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        build_optimizer(kwargs.pop("name"), tiny_model(), **kwargs)


def test_direct_constructors_validate():
    p = [nn.Parameter(torch.ones(2, 2))]
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        LARS(p, lr=0.1, momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match=r"betas\[0\] must be >= 0, got -0.5"):
        LAMB(p, lr=0.1, betas=(-0.5, 0.9))
    with pytest.raises(ValueError, match="lr must be a number, got 'x'"):
        LAMB(p, lr="x")
    assert math.isclose(LARS(p, lr=0.1).defaults["trust_coefficient"], 0.001)
