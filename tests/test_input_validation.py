"""Bad arguments get a ValueError (CLI: one line, exit status 2) that names the argument, the bad
value and what is valid, never a raw TypeError/KeyError/RuntimeError from deep inside."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from workbench.models import MLPConfig, build_model, config_from_dict, model_config
from workbench.probes import (
    depth_variance,
    gradient_noise_scale,
    hessian_top_eigs,
    hessian_vs_batch_size,
)
from workbench.probes.hvp import select_params
from workbench.sweeps import Sweep
from workbench.train import TrainConfig
from workbench.utils import resolve_device

CE = F.cross_entropy


def _model(norm="batch", **kw):
    torch.manual_seed(0)
    return build_model(MLPConfig(depth=2, width=8, norm=norm, in_dim=5, out_dim=3, **kw)).double()


def _batch(n=24):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _values(frame):
    return frame[frame.layer == "all"].set_index("metric").value


# -- #5: gradient_noise_scale's default small_batch ------------------------------------------------

@pytest.mark.parametrize("n", [3, 6, 7])
def test_noise_scale_default_sub_batches_fit_batch_norm(n):
    """N < 8 used to give one-example sub-batches, which BatchNorm cannot run in train mode."""
    model, (x, y) = _model("batch"), _batch(n)
    v = _values(gradient_noise_scale(model, (x[:n], y[:n]), CE, hessian=False))
    ref = _values(gradient_noise_scale(model, (x[:n], y[:n]), CE, hessian=False, small_batch=2))
    assert v["trace_cov_two_batch"] == pytest.approx(ref["trace_cov_two_batch"], rel=1e-12)
    assert math.isfinite(v["trace_cov_two_batch"])


def test_noise_scale_default_avoids_a_one_example_ghost_batch():
    """Sub-batches of 5 with virtual_batch_size=4 end in a virtual batch of one example."""
    model, batch = _model("ghost_batch", norm_options={"virtual_batch_size": 4}), _batch(20)
    v = _values(gradient_noise_scale(model, batch, CE, hessian=False))
    assert math.isfinite(v["trace_cov_two_batch"])


def test_hessian_vs_batch_size_defaults_avoid_a_one_example_ghost_batch():
    """N = 18: N // 2 = 9 ends in a virtual batch of one with virtual_batch_size=8 (the trainer's
    ``full`` preset on a batch of 18 failed); the default moves it to 8."""
    model, batch = _model("ghost_batch", norm_options={"virtual_batch_size": 8}), _batch(18)
    f = hessian_vs_batch_size(model, batch, CE, max_iter=5, trace_matvecs=0, adam=False)
    assert sorted(f.batch_size.dropna().unique()) == [2, 4, 8, 18]  # 18: the full batch
    plain = hessian_vs_batch_size(_model("layer"), batch, CE, max_iter=5, trace_matvecs=0, adam=False)
    assert sorted(plain.batch_size.dropna().unique()) == [2, 4, 9, 18]


def test_noise_scale_too_small_a_batch_for_batch_norm_names_small_batch():
    model, (x, y) = _model("batch"), _batch()
    with pytest.raises(ValueError, match=r"small_batch=1 .*batch of 2\b.*at least 3 examples"):
        gradient_noise_scale(model, (x[:2], y[:2]), CE, hessian=False)
    with pytest.raises(ValueError, match=r"small_batch=1 .*sub-batches of at least 2 examples in train mode"):
        gradient_noise_scale(model, (x, y), CE, hessian=False, small_batch=1)
    # eval mode uses running statistics: one-example sub-batches are fine there
    v = _values(gradient_noise_scale(model, (x[:2], y[:2]), CE, mode="eval", hessian=False))
    assert math.isfinite(v["trace_cov_two_batch"])


# -- #6: CLI error paths ------------------------------------------------------------------------

def test_resolve_device_names_the_bad_value_and_the_choices():
    with pytest.raises(ValueError, match=r"unknown device 'nonsense'; choose one of: auto, cpu, cuda, cuda:N"):
        resolve_device("nonsense")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


# -- #7: model config dicts ------------------------------------------------------------------------

def test_unknown_model_field_lists_the_valid_fields():
    with pytest.raises(ValueError, match=r"unknown MLPConfig field\(s\) 'widht'; valid fields: .*\bwidth\b"):
        TrainConfig.from_dict({"model": {"kind": "mlp", "widht": 3}})
    with pytest.raises(ValueError, match=r"unknown ConvNetConfig field\(s\) 'width'; valid fields: .*channels"):
        config_from_dict({"kind": "convnet", "width": 3})
    with pytest.raises(ValueError, match=r"unknown MLPConfig field\(s\) 'widht'"):
        model_config("mlp", widht=3)
    with pytest.raises(ValueError, match=r"sweep field 'base': unknown MLPConfig field\(s\) 'widht'"):
        Sweep.from_dict({"base": {"model": {"kind": "mlp", "widht": 3}}, "grid": {"lr": [0.1]}})


def test_missing_or_unknown_model_kind_lists_the_kinds():
    with pytest.raises(ValueError, match=r"has no 'kind'; choose one of: mlp, convnet, transformer"):
        TrainConfig.from_dict({"model": {"width": 3}})
    with pytest.raises(ValueError, match=r"unknown model 'resnet'; choose one of: mlp, convnet"):
        config_from_dict({"kind": "resnet"})
    assert config_from_dict({"kind": "mlp", "width": 3}) == MLPConfig(width=3)


# -- #9: sweep YAML floats -------------------------------------------------------------------------

def test_sweep_yaml_reads_exponent_floats(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: t\nbase:\n  model: {kind: mlp, depth: 1, width: 8}\n  steps: 5\n"
                 "grid:\n  lr: [1e-3, 3e-4, 1.0e-1, 2E+0]\n")
    assert [c.lr for c in Sweep.from_yaml(p).configs()] == [1e-3, 3e-4, 0.1, 2.0]
    p.write_text(p.read_text().replace("[1e-3, 3e-4, 1.0e-1, 2E+0]", "[\"1e-3\"]"))
    with pytest.raises(ValueError, match=r"grid field 'lr' expects float, got '1e-3' \(str\)"):
        Sweep.from_yaml(p)  # quoted: still a string
    assert yaml.safe_load("a: 1e-3") == {"a": "1e-3"}  # the global loader is untouched


def test_sweep_yaml_loader_float_forms():
    from workbench.sweeps.sweep import _yaml_loader

    text = "[1e-3, 1.0e30, -2E+5, '1e-3', 3, 1.5, abc]"
    assert yaml.load(text, Loader=_yaml_loader()) == [1e-3, 1e30, -2e5, "1e-3", 3, 1.5, "abc"]


# -- #11: probe arguments ---------------------------------------------------------------------------

def test_hessian_vs_batch_size_argument_checks():
    model, batch = _model("none"), _batch(16)
    with pytest.raises(ValueError, match=r"batch_sizes must be a list .* got 8"):
        hessian_vs_batch_size(model, batch, CE, batch_sizes=8)
    with pytest.raises(ValueError, match=r"batch_sizes is an empty list.*valid: 1\.\.15"):
        hessian_vs_batch_size(model, batch, CE, batch_sizes=[])
    with pytest.raises(ValueError, match=r"density_steps must be >= 0, got -1"):
        hessian_vs_batch_size(model, batch, CE, density_steps=-1, max_iter=4, num_batches=1)
    with pytest.raises(ValueError, match=r"trace_matvecs must be >= 0, got -3"):
        hessian_vs_batch_size(model, batch, CE, trace_matvecs=-3, max_iter=4, num_batches=1)
    with pytest.raises(ValueError, match=r"seed must be an integer, got 'a'"):
        hessian_vs_batch_size(model, batch, CE, seed="a", max_iter=4, num_batches=1)


@pytest.mark.parametrize("n", [1, 2])
def test_hessian_vs_batch_size_on_too_few_examples_says_so(n):
    model, (x, y) = _model("none"), _batch()
    with pytest.raises(ValueError, match=rf"data source holds {n} examples?, too few .*at least 3 examples"):
        hessian_vs_batch_size(model, (x[:n], y[:n]), CE)
    if n == 1:
        with pytest.raises(ValueError, match=r"holds 1 example, too few .*at least 2 examples"):
            hessian_vs_batch_size(model, (x[:1], y[:1]), CE, batch_sizes=[1])
    else:  # an explicit size below N still works
        f = hessian_vs_batch_size(model, (x[:2], y[:2]), CE, batch_sizes=[1], num_batches=1,
                                  max_iter=4, trace_matvecs=0, adam=False)
        assert set(f.batch_size.dropna()) == {1, 2}


def test_params_and_seed_of_the_curvature_probes():
    model, batch = _model("none"), _batch(8)
    for bad in (3, [3]):
        with pytest.raises(ValueError, match=r"params must be None .* or a list of such names, got"):
            hessian_top_eigs(model, batch, CE, params=bad)
    with pytest.raises(ValueError, match=r"params must be None .*'blocks\.0'.*got 3"):
        select_params(model, 3)
    with pytest.raises(ValueError, match=r"seed must be an integer, got 'a'"):
        hessian_top_eigs(model, batch, CE, seed="a")


def test_depth_variance_seed():
    model, batch = _model("batch", residual=True), _batch(8)
    with pytest.raises(ValueError, match=r"seed must be an integer, got 'a'"):
        depth_variance(model, batch, CE, seed="a")


@pytest.mark.parametrize(("seed", "ok"), [(0, True), (2**32 - 1, True), (2**32, False),
                                          (2**64, False), (-1, False), (True, False)])
def test_seed_range(seed, ok):
    if ok:
        assert TrainConfig(seed=seed).seed == seed
    else:
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*32\)"):
            TrainConfig(seed=seed)


@pytest.mark.parametrize(("norm", "kw", "fails"), [
    ("batch", {"batch_size": 1}, "batch_size=1 leaves one value per feature"),
    ("batch_channel", {"batch_size": 8, "micro_batch": 1}, None),  # estimated statistics: fine
    ("ghost_batch", {"batch_size": 17}, "not 1 more than a multiple of 8, e.g. 16"),
    ("batch", {"batch_size": 2}, None),
    ("ghost_batch", {"batch_size": 16}, None),
    ("ghost_batch", {"batch_size": 9, "micro_batch": 3}, None),  # forward passes of 3
    ("layer", {"batch_size": 1}, None),
])
def test_mlp_batch_statistics_need_two_examples_per_forward_pass(norm, kw, fails):
    cfg = lambda: TrainConfig(model=MLPConfig(norm=norm), **kw)  # noqa: E731
    if fails:
        with pytest.raises(ValueError, match=fails):
            cfg()
        return
    from workbench.train import train

    assert train(dataclasses.replace(cfg(), steps=1)).status == "finished"  # it does train


def test_a_convnet_batch_norm_trains_on_one_example():
    """(N, C, H, W): one example still has H*W values per channel."""
    from workbench.data import DataConfig
    from workbench.models import ConvNetConfig
    from workbench.train import train

    cfg = TrainConfig(model=ConvNetConfig(norm="batch", channels=4, stages=1), batch_size=1,
                      steps=1, data=DataConfig(name="digits", n_train=64, n_test=16))
    assert train(cfg).status == "finished"


def test_ghost_virtual_batch_of_one():
    from workbench.norms import GhostBatchNorm

    with pytest.raises(ValueError, match="virtual_batch_size=1 on"):
        GhostBatchNorm(4, "features", virtual_batch_size=1)
    with pytest.raises(ValueError, match="must be a positive integer, got 0"):
        GhostBatchNorm(4, "conv", virtual_batch_size=0)
    x = torch.randn(3, 4, 5, 5)  # per example and channel: 25 values, instance statistics
    y = GhostBatchNorm(4, "conv", virtual_batch_size=1, affine=False)(x)
    ref = F.instance_norm(x, eps=1e-5)
    assert torch.allclose(y, ref, atol=1e-5)


def test_infinite_learning_rate_and_span_are_refused():
    from workbench.probes import landscape, smoothness

    model = build_model(MLPConfig(width=8, depth=1, in_dim=4, out_dim=3))
    batch = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
    with pytest.raises(ValueError, match="lr must be a finite number, got inf"):
        smoothness(model, batch, F.cross_entropy, lr=math.inf)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        smoothness(model, batch, F.cross_entropy, lr=math.inf, etas=[0.1])
    with pytest.raises(ValueError, match="span must be a finite number, got inf"):
        landscape(model, batch, F.cross_entropy, span=math.inf)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        TrainConfig(lr=math.inf)


def test_batch_channel_norm_on_batch_statistics_needs_two_examples_per_forward_pass():
    """Its default estimated statistics train on one example (above); stats="batch" cannot."""
    from workbench.norms import batch_split_ok

    bcn = {"stats": "batch", "groups": 8}
    with pytest.raises(ValueError, match="micro_batch=1 leaves one value per feature"):
        TrainConfig(model=MLPConfig(norm="batch_channel", norm_options=bcn), batch_size=8,
                    micro_batch=1)
    model = build_model(MLPConfig(norm="batch_channel", norm_options=bcn, in_dim=4, out_dim=3))
    assert not batch_split_ok(model, 1) and batch_split_ok(model, 2)
    model = build_model(MLPConfig(norm="batch_channel", in_dim=4, out_dim=3))  # estimated
    assert batch_split_ok(model, 1)


# -- every probe: bad batches and arguments are ValueErrors, not errors from deep inside ----------
def _probe_calls():
    from workbench import probes as P

    x, y = _batch(16)
    wrong = (x[:, :3], y)  # 3 features for a model that takes 5
    res = _model("batch", residual=True)
    fit = "batch inputs of shape \\(16, 3\\) do not fit the model"
    return [
        (lambda: P.layer_norms(_model(), wrong, CE), fit),
        (lambda: P.smoothness(_model(), wrong, CE), fit),
        (lambda: P.channel_health(_model(), wrong), fit),
        (lambda: P.landscape(_model(), wrong, CE, steps=3), fit),
        (lambda: P.depth_variance(res, wrong, CE), fit),
        (lambda: P.channel_health(_model(), x), "batch must be an \\(inputs, targets\\) pair"),
        (lambda: P.hessian_trace(_model(), (x, y), CE, seed="a"), "seed must be an integer, got 'a'"),
        (lambda: P.hessian_density(_model(), (x, y), CE, seed=1.5), "seed must be an integer, got 1.5"),
        (lambda: P.gradient_noise_scale(_model(), (x, y), CE, seed="a"), "seed must be an integer"),
        (lambda: P.landscape(_model(), (x, y), CE, seed=1.5), "seed must be an integer"),
        (lambda: P.landscape(_model(), (x, y), CE, direction="checkpoint", other=5),
         "other must be a model or its state_dict .* got int"),
        (lambda: P.landscape(_model(), (x, y), CE, direction="checkpoint",
                             other={n: t[:1] if t.dim() else t for n, t in _model().state_dict().items()}),
         "the checkpoint's parameters do not fit the model: blocks.0.0.weight \\(1, 5\\)"),
        (lambda: P.smoothness(_model(), (x, y), CE, etas=0.1), "etas must be a list of step sizes"),
        (lambda: P.hessian_vs_batch_size(_model(), (x, y), CE, batch_sizes=[4], adam_eps=-1),
         "adam_eps must be > 0, got -1"),
        (lambda: P.hessian_density(_model(), (x, y), CE, sigma_rel=math.inf),
         "sigma_rel must be a finite number"),
        (lambda: P.run_together(_model(), (x, y), CE, names="layer_norms"),
         "names must be a non-empty list .* got 'layer_norms'"),
        (lambda: P.run_together(_model(), (x, y), CE, names=[]), "names must be a non-empty list"),
    ]


@pytest.mark.parametrize("i", range(17))
def test_probe_bad_input_is_a_value_error(i):
    call, message = _probe_calls()[i]
    with pytest.raises(ValueError, match=message):
        call()


def test_a_data_set_name_where_a_data_config_belongs_is_named():
    """``base: {data: digits}`` in a sweep file said "unknown DataConfig field 'd'"."""
    with pytest.raises(ValueError, match="a data config must be a mapping .* e.g. {name: 'digits'}"):
        TrainConfig.from_dict({"data": "digits"})
