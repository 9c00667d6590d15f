"""Curvature probes against dense Hessians (torch.func.hessian + eigvalsh) on float64 models of a few
hundred parameters: top/bottom eigenvalues, trace and density, in train and eval mode, for the GGN
and per parameter block; plus bad input and non-convergence."""
import contextlib
import copy
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, jacrev, replace_all_batch_norm_modules_

from workbench.data import cross_entropy_loss
from workbench.models import ConvNetConfig, MLPConfig, TransformerConfig, build_model
from workbench.probes import hessian_density, hessian_top_eigs, hessian_trace
from workbench.probes.hessian_density import broadened_density
from workbench.probes.hvp import curvature_operator

CE = F.cross_entropy


def mlp(norm, seed=0):
    opts = {"groups": 2} if norm in ("group", "batch_channel") else (
        {"virtual_batch_size": 4} if norm == "ghost_batch" else {})
    torch.manual_seed(seed)
    return build_model(MLPConfig(depth=2, width=8, norm=norm, norm_options=opts, in_dim=5, out_dim=3)).double()


def features(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def skew_running_stats(model):
    """Running statistics unlike any batch's, so the train and eval Hessians differ."""
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "running_mean") and m.running_mean is not None:
                m.running_mean.fill_(0.5)
                m.running_var.fill_(3.0)


