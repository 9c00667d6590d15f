"""Exact Hessian/GGN trace from per-example gradient norms (workbench.probes.exact_trace).

Oracle: the trace of the dense Hessian (torch.func.hessian) or dense GGN (J^T H_out J) of small
networks, and the diagonal blocks for parameter subsets.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian, jacrev

from workbench.models.convnet import ConvNet, ConvNetConfig
from workbench.models.mlp import MLP, MLPConfig
from workbench.probes import hessian_trace
from workbench.probes.exact_trace import exact_trace, unsupported_reason


def dense_matrix(model, batch, loss_fn, kind="hessian", names=None):
    """Dense Hessian (or GGN) of the batch loss over the named parameters (all by default)."""
    x, y = batch
    model.eval()
    params = {n: p.detach() for n, p in model.named_parameters()}
    names = list(params) if names is None else names
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    theta = torch.cat([params[n].reshape(-1) for n in names])

    def out_fn(th):
        parts = dict(zip(names, (t.reshape(s) for t, s in zip(th.split(sizes), shapes))))
        return functional_call(model, {**params, **parts}, (x,))

    if kind == "hessian":
        return hessian(lambda th: loss_fn(out_fn(th), y))(theta)
    out = out_fn(theta).detach()
    J = jacrev(out_fn)(theta).reshape(out.numel(), -1)
    Ho = hessian(lambda o: loss_fn(o.reshape(out.shape), y))(out.reshape(-1))
    return J.T @ Ho @ J


def trace_of(frame, layer="all"):
    rows = frame[(frame.metric == "trace") & (frame.layer == layer)]
    assert (rows.method == "exact").all()
    return rows.value.item()


def relu_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.LeakyReLU(0.1), nn.Linear(8, 4))


def data(n=24, d=6, c=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, c, (n,), generator=g)


CASES = {
    "ce": (F.cross_entropy, lambda y: y),
    "ce_smooth": (nn.CrossEntropyLoss(label_smoothing=0.2), lambda y: y),
    "mse": (nn.MSELoss(), lambda y: F.one_hot(y, 4).double()),
    "mse_sum": (nn.MSELoss(reduction="sum"), lambda y: F.one_hot(y, 4).double()),
}


@pytest.mark.parametrize("loss", list(CASES))
@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_relu_mlp_trace_equals_dense_hessian_and_ggn_trace(loss, kind):
    model, (x, y) = relu_mlp().double(), data()
    loss_fn, target = CASES[loss]
    batch = (x, target(y))
    true = float(torch.trace(dense_matrix(model, batch, loss_fn, kind)))
    f = hessian_trace(model, batch, loss_fn, kind=kind)  # auto picks exact here
    assert trace_of(f) == pytest.approx(true, rel=1e-10)
    assert f[f.metric == "trace_stderr"].value.item() == 0.0 and f.hvps.eq(0).all()


def test_piecewise_linear_hessian_and_ggn_traces_agree_but_matrices_do_not():
    """The reason the exact Hessian trace is valid: equal diagonals, different off-diagonals."""
    model, batch = relu_mlp().double(), data()
    H, G = dense_matrix(model, batch, F.cross_entropy), dense_matrix(model, batch, F.cross_entropy, "ggn")
    assert torch.allclose(H.diagonal(), G.diagonal(), atol=1e-12)
    assert (H - G).abs().max() > 1e-3


def test_subset_traces_are_the_diagonal_blocks():
    model, batch = relu_mlp().double(), data()
    f = hessian_trace(model, batch, F.cross_entropy, params=["0", "2.weight", "4"])
    for sub in ("0", "2.weight", "4"):
        names = [n for n, _ in model.named_parameters() if n == sub or n.startswith(sub + ".")]
        true = float(torch.trace(dense_matrix(model, batch, F.cross_entropy, names=names)))
        assert trace_of(f, sub) == pytest.approx(true, rel=1e-10)


def conv_nets():
    torch.manual_seed(0)
    return {
        "conv2d": (nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, stride=2), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4, 3)), (2, 6, 6)),
        "conv2d_many_positions": (nn.Sequential(nn.Conv2d(1, 2, 3, padding=2, dilation=2), nn.ReLU(),
                                                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3)),
                                  (1, 9, 9)),
        "conv1d": (nn.Sequential(nn.Conv1d(2, 3, 3, padding=2, dilation=2), nn.ReLU(),
                                 nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(3, 3)), (2, 7)),
        "sequence_linear": (nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2), nn.Flatten(),
                                          nn.Linear(6, 3)), (3, 5)),
        "convnet": (ConvNet(ConvNetConfig(in_channels=2, out_dim=3, norm="none", channels=3)), (2, 6, 6)),
        "residual_mlp": (MLP(MLPConfig(depth=2, width=5, residual=True, in_dim=12, out_dim=3)), (12,)),
    }


@pytest.mark.parametrize("name", list(conv_nets()))
def test_conv_sequence_and_workbench_models_match_dense_hessian(name):
    model, shape = conv_nets()[name]
    model = model.double()
    g = torch.Generator().manual_seed(2)
    batch = (torch.randn(10, *shape, generator=g, dtype=torch.float64), torch.randint(0, 3, (10,), generator=g))
    true = float(torch.trace(dense_matrix(model, batch, F.cross_entropy)))
    assert trace_of(hessian_trace(model, batch, F.cross_entropy, method="exact")) == pytest.approx(true, rel=1e-10)


def test_smooth_activations_are_exact_for_the_ggn_only():
    torch.manual_seed(0)
    model, batch = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).double(), data()
    true_g = float(torch.trace(dense_matrix(model, batch, F.cross_entropy, "ggn")))
    true_h = float(torch.trace(dense_matrix(model, batch, F.cross_entropy)))
    assert abs(true_g - true_h) > 1e-3 * abs(true_h)  # the Tanh's curvature is on the diagonal
    assert trace_of(hessian_trace(model, batch, F.cross_entropy, kind="ggn")) == pytest.approx(true_g, rel=1e-10)
    with pytest.raises(ValueError, match="Tanh.*kind='ggn'"):
        hessian_trace(model, batch, F.cross_entropy, method="exact")
    f = hessian_trace(model, batch, F.cross_entropy, num_matvecs=10_000)  # auto: falls back, still exact via basis
    assert set(f.method) == {"basis"} and f[f.metric == "trace"].value.item() == pytest.approx(true_h, rel=1e-8)
    f = hessian_trace(model, batch, F.cross_entropy, num_matvecs=12)
    assert set(f.method) <= {"hutchpp", "hutchinson"}


@pytest.mark.parametrize("build, match", [
    (lambda: MLP(MLPConfig(depth=2, width=8, norm="batch", in_dim=6, out_dim=4)), "BatchNorm"),
    (lambda: MLP(MLPConfig(depth=2, width=8, ws=True, in_dim=6, out_dim=4)), "WSLinear"),
    (lambda: nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 4)), "Dropout"),
    (lambda: nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 4)), "LayerNorm"),
    (lambda: nn.Sequential(nn.Linear(6, 4), nn.Conv1d(1, 1, 1, groups=1, padding="same")), "zero padding"),
])
def test_unsupported_structures_say_why(build, match):
    model = build()
    assert unsupported_reason(model, "hessian", "train") is not None
    with pytest.raises(ValueError, match=match):
        hessian_trace(model, data(), F.cross_entropy, method="exact")


def test_custom_forward_and_repeated_layer_are_refused():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 4)

        def forward(self, x):
            return self.lin(x) ** 2  # a forward the module tree does not show

    with pytest.raises(ValueError, match="forward is not one"):
        hessian_trace(Custom().double(), data(), F.cross_entropy, method="exact")
    lin = nn.Linear(6, 6)
    shared = nn.Sequential(lin, nn.ReLU(), lin, nn.Linear(6, 4)).double()
    with pytest.raises(ValueError, match="called more than once|shared by"):
        hessian_trace(shared, data(), F.cross_entropy, method="exact")
    a, b = nn.Linear(6, 6), nn.Linear(6, 6)
    b.weight = a.weight  # tied weights in two modules
    tied = nn.Sequential(a, nn.ReLU(), b, nn.ReLU(), nn.Linear(6, 4)).double()
    with pytest.raises(ValueError, match="tied weights"):
        hessian_trace(tied, data(), F.cross_entropy, method="exact")
    f = hessian_trace(tied, data(), F.cross_entropy, num_matvecs=10_000)  # auto: the basis, exact
    assert f[f.metric == "trace"].value.item() == pytest.approx(
        float(torch.trace(dense_matrix(tied, data(), F.cross_entropy))), rel=1e-8)


def test_dropout_is_fine_in_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 4)).double()
    batch = data()
    f = hessian_trace(model, batch, F.cross_entropy, mode="eval")
    assert model.training  # restored
    true = float(torch.trace(dense_matrix(model, batch, F.cross_entropy)))  # dense_matrix uses eval
    assert trace_of(f) == pytest.approx(true, rel=1e-10)


def test_a_loss_that_couples_examples_is_refused_and_auto_falls_back():
    model, batch = relu_mlp().double(), data()

    def coupled(out, y):  # a batch-level penalty: the output Hessian is not per-example
        return F.cross_entropy(out, y) + out.mean(0).pow(2).sum()

    with pytest.raises(ValueError, match="couples examples"):
        exact_trace(model, batch, coupled)
    with pytest.raises(ValueError, match="couples examples"):
        hessian_trace(model, batch, coupled, method="exact")
    true = float(torch.trace(dense_matrix(model, batch, coupled)))
    f = hessian_trace(model, batch, coupled, num_matvecs=10_000)
    assert set(f.method) == {"basis"} and f[f.metric == "trace"].value.item() == pytest.approx(true, rel=1e-8)


def test_model_is_left_as_found():
    model, batch = relu_mlp(), data()
    batch = (batch[0].float(), batch[1])
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hessian_trace(model, batch, F.cross_entropy, method="exact", mode="train")
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_hessian_vs_batch_size_uses_the_exact_trace_where_it_can():
    from workbench.probes import hessian_vs_batch_size

    model, (x, y) = relu_mlp().double(), data(n=64)
    f = hessian_vs_batch_size(model, (x, y), F.cross_entropy, batch_sizes=[16], num_batches=2,
                              adam=False, max_iter=20)
    full = f[(f.metric == "trace") & (f.batch_size == 64)].value.item()
    assert full == pytest.approx(float(torch.trace(dense_matrix(model, (x, y), F.cross_entropy))), rel=1e-10)
    # the mini-batch traces are exact too: their spread is the batches', not an estimator's
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    exact = [float(torch.trace(dense_matrix(model, (x[i], y[i]), F.cross_entropy)))
             for i in (perm[:16], perm[16:32])]
    row = f[f.batch_size == 16].set_index("metric").value
    assert row["trace_mean"] == pytest.approx(sum(exact) / 2, rel=1e-10)


def test_seed_blocks_do_not_change_the_trace():
    model, batch = relu_mlp().double(), data()
    one = exact_trace(model, batch, F.cross_entropy, seed_block=1)
    all_ = exact_trace(model, batch, F.cross_entropy)
    assert one.keys() == all_.keys()
    assert all(one[k] == pytest.approx(all_[k], rel=1e-12) for k in one)
