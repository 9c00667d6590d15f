"""smoothness against its oracles: a quadratic loss with known Hessian, and explicit re-evaluation."""
import math

import pandas as pd
import pytest
import torch

from workbench.models import MLPConfig, build_model
from workbench.probes.smoothness import smoothness


class Quadratic(torch.nn.Module):
    """The model's output is its own parameter vector w; the loss is 0.5 (w - c)^T H (w - c)."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(w.clone())

    def forward(self, x):
        return self.w


def _quadratic_loss(H, c):
    return lambda w, _y: 0.5 * (w - c) @ H @ (w - c)


def _spd(n, seed):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    evals = torch.linspace(0.1, 5.0, n, dtype=torch.float64)
    return q @ torch.diag(evals) @ q.T, q, evals


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beta_smoothness_on_a_quadratic_is_norm_hg_over_norm_g(seed):
    H, q, evals = _spd(6, seed)
    g = torch.Generator().manual_seed(seed + 10)
    w, c = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    model = Quadratic(w)
    etas = [1e-3, 0.01, 0.1, 0.3]
    frame = smoothness(model, (None, None), _quadratic_loss(H, c), etas=etas, per_eta=True)
    grad = H @ (w - c)
    expected = float((H @ grad).norm() / grad.norm())
    per = frame[frame.metric == "beta_at_eta"]
    assert list(per.eta) == etas
    assert per.value.tolist() == pytest.approx([expected] * 4, rel=1e-10)
    whole = frame[frame.layer == ""].set_index("metric").value
    assert whole["beta_smoothness"] == pytest.approx(expected, rel=1e-10)
    assert whole["grad_norm"] == pytest.approx(float(grad.norm()), rel=1e-12)
    loss = lambda v: float(0.5 * (v - c) @ H @ (v - c))  # noqa: E731
    pts = [loss(w)] + [loss(w - e * grad) for e in etas]
    assert whole["loss_variation"] == pytest.approx(max(pts) - min(pts), rel=1e-10)
    # gradient along the top eigenvector: beta is the top eigenvalue
    w_top = c + q[:, -1] * 0.7
    frame = smoothness(Quadratic(w_top), (None, None), _quadratic_loss(H, c), etas=etas)
    assert frame.set_index("metric").loc["beta_smoothness", "value"] == pytest.approx(float(evals[-1]), rel=1e-10)


@pytest.mark.parametrize("norm", ["none", "batch", "layer", "power"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_grad_predictiveness_matches_explicit_re_evaluation(norm, mode):
    torch.manual_seed(0)
    model = build_model(MLPConfig(depth=2, width=8, norm=norm, in_dim=5, out_dim=3)).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g)
    lf = torch.nn.functional.cross_entropy
    etas = [0.01, 0.1, 0.5]
    frame = smoothness(model, (x, y), lf, etas=etas, mode=mode, lr=0.1, per_eta=True)

    def fresh():  # a new copy per evaluation: buffers as the probe started
        ref = build_model(MLPConfig(depth=2, width=8, norm=norm, in_dim=5, out_dim=3)).double()
        ref.load_state_dict(model.state_dict())
        return ref.train(mode == "train")

    ref = fresh()
    ps = list(ref.parameters())
    g0 = torch.autograd.grad(lf(ref(x), y), ps)
    changes, per_layer = [], {}
    for eta in etas:
        ref = fresh()
        with torch.no_grad():
            for p, gi in zip(ref.parameters(), g0):
                p -= eta * gi
        gi = torch.autograd.grad(lf(ref(x), y), list(ref.parameters()))
        changes.append(float(torch.cat([(a - b).reshape(-1) for a, b in zip(gi, g0)]).norm()))
        names = [n for n, _ in ref.named_parameters()]
        for name, _m in ref.named_layers():
            i = names.index(name + ".weight")
            per_layer.setdefault(name, []).append(float((gi[i] - g0[i]).norm()))
    gnorm = float(torch.cat([t.reshape(-1) for t in g0]).norm())
    whole = frame[(frame.layer == "") & frame.eta.isna()].set_index("metric").value
    assert whole["grad_predictiveness"] == pytest.approx(max(changes), rel=1e-9)
    assert whole["beta_smoothness"] == pytest.approx(max(c / (e * gnorm) for c, e in zip(changes, etas)), rel=1e-9)
    assert frame[frame.metric == "grad_change_at_eta"].value.tolist() == pytest.approx(changes, rel=1e-9)
    for name, vals in per_layer.items():
        got = frame[frame.layer == name].set_index("metric").value
        assert got["grad_predictiveness"] == pytest.approx(max(vals), rel=1e-9)
        w = dict(model.named_parameters())[name + ".weight"]
        assert got["lr_effective"] == pytest.approx(0.1 / float(w.detach().norm()) ** 2, rel=1e-12)


def test_default_grid_reaches_beyond_the_lr_and_bad_grids_are_rejected():
    from workbench.probes.smoothness import eta_grid

    grid = eta_grid(0.1)
    assert len(grid) == 8 and grid[0] == pytest.approx(0.1 / 16) and grid[-1] == pytest.approx(0.2)
    model = Quadratic(torch.ones(3, dtype=torch.float64))
    lf = _quadratic_loss(torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    for bad, msg in [([], "etas is empty"), ([0.1, 0.0], "finite number > 0"),
                     ([-1.0], "finite number > 0"), ([math.nan], "finite number > 0")]:
        with pytest.raises(ValueError, match=msg):
            smoothness(model, (None, None), lf, etas=bad)
    with pytest.raises(ValueError, match="num_etas must be > 0"):
        smoothness(model, (None, None), lf, num_etas=0)
    with pytest.raises(ValueError, match="unknown mode"):
        smoothness(model, (None, None), lf, mode="test")
    assert isinstance(smoothness(model, (None, None), lf), pd.DataFrame)


def test_a_zero_gradient_gives_nan_smoothness_not_an_error():
    """At a stationary point there is no direction: the step ||eta g|| is 0, so beta is 0/0."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    batch = (torch.randn(8, 3), torch.zeros(8, 2))
    f = smoothness(model, batch, lambda out, y: (out * 0).sum(), lr=0.1, num_etas=3)
    v = f.set_index(["layer", "metric"]).value
    assert v[("", "grad_norm")] == 0 and v[("", "grad_predictiveness")] == 0
    assert v[("", "loss_variation")] == 0
    assert math.isnan(v[("", "beta_smoothness")])
