"""landscape against its oracles: filter norms, the centre of a slice, a slice toward a checkpoint."""
import importlib.util

import pytest
import torch

from workbench.models import ConvNetConfig, MLPConfig, build_model
from workbench.probes._directions import filter_normalize, random_direction, trainable
from workbench.probes.landscape import landscape

LF = torch.nn.functional.cross_entropy


def _mlp(norm="batch", seed=0):
    torch.manual_seed(seed)
    return build_model(MLPConfig(depth=2, width=8, norm=norm, in_dim=5, out_dim=3))


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 5, generator=g), torch.randint(0, 3, (32,), generator=g)


def _loss(model, batch, mode):
    model.train(mode == "train")
    with torch.no_grad():
        return float(LF(model(batch[0]), batch[1]))


def _scramble_running_stats(model, seed):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_filter_normalized_directions_match_each_filter_norm(seed):
    torch.manual_seed(seed)
    model = build_model(ConvNetConfig(stages=2, channels=4, norm="batch", in_channels=3, out_dim=5))
    params = [p for _, p in trainable(model)]
    d = filter_normalize(random_direction(params, torch.Generator().manual_seed(seed)), params)
    for di, p in zip(d, params):
        if p.dim() <= 1:
            assert torch.equal(di, torch.zeros_like(p))
        else:
            torch.testing.assert_close(di.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1),
                                       rtol=1e-5, atol=0)
    keep = filter_normalize(random_direction(params, torch.Generator().manual_seed(seed)), params,
                            ignore_1d=False)
    for di, p in zip(keep, params):
        if p.dim() == 1:
            assert float(di.norm()) == pytest.approx(float(p.detach().norm()), rel=1e-5)