def _explicit_batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
                         momentum=0.1, eps=1e-5):
    """``F.batch_norm`` in elementary ops (channel axis 1, statistics over every other axis)."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    if training or running_mean is None:
        dims = [d for d in range(x.dim()) if d != 1]
        mean = x.mean(dim=dims, keepdim=True)
        var = (x - mean).pow(2).mean(dim=dims, keepdim=True)
    else:
        mean, var = running_mean.reshape(shape), running_var.reshape(shape)
    y = (x - mean) / torch.sqrt(var + eps)
    return y if weight is None else y * weight.reshape(shape) + bias.reshape(shape)


def _explicit_layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = tuple(range(x.dim() - len(normalized_shape), x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    y = (x - mean) / torch.sqrt((x - mean).pow(2).mean(dim=dims, keepdim=True) + eps)
    return y if weight is None else y * weight + (0 if bias is None else bias)


@contextlib.contextmanager
def explicit_norms():
    """torch 2.13's torch.func gets second derivatives of ``F.batch_norm`` (training) and
    ``F.layer_norm`` wrong (the "Hessian" is not even symmetric; finite differences agree with
    double backward), so the dense references normalize in elementary ops."""
    with mock.patch.object(F, "batch_norm", _explicit_batch_norm), \
            mock.patch.object(F, "layer_norm", _explicit_layer_norm):
        yield


def dense(model, batch, loss_fn, mode, kind="hessian", params=None):
    """Dense Hessian / GGN over the (subset of) trainable parameters, by torch.func on a copy."""
    x, y = batch
    sel = [(n, p) for n, p in model.named_parameters()
           if params is None or n == params or n.startswith(params + ".")]
    names, shapes = [n for n, _ in sel], [p.shape for _, p in sel]
    theta = torch.cat([p.detach().reshape(-1) for _, p in sel])
    c = copy.deepcopy(model)
    c.train(mode == "train")
    if mode == "train":
        replace_all_batch_norm_modules_(c)  # batch statistics, no in-place buffer updates
    fixed = {n: p.detach() for n, p in c.named_parameters() if n not in names}

    def out_fn(th):
        ps, i = {}, 0
        for n, s in zip(names, shapes):
            ps[n] = th[i:i + s.numel()].reshape(s)
            i += s.numel()
        return functional_call(c, {**fixed, **ps}, (x,))

    with explicit_norms():
        if kind == "hessian":
            return torch.func.hessian(lambda th: loss_fn(out_fn(th), y))(theta)
        out = out_fn(theta).detach()
        J = jacrev(out_fn)(theta).reshape(out.numel(), -1)                   # (outputs, P)
    Ho = torch.func.hessian(lambda o: loss_fn(o.reshape(out.shape), y))(out.reshape(-1))
    return J.T @ Ho @ J


def check_eigs(model, batch, loss_fn, mode, kind="hessian", params=None, H=None):
    H = dense(model, batch, loss_fn, mode, kind, params) if H is None else H
    ref = torch.linalg.eigvalsh(H).numpy()
    f = hessian_top_eigs(model, batch, loss_fn, k=3, bottom_k=1, mode=mode, kind=kind, params=params,
                         tol=1e-9, max_iter=400)
    ev = f[f.metric == "eigenvalue"].set_index("index").value
    scale = np.abs(ref).max()
    np.testing.assert_allclose(ev[[1, 2, 3]].to_numpy(), ref[::-1][:3], atol=1e-6 * scale)
    np.testing.assert_allclose(ev[-1], ref[0], atol=1e-6 * scale)
    assert f.converged.all()
    tr = hessian_trace(model, batch, loss_fn, num_matvecs=10_000, mode=mode, kind=kind, params=params)
    assert tr[tr.metric == "trace"].value.item() == pytest.approx(float(np.trace(H.numpy())), abs=1e-8 * scale)
    return ref


NORMS = ["none", "batch", "layer", "group", "rms", "ghost_batch"]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("norm", NORMS)
def test_mlp_eigs_and_trace_match_dense_hessian(norm, mode):
    model, batch = mlp(norm), features()
    skew_running_stats(model)
    check_eigs(model, batch, CE, mode)


@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
def test_ggn_matches_explicit_jt_hout_j(norm):
    model, batch = mlp(norm), features()
    ref = check_eigs(model, batch, CE, "train", kind="ggn")
    assert ref.min() > -1e-10  # the GGN of a convex loss is PSD


def test_batchnorm_train_and_eval_hessians_differ_and_each_matches_its_reference():
    model, batch = mlp("batch"), features()
    skew_running_stats(model)
    tr = check_eigs(model, batch, CE, "train")
    ev = check_eigs(model, batch, CE, "eval")
    assert abs(tr[-1] - ev[-1]) > 0.1 * abs(ev[-1])


def test_parameter_subset_is_the_diagonal_block():
    model, batch = mlp("layer"), features()
    H = dense(model, batch, CE, "train")
    owner = [n for n, p in model.named_parameters() for _ in range(p.numel())]
    idx = [i for i, n in enumerate(owner) if n.startswith("blocks.1.")]
    sub = H[idx][:, idx]
    torch.testing.assert_close(sub, dense(model, batch, CE, "train", params="blocks.1"))
    check_eigs(model, batch, CE, "train", params="blocks.1", H=sub)
    f = hessian_top_eigs(model, batch, CE, params=["blocks.0.0", "head"], tol=1e-9)
    assert list(f.layer.unique()) == ["blocks.0.0", "head"]


def test_tiny_cnn_with_batchnorm_both_modes():
    torch.manual_seed(0)
    model = build_model(ConvNetConfig(stages=1, channels=4, norm="batch", in_channels=1, out_dim=3)).double()
    assert sum(p.numel() for p in model.parameters()) < 1000
    g = torch.Generator().manual_seed(2)
    batch = torch.randn(8, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)
    skew_running_stats(model)
    for mode in ("train", "eval"):
        check_eigs(model, batch, CE, mode)


def test_one_block_transformer():
    torch.manual_seed(0)
    model = build_model(TransformerConfig(depth=1, d_model=8, heads=2, mlp_ratio=2, vocab_size=5,
                                          seq_len=4)).double()
    assert sum(p.numel() for p in model.parameters()) < 1000
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 5, (6, 4), generator=g)
    batch = (tokens, torch.randint(0, 5, (6, 4), generator=g))
    for kind in ("hessian", "ggn"):
        check_eigs(model, batch, cross_entropy_loss, "train", kind=kind)


def test_hutchinson_and_hutchpp_within_their_standard_error():
    model, batch = mlp("batch"), features()
    true = float(torch.trace(dense(model, batch, CE, "train")))
    p = sum(q.numel() for q in model.parameters())
    f = hessian_trace(model, batch, CE, method="both", num_matvecs=p // 2, seed=3)
    for meth in ("hutchinson", "hutchpp"):
        rows = f[f.method == meth].set_index("metric").value
        assert abs(rows["trace"] - true) <= 4 * rows["trace_stderr"] + 1e-9, meth
        assert rows["trace_stderr"] < 0.25 * abs(true)
    se = f.set_index(["method", "metric"]).value
    assert se["hutchpp", "trace_stderr"] < se["hutchinson", "trace_stderr"]


def test_density_matches_dense_spectrum():
    model, batch = mlp("layer"), features()
    ref = torch.linalg.eigvalsh(dense(model, batch, CE, "train")).numpy()
    p = ref.size
    f = hessian_density(model, batch, CE, num_runs=16, steps=p, num_points=200, sigma_rel=0.05)
    s = f[f.metric != "density"].set_index("metric").value
    assert s["lambda_max"] == pytest.approx(ref.max(), rel=1e-6)
    assert s["lambda_min"] == pytest.approx(ref.min(), rel=1e-6)
    Hn = dense(model, batch, CE, "train").numpy()
    runs_se = np.sqrt(2 * ((Hn**2).sum() - (np.diag(Hn) ** 2).sum()) / 16)  # Rademacher Hutchinson
    assert abs(s["trace"] - ref.sum()) < 4 * runs_se
    d = f[f.metric == "density"]
    grid, dens = d.eigenvalue.to_numpy(), d.value.to_numpy()
    exact = broadened_density(ref[None], np.full((1, p), 1 / p), grid, s["sigma"])
    step = grid[1] - grid[0]
    assert dens.sum() * step == pytest.approx(1.0, abs=0.02)
    assert np.abs(dens - exact).sum() * step < 0.1  # L1 distance of two probability densities


def test_block_products_equal_single_products_and_powernorm_operator_is_fixed():
    model, batch = mlp("power"), features()
    CE(model(batch[0]), batch[1]).backward()  # a nonzero ema_gz, as after training
    g = torch.Generator().manual_seed(0)
    with pytest.warns(UserWarning, match="non-symmetric"), \
            curvature_operator(model, batch, CE, mode="train") as op:
        V = torch.randn(4, op.dim, generator=g, dtype=torch.float64)
        single = torch.stack([op.mv(v) for v in V])
        torch.testing.assert_close(op.mm(V), single)
        torch.testing.assert_close(op.mv(V[0]), single[0])  # same matrix after many products
    with curvature_operator(model, batch, CE, mode="train", kind="ggn") as op:
        G = torch.stack([op.mv(e) for e in torch.eye(op.dim, dtype=torch.float64)])
        torch.testing.assert_close(G, G.T)  # GGN stays symmetric under PowerNorm's backward


def test_return_vectors_are_eigenvectors_shaped_like_parameters():
    model, batch = mlp("batch"), features()
    H = dense(model, batch, CE, "train")
    frame, vecs = hessian_top_eigs(model, batch, CE, k=2, mode="train", tol=1e-10, return_vectors=True)
    assert len(vecs) == 2 and list(vecs[0]) == [n for n, _ in model.named_parameters()]
    lam = frame[frame.metric == "eigenvalue"].value.to_numpy()
    for v, lam_i in zip(vecs, lam):
        assert all(v[n].shape == p.shape for n, p in model.named_parameters())
        flat = torch.cat([t.reshape(-1) for t in v.values()])
        assert float(flat.norm()) == pytest.approx(1.0, abs=1e-8)
        torch.testing.assert_close(H @ flat, lam_i * flat, atol=1e-6, rtol=0)


def test_repeated_eigenvalues_are_listed_as_often_as_they_repeat():
    """Linear regression with 3 outputs and MSE: H = I_3 (x) A, so every eigenvalue of A is 3-fold.
    Lanczos from one start vector saw each once: top-3 came back as A's top three, converged."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3).double()
    x = torch.randn(64, 5, dtype=torch.float64)
    batch = (x, torch.randn(64, 3, dtype=torch.float64))

    def mse(out, y):
        return ((out - y) ** 2).mean()

    evals = torch.linalg.eigvalsh(dense(model, batch, mse, "train"))
    frame, vecs = hessian_top_eigs(model, batch, mse, k=4, bottom_k=3, tol=1e-8, return_vectors=True)
    eig = frame[frame.metric == "eigenvalue"].set_index("index").value
    assert eig[[1, 2, 3, 4]].tolist() == pytest.approx(evals.flip(0)[:4].tolist(), rel=1e-7)
    assert eig[[1, 2, 3]].nunique() == 1 or eig[1] - eig[3] < 1e-9  # one value, three times
    assert eig[[-1, -2, -3]].tolist() == pytest.approx(evals[:3].tolist(), rel=1e-7, abs=1e-10)
    assert frame.converged.all()
    V = torch.stack([torch.cat([t.reshape(-1) for t in v.values()]) for v in vecs])
    torch.testing.assert_close(V @ V.T, torch.eye(7, dtype=torch.float64), atol=1e-6, rtol=0)
    # without repeats the deflated check costs a short extra run and changes nothing
    model, batch = mlp("none"), features()
    ref = torch.linalg.eigvalsh(dense(model, batch, CE, "train")).flip(0)[:3]
    f = hessian_top_eigs(model, batch, CE, k=3, tol=1e-10)
    assert f[f.metric == "eigenvalue"].value.tolist() == pytest.approx(ref.tolist(), rel=1e-8)


