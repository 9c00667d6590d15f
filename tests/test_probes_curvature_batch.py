"""hessian_vs_batch_size against the spiked least-squares closed form (papers.md §2.2), and
gradient_noise_scale against brute-force per-example gradients and a dense Hessian."""
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench.models import MLPConfig, build_model
from workbench.probes import gradient_noise_scale, hessian_top_eigs, hessian_vs_batch_size
from workbench.probes.gradient_noise_scale import per_example_grads
from workbench.probes.hessian_vs_batch_size import fit_inverse_b, stable_lr_factor

CE = F.cross_entropy


def half_mse(out, y):
    return 0.5 * F.mse_loss(out, y)  # H_B = X_B^T X_B / B for a linear model


def test_spiked_least_squares_follows_bbp_prediction():
    d, theta, n = 100, 5.0, 20000
    g = torch.Generator().manual_seed(0)
    scale = torch.ones(d, dtype=torch.float64)
    scale[0] = theta ** 0.5
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    model = torch.nn.Linear(d, 1, bias=False).double()
    sizes = [16, 32, 64, 128, 256, 512, 1024]
    f = hessian_vs_batch_size(model, (x, y), half_mse, batch_sizes=sizes, num_batches=20,
                              trace_matvecs=0, adam=False, tol=1e-4, max_iter=100)
    v = f.set_index(["metric", "batch_size"]).value
    for b in sizes:
        bbp = theta * (1 + (d / b) / (theta - 1))
        assert v["lambda_max_mean", b] == pytest.approx(bbp, rel=0.10), b
        assert v["lr_max_sgd", b] == pytest.approx(2 / v["lambda_max_mean", b])
    assert v["lambda_max", n] == pytest.approx(theta, rel=0.05)  # the full-data Hessian
    fits = f[f.batch_size.isna()].set_index("metric").value
    assert fits["fit_lambda_full"] == pytest.approx(theta, rel=0.10)
    assert fits["fit_c"] == pytest.approx(theta * d / (theta - 1), rel=0.25)
    bbp_lr = [2 / (theta * (1 + (d / b) / (theta - 1))) for b in sizes]  # linear, then saturating
    slope = np.polyfit(np.log(sizes), np.log(bbp_lr), 1)[0]
    assert fits["lr_sgd_exponent"] == pytest.approx(slope, abs=0.05)
    assert f[f.metric.str.endswith("_std")].value.ge(0).all()


def test_inverse_b_fit_is_exact_on_the_law_and_robust_to_the_noisy_small_batch():
    sizes = [8, 32, 128, 512]
    a, c, r2 = fit_inverse_b(sizes, [3 + 100 / b for b in sizes])
    assert (a, c, r2) == (pytest.approx(3), pytest.approx(100), pytest.approx(1))
    # measured on a trained BN MLP (Curvature lab defaults, 40 steps): the B=8 mean is 50 ± 40 and
    # the full-data lambda_max 1.04; plain least squares puts the intercept at -2.97
    lam = np.array([50.4, 4.02, 1.64, 1.13])
    plain = np.linalg.lstsq(np.stack([np.ones(4), 1 / np.array(sizes)], 1), lam, rcond=None)[0][0]
    assert plain < 0
    a, c, r2 = fit_inverse_b(sizes, lam)
    assert 0.6 < a < 1.04 and c > 0 and 0 < r2 < 1
    # relative residuals need positive values; otherwise plain least squares, still exact
    a, c, _ = fit_inverse_b(sizes, [-1 + 8 / b for b in sizes])
    assert (a, c) == (pytest.approx(-1), pytest.approx(8))