@pytest.mark.parametrize("norm", ["none", "batch", "layer", "power"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("dims", [1, 2])
def test_centre_of_every_slice_is_the_loss_at_w(norm, mode, dims):
    model, batch = _mlp(norm), _batch()
    with torch.no_grad():
        _scramble_running_stats(model, 3)
    expected = _loss(_copy(model, norm), batch, mode)
    frame = landscape(model, batch, LF, dims=dims, steps=5, mode=mode)
    centre = frame[(frame.alpha == 0) & ((frame.beta == 0) if dims == 2 else True)]
    assert len(centre) == 1 and len(frame) == 5**dims
    assert centre.value.item() == pytest.approx(expected, rel=1e-6)
    start = landscape(model, batch, LF, direction="checkpoint", other=_mlp(norm, seed=5), dims=dims,
                      steps=3, mode=mode)
    at_w = start[(start.alpha == 0) & ((start.beta == 0) if dims == 2 else True)]
    assert at_w.value.item() == pytest.approx(expected, rel=1e-6)


def _copy(model, norm):
    ref = _mlp(norm)
    ref.load_state_dict(model.state_dict())
    return ref


@pytest.mark.parametrize("norm", ["batch", "group", "power"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_checkpoint_slice_ends_at_the_checkpoints_loss(norm, mode):
    model, other, batch = _mlp(norm, seed=0), _mlp(norm, seed=7), _batch()
    with torch.no_grad():
        _scramble_running_stats(other, 4)
    frame = landscape(model, batch, LF, direction="checkpoint", other=other, dims=1, steps=5, mode=mode)
    assert frame.alpha.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    end_from_state = landscape(model, batch, LF, direction="checkpoint", other=other.state_dict(),
                               dims=1, steps=5, mode=mode)
    assert frame.value.tolist() == end_from_state.value.tolist()
    assert frame.value.iloc[-1] == pytest.approx(_loss(_copy(other, norm), batch, mode), rel=1e-5)
    # the midpoint is the loss of the averaged weights and buffers, evaluated explicitly
    mid = _mlp(norm)
    mid.load_state_dict({k: (v + other.state_dict()[k]) / 2 if v.is_floating_point() else v
                         for k, v in model.state_dict().items()})
    assert frame.value.iloc[2] == pytest.approx(_loss(mid, batch, mode), rel=1e-5)


def test_a_checkpoint_slice_with_frozen_parameters():
    """Only trainable parameters move: a frozen one that differs in the checkpoint is named (a = 1
    would not be the checkpoint); frozen ones that agree leave the end point exact."""
    model, other, batch = _mlp("none", seed=0), _mlp("none", seed=7), _batch()
    first = next(iter(model.parameters()))
    first.requires_grad_(False)
    name = next(n for n, _ in model.named_parameters())
    with pytest.raises(ValueError, match=rf"frozen parameters \(requires_grad=False\): {name}"):
        landscape(model, batch, LF, direction="checkpoint", other=other, dims=1, steps=3)
    with torch.no_grad():
        dict(other.named_parameters())[name].copy_(first)
    frame = landscape(model, batch, LF, direction="checkpoint", other=other, dims=1, steps=3)
    assert frame.value.iloc[-1] == pytest.approx(_loss(other, batch, "train"), rel=1e-5)


@pytest.mark.parametrize("norm", ["none", "batch", "ghost_batch", "power"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batched_evaluation_matches_one_point_per_call(norm, mode):
    model, batch = _mlp(norm), _batch()
    with torch.no_grad():
        _scramble_running_stats(model, 3)
    one = landscape(model, batch, LF, steps=7, mode=mode, points_per_call=1)
    many = landscape(model, batch, LF, steps=7, mode=mode, points_per_call=10)
    torch.testing.assert_close(torch.tensor(many.value.tolist()), torch.tensor(one.value.tolist()),
                               rtol=1e-5, atol=1e-6)
    # "auto" (the default) times both on the first 3 chunks of 16 points and keeps every result:
    # whichever it picks, the grid's losses (and their order) are those of one point per call
    auto = landscape(model, batch, LF, steps=7, mode=mode)  # 49 points: timing + 1 point left
    torch.testing.assert_close(torch.tensor(auto.value.tolist()), torch.tensor(one.value.tolist()),
                               rtol=1e-5, atol=1e-6)
    assert auto.alpha.tolist() == one.alpha.tolist() and auto.beta.tolist() == one.beta.tolist()
    other = _mlp(norm, seed=3)
    one = landscape(model, batch, LF, direction="checkpoint", other=other, dims=1, steps=5, mode=mode,
                    points_per_call=1)
    many = landscape(model, batch, LF, direction="checkpoint", other=other, dims=1, steps=5, mode=mode,
                     points_per_call=3)
    torch.testing.assert_close(torch.tensor(many.value.tolist()), torch.tensor(one.value.tolist()),
                               rtol=1e-5, atol=1e-6)


def test_random_directions_are_seeded_privately():
    model, batch = _mlp(), _batch()
    a = landscape(model, batch, LF, dims=1, steps=5, seed=3)
    torch.manual_seed(123)
    b = landscape(model, batch, LF, dims=1, steps=5, seed=3)
    c = landscape(model, batch, LF, dims=1, steps=5, seed=4)
    assert a.value.tolist() == b.value.tolist() != c.value.tolist()


def test_hessian_directions_when_the_curvature_probe_is_present():
    model, batch = _mlp("none"), _batch()
    if importlib.util.find_spec("workbench.probes.hessian_top_eigs") is None:
        with pytest.raises(ValueError, match="hessian_top_eigs"):
            landscape(model, batch, LF, direction="hessian")
        return
    from workbench.probes.hessian_top_eigs import hessian_top_eigs

    model = model.double()
    batch = (batch[0].double(), batch[1])
    frame = landscape(model, batch, LF, direction="hessian", dims=1, steps=5, span=2e-3)
    f = frame.value.tolist()
    assert f[2] == pytest.approx(_loss(model, batch, "train"), rel=1e-12)
    top = hessian_top_eigs(model, batch, LF, k=1)
    lam = top[top.metric == "eigenvalue"].value.item()
    # curvature of the slice along the top eigenvector = the top eigenvalue
    assert (f[3] - 2 * f[2] + f[1]) / 1e-3**2 == pytest.approx(lam, rel=1e-3)
    assert frame.hvps.iloc[0] > 0


@pytest.mark.parametrize("kwargs, msg", [
    ({"steps": 1}, "steps must be >= 2"), ({"steps": 0}, "steps must be > 0"),
    ({"span": 0.0}, "span must be > 0"), ({"dims": 3}, "unknown dims 3; choose one of: 1, 2"),
    ({"direction": "pca"}, "unknown direction 'pca'"), ({"direction": "checkpoint"}, "other"),
    ({"other": {}}, "only there"), ({"mode": "test"}, "unknown mode"),
    ({"points_per_call": 0}, "points_per_call must be > 0"),
    ({"direction": "checkpoint", "other": {}}, "the checkpoint lacks"),
])
def test_bad_input_is_a_value_error_that_says_what_is_supported(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        landscape(_mlp(), _batch(), LF, **kwargs)


@pytest.mark.parametrize("batched_faster", [True, False])
def test_auto_points_per_call_finishes_the_grid_with_the_faster_way(batched_faster, monkeypatch):
    import importlib
    from types import SimpleNamespace

    module = importlib.import_module("workbench.probes.landscape")

    model, batch = _mlp("batch"), _batch()
    ref = landscape(model, batch, LF, steps=9, mode="train", points_per_call=1)
    calls = []
    real = module._batched

    def spy(*args, **kwargs):
        run = real(*args, **kwargs)
        return lambda C: calls.append(len(C)) or run(C)
    monkeypatch.setattr(module, "_batched", spy)
    # clock readings t0, t1, t2: batched chunk takes 1 s or 3 s, the one-by-one chunk 2 s
    ticks = iter([0.0, 1.0, 3.0] if batched_faster else [0.0, 3.0, 5.0])
    monkeypatch.setattr(module, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    auto = landscape(model, batch, LF, steps=9, mode="train")  # 81 points: 48 timed, 33 left
    assert calls == ([16, 16, 16, 16, 1] if batched_faster else [16, 16])
    torch.testing.assert_close(torch.tensor(auto.value.tolist()), torch.tensor(ref.value.tolist()),
                               rtol=1e-5, atol=1e-6)
