"""The one shared test: every registered probe, on every model x norm that supports it, leaves
parameters, ``.grad``, train/eval flags, buffers and the global RNG exactly as it found them, and
returns tidy rows; on a model it does not support it raises a ValueError that says so (and still
leaves the model untouched)."""
import random

import numpy as np
import pytest
import torch

from workbench.data import cross_entropy_loss
from workbench.models import ConvNetConfig, MLPConfig, TransformerConfig, build_model
from workbench.probes import PRESETS, PROBES

FEATURE_NORMS = ["none", "batch", "ghost_batch", "layer", "group", "rms", "batch_channel", "power"]
OPTIONS = {"group": {"groups": 2}, "batch_channel": {"groups": 2}, "ghost_batch": {"virtual_batch_size": 4}}


def _features(n=16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def _images(n=8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _tokens(n=4):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 7, (n, 5), generator=g), torch.randint(0, 7, (n, 5), generator=g)


CASES = {  # id -> (config, batch)
    **{f"mlp-{norm}": (MLPConfig(depth=2, width=8, norm=norm, norm_options=OPTIONS.get(norm, {}),
                                 in_dim=5, out_dim=3), _features) for norm in FEATURE_NORMS},
    **{f"resmlp-{norm}": (MLPConfig(depth=2, width=8, norm=norm, residual=True, in_dim=5, out_dim=3),
                          _features) for norm in ["batch", "layer", "power"]},
    **{f"convnet-{norm}": (ConvNetConfig(stages=2, channels=4, norm=norm, norm_options=OPTIONS.get(norm, {}),
                                         in_channels=3, out_dim=3), _images) for norm in ["batch", "group"]},
    "convnet-ws-batch_channel": (ConvNetConfig(stages=2, channels=4, norm="batch_channel", ws=True,
                                               norm_options={"groups": 2}, in_channels=3, out_dim=3), _images),
    "mlp-ws-group": (MLPConfig(depth=2, width=8, norm="group", ws=True, norm_options={"groups": 2},
                               in_dim=5, out_dim=3), _features),
    **{f"transformer-{p}-layer": (TransformerConfig(depth=2, d_model=8, heads=2, placement=p,
                                                     vocab_size=7, seq_len=5), _tokens)
       for p in ["pre", "post", "mix", "ln_scaling"]},
    **{f"transformer-pre-{norm}": (TransformerConfig(depth=2, d_model=8, heads=2, norm=norm,
                                                      vocab_size=7, seq_len=5), _tokens)
       for norm in ["batch", "rms", "power"]},
}

# (probe, case) pairs a probe does not support -> the message its ValueError must carry.
UNSUPPORTED = {("depth_variance", case): "depth_variance needs residual blocks"
               for case in CASES if case.startswith("mlp-")}

# Smaller budgets where the default is needlessly large for an invariant check (keeps it < 30 s).
BUDGETS = {"landscape": {"steps": 5}, "hessian_density": {"num_runs": 2, "steps": 10},
           "hessian_vs_batch_size": {"max_iter": 20, "trace_matvecs": 4}}


def _snapshot(model):
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            [m.training for m in model.modules()],
            (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate(), cuda))


def _assert_unchanged(model, snap):
    state, grads, flags, rng = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for p, g in zip(model.parameters(), grads):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert (np.random.get_state()[1] == rng[1]).all() and random.getstate() == rng[2]
    if rng[3]:
        assert all(torch.equal(a, b) for a, b in zip(torch.cuda.get_rng_state_all(), rng[3]))


def _probe_on(device: str, probe_name: str, case: str):
    """The probe's rows on ``case``'s model and batch on ``device`` (None where the probe does not
    support the model: then its ValueError must say so), after checking that it left the model
    as it found it."""
    cfg, make_batch = CASES[case]
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    x, y = (t.to(device) for t in make_batch())
    cross_entropy_loss(model(x), y).backward()  # some .grad present ...
    model.blocks[0].eval()  # ... and a mixed train/eval state, which must survive too
    snap = _snapshot(model)
    fn = PROBES[probe_name]
    frame = None
    if (probe_name, case) in UNSUPPORTED:
        with pytest.raises(ValueError, match=UNSUPPORTED[(probe_name, case)]):
            fn(model, (x, y), cross_entropy_loss, **BUDGETS.get(probe_name, {}))
    else:
        frame = fn(model, (x, y), cross_entropy_loss, **BUDGETS.get(probe_name, {}))
    _assert_unchanged(model, snap)
    assert all(p.device.type == torch.device(device).type for p in model.parameters())
    return frame


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("probe_name", list(PROBES))
def test_probes_leave_the_model_as_found(probe_name, case):
    frame = _probe_on("cpu", probe_name, case)
    if frame is not None:
        assert {"probe", "metric", "layer", "value", "hvps", "iters", "converged"} <= set(frame.columns)
        assert len(frame) > 0