def test_batch_size_probe_rows_and_adam_preconditioning():
    torch.manual_seed(0)
    model = build_model(MLPConfig(depth=2, width=8, norm="batch", in_dim=5, out_dim=3)).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (64,), generator=g)
    f = hessian_vs_batch_size(model, (x, y), CE, batch_sizes=[8, 16, 32], num_batches=2, density_steps=10)
    v = f.set_index(["metric", "batch_size"]).value
    for b in (8, 16, 32):
        assert v["lambda_max_mean", b] >= v["lambda_min_mean", b]
        assert np.isfinite(v["adam_lambda_max_mean", b]) and v["lr_max_adam", b] > 0
    full = hessian_top_eigs(model, (x, y), CE, tol=1e-8)
    assert v["lambda_max", 64] == pytest.approx(full[full.metric == "eigenvalue"].value.item(), rel=1e-3)
    dens = f[f.metric == "density"]
    assert set(dens.batch_size) == {8, 16, 32, 64} and dens.value.ge(0).all()
    assert {"lr_sgd_exponent", "lr_adam_exponent", "fit_r2"} <= set(f.metric)
    with pytest.raises(ValueError, match="must be smaller than"):
        hessian_vs_batch_size(model, (x, y), CE, batch_sizes=[64])


def _model(norm):
    torch.manual_seed(0)
    return build_model(MLPConfig(depth=2, width=8, norm=norm, in_dim=5, out_dim=3)).double()


def _batch(n=24):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def brute_force(model, x, y, mode):
    """Per-example gradients by one backward per example through the shared batch forward."""
    model.train(mode == "train")
    out = model(x)
    rows = []
    for i in range(x.shape[0]):
        gr = torch.autograd.grad(CE(out[i:i + 1], y[i:i + 1]), list(model.parameters()), retain_graph=True)
        rows.append(torch.cat([t.reshape(-1) for t in gr]))
    return torch.stack(rows).detach()


@pytest.mark.parametrize(("norm", "mode"), [("none", "train"), ("batch", "train"), ("batch", "eval")])
def test_b_simple_matches_brute_force(norm, mode):
    model, (x, y) = _model(norm), _batch()
    ref_model = _model(norm)
    ref_model.load_state_dict(model.state_dict())
    G = brute_force(ref_model, x, y, mode)
    n = x.shape[0]
    gbar = G.mean(0)
    tr = float(((G - gbar) ** 2).sum() / (n - 1))
    g2 = float(gbar @ gbar)
    f = gradient_noise_scale(model, (x, y), CE, mode=mode, small_batch=6)
    v = f[f.layer == "all"].set_index("metric").value
    assert v["trace_cov"] == pytest.approx(tr, rel=1e-8)
    assert v["b_simple"] == pytest.approx(tr / g2, rel=1e-8)
    assert v["b_simple_unbiased"] == pytest.approx(tr / (g2 - tr / n), rel=1e-8)
    # The per-example gradients average to the batch gradient (through the batch statistics).
    ref_model.train(mode == "train")
    batch_grad = torch.cat([t.reshape(-1) for t in torch.autograd.grad(CE(ref_model(x), y),
                                                                       list(ref_model.parameters()))])
    torch.testing.assert_close(gbar, batch_grad)
    grads, method = per_example_grads(model, (x, y), CE, mode=mode)
    torch.testing.assert_close(grads, G)
    assert method == "torch.func"
    # Two batch sizes: |G_s|^2 averaged over the 4 sub-batches of 6, |G_b|^2 the whole batch.
    gs2 = []
    for i in range(0, n, 6):
        gr = torch.autograd.grad(CE(ref_model(x[i:i + 6]), y[i:i + 6]), list(ref_model.parameters()))
        gs2.append(float(sum(t.pow(2).sum() for t in gr)))
    gs2, gb2 = np.mean(gs2), float(batch_grad @ batch_grad)
    assert v["trace_cov_two_batch"] == pytest.approx((gs2 - gb2) / (1 / 6 - 1 / n), rel=1e-8)
    assert v["grad_norm_sq_two_batch"] == pytest.approx((n * gb2 - 6 * gs2) / (n - 6), rel=1e-8)
    # B_noise = tr(H Sigma) / (G^T H G) with the dense Hessian (rows by double backward).
    ps = list(ref_model.parameters())
    gg = torch.cat([t.reshape(-1) for t in torch.autograd.grad(CE(ref_model(x), y), ps, create_graph=True)])
    H = torch.stack([torch.cat([t.reshape(-1) for t in torch.autograd.grad(gg, ps, e, retain_graph=True)])
                     for e in torch.eye(gg.numel(), dtype=torch.float64)])
    sigma = (G - gbar).T @ (G - gbar) / (n - 1)
    assert v["b_noise"] == pytest.approx(float(torch.trace(H @ sigma) / (gbar @ H @ gbar)), rel=1e-6)
    assert v["trace_hess_cov"] == pytest.approx(float(torch.trace(H @ sigma)), rel=1e-6)
    assert v["grad_hess_grad"] == pytest.approx(float(gbar @ H @ gbar), rel=1e-6)
    var = ((G - gbar) ** 2).sum(0) / (n - 1)
    r = (gbar**2 / var)[var > 1e-12 * var.max()]  # noise-free coordinates left out
    assert v["gsnr"] == pytest.approx(float(r.mean()), rel=1e-6)
    head = f[(f.metric == "gsnr") & (f.layer == "head.weight")].value.item()
    k = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("head"))
    assert head == pytest.approx(float((gbar[k:k + 24] ** 2 / var[k:k + 24]).mean()), rel=1e-6)