def test_non_converged_lanczos_returns_best_estimate():
    model, batch = mlp("none"), features()
    f = hessian_top_eigs(model, batch, CE, k=1, max_iter=3, tol=1e-12)
    assert not f.converged.any() and (f.iters == 3).all() and (f.hvps == 3).all()
    ref = torch.linalg.eigvalsh(dense(model, batch, CE, "train"))[-1].item()
    assert 0 < f[f.metric == "eigenvalue"].value.item() <= ref + 1e-9


def test_bad_input_raises_value_errors():
    model, (x, y) = mlp("batch"), features()
    with pytest.raises(ValueError, match="do not fit the model"):
        hessian_top_eigs(model, (torch.randn(16, 7, dtype=torch.float64), y), CE)
    with pytest.raises(ValueError, match="empty batch"):
        hessian_trace(model, (x[:0], y[:0]), CE)
    with pytest.raises(ValueError, match="but targets have"):
        hessian_trace(model, (x, y[:3]), CE)
    with pytest.raises(ValueError, match="exceeds the .* parameters"):
        hessian_top_eigs(model, (x, y), CE, k=10_000)
    with pytest.raises(ValueError, match="scalar"):
        hessian_top_eigs(model, (x, y), lambda o, t: F.cross_entropy(o, t, reduction="none"))
    with pytest.raises(ValueError, match="unknown mode 'test'; choose one of: train, eval"):
        hessian_density(model, (x, y), CE, mode="test")
    with pytest.raises(ValueError, match="unknown kind"):
        hessian_top_eigs(model, (x, y), CE, kind="fisher")
    with pytest.raises(ValueError, match="unknown params 'blocks.9'"):
        hessian_top_eigs(model, (x, y), CE, params="blocks.9")
    frozen = mlp("none").requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        hessian_trace(frozen, (x, y), CE)