def test_presets_name_registered_probes():
    assert all(set(names) <= set(PROBES) for names in PRESETS.values())
    assert list(PRESETS) == ["cheap", "standard", "full"]
    assert set(PRESETS["cheap"]) <= set(PRESETS["standard"]) <= set(PRESETS["full"]) | {"smoothness_small"}


def test_the_landscape_depth_and_channel_probes_run_as_training_hooks():
    from workbench.data import DataConfig
    from workbench.train import TrainConfig, every, train

    cfg = TrainConfig(model=MLPConfig(depth=2, width=8, norm="batch", residual=True),
                      data=DataConfig(name="digits", n_train=64, n_test=32), steps=3, batch_size=16,
                      eval_every=0)
    probes = {name: PROBES[name] for name in ("channel_health", "smoothness_small", "depth_variance")}
    probes["landscape"] = lambda m, b, lf: PROBES["landscape"](m, b, lf, steps=3)
    run = train(cfg, probes=probes, schedule=every(2))
    assert run.status == "finished"
    steps = run.frame.groupby("probe").step.unique()
    for name in ["channel_health", "smoothness", "depth_variance", "landscape"]:
        assert sorted(steps[name]) == [0, 2], name


# Probes that draw no random numbers: on the device they must give the CPU's numbers (up to
# float32 reduction order). The others draw their Lanczos/Hutchinson vectors on the CPU (the same
# vectors on every device) but converge only to their tolerance, and batch their Hessian products
# or not by timing, so only the keys of their rows that do not depend on that are compared.
DETERMINISTIC = {"layer_norms", "channel_health", "smoothness_small", "smoothness", "landscape",
                 "depth_variance"}
DEVICE_CASES = ["mlp-batch", "resmlp-layer", "convnet-ws-batch_channel", "transformer-mix-layer"]


def _assert_same_rows(on_device, on_cpu, deterministic: bool):
    """The same rows (every key column; for a probe that draws random numbers the ones that do
    not depend on them: a density's eigenvalue grid does) and, when ``deterministic``, values."""
    assert list(on_device.columns) == list(on_cpu.columns)
    keys = [c for c in on_cpu.columns if c not in ("value", "hvps", "iters", "converged")
            and (deterministic or on_cpu[c].dtype.kind != "f")]
    assert on_device[keys].equals(on_cpu[keys])
    if not deterministic:
        return
    values, expected = on_device["value"].to_numpy(float), on_cpu["value"].to_numpy(float)
    # channel health's counts come from thresholds: a value within rounding of one may fall on
    # the other side on another device. Those may differ by one channel (pair) per layer.
    counted = on_cpu.metric.isin(["dead_fraction", "constant_fraction", "one_sided_fraction",
                                  "duplicate_fraction", "duplicate_pairs"]).to_numpy()
    if counted.any():
        channels = on_cpu[on_cpu.metric == "channels"].set_index("layer").value
        one = np.where(on_cpu.metric == "duplicate_pairs", 1.0,
                       1.0 / on_cpu.layer.map(channels).to_numpy(float))
        assert (np.abs(values - expected)[counted] <= one[counted] + 1e-9).all()
    np.testing.assert_allclose(values[~counted], expected[~counted], rtol=2e-3, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI has none)")
@pytest.mark.parametrize("case", DEVICE_CASES)
@pytest.mark.parametrize("probe_name", list(PROBES))
def test_probes_run_on_cuda_like_on_the_cpu(probe_name, case, monkeypatch):
    """A model on the GPU: every probe runs there, leaves the model (and the CUDA generators) as
    it found it, returns the CPU's rows, and where it draws no random numbers the CPU's values."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # full float32 convolutions
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    on_cuda, on_cpu = _probe_on("cuda", probe_name, case), _probe_on("cpu", probe_name, case)
    if on_cpu is not None:
        _assert_same_rows(on_cuda, on_cpu, probe_name in DETERMINISTIC)