def test_noise_scale_under_negative_curvature_says_so():
    """L(w) = -mean((w.x)^2) has H = -2 X^T X / N, negative definite: G^T H G < 0, so B_noise is
    inf (no positive curvature along the step) and the denominator's sign is in its own row."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=g, dtype=torch.float64)
    y = torch.zeros(16, 1, dtype=torch.float64)
    model = torch.nn.Linear(3, 1, bias=False).double()

    def concave(out, y):
        return -(out - y).pow(2).mean()

    f = gradient_noise_scale(model, (x, y), concave, small_batch=4)
    v = f[f.layer == "all"].set_index("metric").value
    w = model.weight.detach().reshape(-1)
    H = -2 * x.T @ x / x.shape[0]
    G = -2 * x * (x @ w)[:, None]                        # per-example gradients
    gbar = G.mean(0)
    sigma = (G - gbar).T @ (G - gbar) / (x.shape[0] - 1)
    assert v["grad_hess_grad"] == pytest.approx(float(gbar @ H @ gbar), rel=1e-9)
    assert v["grad_hess_grad"] < 0
    assert v["trace_hess_cov"] == pytest.approx(float(torch.trace(H @ sigma)), rel=1e-9)
    assert v["b_noise"] == float("inf") and v["b_crit"] == float("inf")
    off = gradient_noise_scale(model, (x, y), concave, small_batch=4, hessian=False)
    off = off[off.layer == "all"].set_index("metric").value
    assert np.isnan(off[["b_noise", "trace_hess_cov", "grad_hess_grad"]]).all()


def _masked_ce(out, y):
    """A loss torch.func cannot vmap (data-dependent indexing): the per-example loop runs."""
    keep = y >= 0
    return CE(out[keep], y[keep])


@pytest.mark.parametrize(("norm", "options", "loss_fn"), [
    ("batch", {}, _masked_ce),
    ("batch_channel", {"groups": 2, "stats": "batch"}, CE),  # its in-place update fails torch.func
])
def test_the_per_example_loop_matches_brute_force_with_batch_statistics(norm, options, loss_fn):
    """The loop restores only buffers a backward changed: writing BatchNorm's running statistics
    back in place (which its graph holds) failed the second backward."""
    torch.manual_seed(0)
    model = build_model(MLPConfig(depth=2, width=8, norm=norm, norm_options=options, in_dim=5,
                                  out_dim=3)).double()
    ref_model = build_model(MLPConfig(depth=2, width=8, norm=norm, norm_options=options, in_dim=5,
                                      out_dim=3)).double()
    ref_model.load_state_dict(model.state_dict())
    x, y = _batch()
    grads, method = per_example_grads(model, (x, y), loss_fn, mode="train")
    assert method == "loop"
    torch.testing.assert_close(grads, brute_force(ref_model, x, y, "train"))
    f = gradient_noise_scale(model, (x, y), loss_fn, small_batch=6)
    assert f[f.layer == "all"].value.notna().all()


def test_noise_scale_falls_back_for_powernorm_and_rejects_bad_batches():
    model, (x, y) = _model("power"), _batch()
    grads, method = per_example_grads(model, (x, y), CE, mode="train")
    assert method == "loop" and grads.shape[0] == 24
    with pytest.raises(ValueError, match="at least 2"):
        gradient_noise_scale(model, (x[:1], y[:1]), CE)
    with pytest.raises(ValueError, match="small_batch=24"):
        gradient_noise_scale(model, (x, y), CE, small_batch=24)


@pytest.mark.parametrize("momentum, nesterov, dampening", [
    (0.0, False, 0.0), (0.5, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.0),
    (0.9, False, 0.9),  # buf = 0.9 buf + 0.1 g: Adam's first moment with a frozen preconditioner
])
def test_stable_lr_factor_is_where_torch_sgd_starts_to_diverge(momentum, nesterov, dampening):
    """The threshold against PyTorch's own optimizer on a quadratic of curvature lam: 2% below it
    the iterate shrinks, 2% above it grows."""
    lam = 3.0
    k = stable_lr_factor(momentum, nesterov=nesterov, ema=dampening > 0)

    def final_size(lr):
        w = torch.ones(1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.SGD([w], lr=lr, momentum=momentum, nesterov=nesterov, dampening=dampening)
        for _ in range(3000):
            opt.zero_grad()
            (0.5 * lam * w.square()).sum().backward()
            opt.step()
        return abs(float(w.detach()))

    assert final_size(0.98 * k / lam) < 1e-3
    assert final_size(1.02 * k / lam) > 1e3


def test_lr_max_follows_the_optimizer_momentum():
    """lr_max_sgd / lr_max_adam are the factor of the optimizer over lambda_max, for every size
    and the full data; the full-data value on an explicit least-squares Hessian."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 6, generator=g, dtype=torch.float64)
    y = torch.randn(512, 1, generator=g, dtype=torch.float64)
    model = torch.nn.Linear(6, 1, bias=False).double()
    lam_full = float(torch.linalg.eigvalsh(x.T @ x / len(x))[-1])  # half_mse: H = X^T X / N
    f = hessian_vs_batch_size(model, (x, y), half_mse, batch_sizes=[32, 128], num_batches=2,
                              trace_matvecs=0, tol=1e-6, max_iter=20, momentum=0.9, nesterov=True,
                              adam_beta1=0.9)
    v = f.set_index(["metric", "batch_size"]).value
    k = 2 * 1.9 / 2.8
    assert v["lr_max_sgd", 512] == pytest.approx(k / lam_full, rel=1e-6)
    for b in (32, 128):
        assert v["lr_max_sgd", b] == pytest.approx(k / v["lambda_max_mean", b])
        assert v["lr_max_adam", b] == pytest.approx(38 / v["adam_lambda_max_mean", b])
    plain = hessian_vs_batch_size(model, (x, y), half_mse, batch_sizes=[32, 128], num_batches=2,
                                  trace_matvecs=0, tol=1e-6, max_iter=20)
    p = plain.set_index(["metric", "batch_size"]).value
    assert p["lr_max_sgd", 512] == pytest.approx(2 / lam_full, rel=1e-6)
    # the exponents are log-log slopes: a constant factor does not move them
    fits = f[f.batch_size.isna()].set_index("metric").value
    pfits = plain[plain.batch_size.isna()].set_index("metric").value
    assert fits["lr_sgd_exponent"] == pytest.approx(pfits["lr_sgd_exponent"])


@pytest.mark.parametrize("kwargs, message", [
    ({"momentum": 1.0}, "momentum must be a number in [0, 1), got 1.0"),
    ({"momentum": -0.1}, "momentum must be a number in [0, 1)"),
    ({"adam_beta1": 1.5}, "adam_beta1 must be a number in [0, 1), got 1.5"),
])
def test_bad_momentum_is_a_clear_error(kwargs, message):
    x, y = torch.randn(64, 3), torch.randn(64, 1)
    with pytest.raises(ValueError, match=re.escape(message)):
        hessian_vs_batch_size(torch.nn.Linear(3, 1), (x, y), half_mse, batch_sizes=[16], **kwargs)