def test_batch_channel_train_mode_and_powernorm():
    model, (x, y) = mlp("batch_channel"), features()
    ref = copy.deepcopy(model)
    with torch.no_grad():  # train mode = the estimates updated by this batch, then held constant
        ref.train()(x)
    check_eigs(model, (x, y), CE, "train", H=dense(ref.eval(), (x, y), CE, "eval"))
    power = mlp("power")
    CE(power(x), y).backward()  # a nonzero running gradient statistic
    check_eigs(power, (x, y), CE, "eval")
    # Train mode: products through PowerNorm's approximate backward (statistics held fixed, as
    # the module documents) are linear once the backward's constant offset is removed.
    g = torch.Generator().manual_seed(5)
    with pytest.warns(UserWarning), curvature_operator(power, (x, y), CE, mode="train") as op:
        v, w = torch.randn(2, op.dim, generator=g, dtype=torch.float64)
        torch.testing.assert_close(op.mv(2 * v + w), 2 * op.mv(v) + op.mv(w))
        assert float(op.mv(torch.zeros_like(v)).abs().max()) == 0


class _DenseOp:
    """A symmetric matrix behind the ``mm`` interface of a curvature operator."""

    def __init__(self, H):
        self.H, self.dim, self.device, self.dtype = H, H.shape[0], H.device, H.dtype

    def mm(self, vs):
        return vs @ self.H


def _symmetric(eigenvalues, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=g,
                                       dtype=torch.float64))
    return (Q * torch.as_tensor(eigenvalues, dtype=torch.float64)) @ Q.T


