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
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            [m.training for m in model.modules()],
            (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()))


def _assert_unchanged(model, snap):
    state, grads, flags, rng = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for p, g in zip(model.parameters(), grads):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert (np.random.get_state()[1] == rng[1]).all() and random.getstate() == rng[2]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("probe_name", list(PROBES))
def test_probes_leave_the_model_as_found(probe_name, case):
    cfg, make_batch = CASES[case]
    torch.manual_seed(0)
    model = build_model(cfg)
    x, y = make_batch()
    cross_entropy_loss(model(x), y).backward()  # some .grad present ...
    model.blocks[0].eval()  # ... and a mixed train/eval state, which must survive too
    snap = _snapshot(model)
    fn = PROBES[probe_name]
    if (probe_name, case) in UNSUPPORTED:
        with pytest.raises(ValueError, match=UNSUPPORTED[(probe_name, case)]):
            fn(model, (x, y), cross_entropy_loss, **BUDGETS.get(probe_name, {}))
    else:
        frame = fn(model, (x, y), cross_entropy_loss, **BUDGETS.get(probe_name, {}))
        assert {"probe", "metric", "layer", "value", "hvps", "iters", "converged"} <= set(frame.columns)
        assert len(frame) > 0
    _assert_unchanged(model, snap)


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