@pytest.mark.parametrize("spectrum, expected", [
    ("flat", "hutchinson"),  # eigenvalues spread evenly: the sketch removes almost nothing
    ("spiked", "hutchpp"),   # five outliers carry most of the Frobenius norm
])
def test_auto_trace_picks_the_estimator_with_the_smaller_error(spectrum, expected):
    from workbench.probes.hessian_trace import _trace

    p, m, seeds = 300, 30, range(60)
    rng = np.random.default_rng(0)
    lam = rng.uniform(0.0, 1.0, p) if spectrum == "flat" else np.r_[[50.0, 40, 30, 20, 10],
                                                                      rng.uniform(-0.1, 0.1, p - 5)]
    op = _DenseOp(_symmetric(lam))
    true = lam.sum()
    runs = {meth: [_trace(op, meth, m, seed) for seed in seeds]
            for meth in ("auto", "hutchpp", "hutchinson")}
    assert {used for _, _, used in runs["auto"]} == {expected}
    err = {meth: np.sqrt(np.mean([(tr - true) ** 2 for tr, _, _ in r])) for meth, r in runs.items()}
    assert err["auto"] == pytest.approx(err[expected], rel=0.6)  # same estimator, 2/3 vs all of m
    other = "hutchpp" if expected == "hutchinson" else "hutchinson"
    assert err["auto"] < err[other]
    # unbiased, with an honest standard error: the mean over seeds is within 4 of its errors
    tr_auto = np.array([tr for tr, _, _ in runs["auto"]])
    assert abs(tr_auto.mean() - true) < 4 * tr_auto.std() / np.sqrt(len(tr_auto)) + 1e-9
    se = np.array([s for _, s, _ in runs["auto"]])
    assert 0.5 < np.median(se) / tr_auto.std() < 2.0


def test_auto_trace_is_the_default_and_reports_its_estimator():
    model, batch = mlp("batch"), features()
    true = float(torch.trace(dense(model, batch, CE, "train")))
    f = hessian_trace(model, batch, CE, num_matvecs=60, seed=1)
    rows = f.set_index("metric").value
    assert set(f.method) <= {"hutchpp", "hutchinson"}
    assert abs(rows["trace"] - true) <= 4 * rows["trace_stderr"] + 1e-9


@pytest.mark.parametrize("batched", [True, False])
def test_first_block_keeps_the_products_it_timed(batched):
    """The batched-vs-looped timing spends 12 products on the first block; 4 of them are results."""
    model, batch = mlp("layer"), features()
    H = dense(model, batch, CE, "train")
    V = torch.randn(9, H.shape[0], dtype=H.dtype, generator=torch.Generator().manual_seed(4))
    with curvature_operator(model, batch, CE, mode="train") as op:
        with mock.patch.object(type(op), "_apply", autospec=True, side_effect=type(op)._apply) as spy:
            if not batched:  # a module whose backward cannot be vmapped: the loop from the start
                real = spy.side_effect

                def no_vmap(self, vs, is_batched):
                    if is_batched:
                        raise RuntimeError("no vmap")
                    return real(self, vs, is_batched)
                spy.side_effect = no_vmap
            out = op.mm(V)
        torch.testing.assert_close(out, V @ H)
        assert op.hvps == (12 + 5 if batched else 9)
        torch.testing.assert_close(op.mm(V[:2]), V[:2] @ H)
        assert op.hvps == (12 + 5 if batched else 9) + 2


@pytest.mark.parametrize("probe", [hessian_top_eigs, hessian_trace, hessian_density])
@pytest.mark.parametrize("where", ["loss", "grad"])
def test_non_finite_loss_or_gradient_is_a_value_error_saying_diverged(probe, where):
    """At weights with a NaN loss (a diverged model), or a finite loss whose gradient is not
    finite, curvature is undefined: a NonFiniteError (a ValueError) that says so, not Lanczos's
    "Eigenvalues did not converge" or torch's allclose error; the model is left as it was."""
    from workbench.probes._batch import NonFiniteError

    model, batch = mlp("none"), features()
    if where == "loss":
        with torch.no_grad():
            model.head.weight[0, 0] = float("nan")
        match = "the loss at the current weights is nan"

        def loss_fn(out, y):
            return CE(out, y)
    else:  # |t|^0.5 has an infinite derivative at t = 0: a finite loss, an inf gradient
        match = "the gradient at the current weights is not finite"

        def loss_fn(out, y):
            return CE(out, y) + (out[:, 0] - out[:, 0].detach()).abs().sqrt().mean()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(NonFiniteError, match=match) as info:
        probe(model, batch, loss_fn)
    assert isinstance(info.value, ValueError) and "diverg" in str(info.value)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) or (before[k].isnan() == after[k].isnan()).all()
               for k in before)
