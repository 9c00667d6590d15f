"""layer_norms against explicit autograd, and the probe invariants for every registered probe."""
import random

import numpy as np
import pytest
import torch

from workbench.models import MLPConfig, build_model
from workbench.probes import PRESETS, PROBES, layer_norms

NORMS_TO_CHECK = ["none", "batch", "layer", "group", "batch_channel", "power", "ghost_batch"]


def _model(norm):
    opts = {"groups": 2} if norm in ("group", "batch_channel") else (
        {"virtual_batch_size": 4} if norm == "ghost_batch" else {})
    torch.manual_seed(0)
    return build_model(MLPConfig(depth=2, width=8, norm=norm, norm_options=opts, in_dim=5, out_dim=3))


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)


def test_layer_norms_matches_explicit_autograd():
    model = _model("batch")
    x, y = _batch()
    frame = layer_norms(model, (x, y), torch.nn.functional.cross_entropy)
    ref = _model("batch")
    ref.load_state_dict(model.state_dict())
    torch.nn.functional.cross_entropy(ref(x), y).backward()
    for name, m in ref.named_layers():
        got = frame[(frame.layer == name)].set_index("metric")["value"]
        assert got["weight_norm"] == pytest.approx(float(m.weight.detach().norm()), rel=1e-6)
        assert got["grad_norm"] == pytest.approx(float(m.weight.grad.norm()), rel=1e-5)
        assert got["grad_to_weight"] == pytest.approx(float(m.weight.grad.norm() / m.weight.detach().norm()), rel=1e-5)


def test_eval_mode_uses_running_statistics():
    model = _model("batch")
    x, y = _batch()
    with torch.no_grad():  # make running stats differ from batch stats
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.fill_(0.5)
                m.running_var.fill_(3.0)
    tr = layer_norms(model, (x, y), torch.nn.functional.cross_entropy, mode="train")
    ev = layer_norms(model, (x, y), torch.nn.functional.cross_entropy, mode="eval")
    ref = _model("batch")
    ref.load_state_dict(model.state_dict())
    ref.eval()
    torch.nn.functional.cross_entropy(ref(x), y).backward()
    name, layer = ref.named_layers()[0]
    got = ev[(ev.layer == name) & (ev.metric == "grad_norm")].value.item()
    assert got == pytest.approx(float(layer.weight.grad.norm()), rel=1e-5)
    assert got != pytest.approx(tr[(tr.layer == name) & (tr.metric == "grad_norm")].value.item(), rel=1e-3)
    with pytest.raises(ValueError, match="unknown mode 'test'; choose one of: train, eval"):
        layer_norms(model, (x, y), torch.nn.functional.cross_entropy, mode="test")


@pytest.mark.parametrize("probe_name", list(PROBES))
@pytest.mark.parametrize("norm", NORMS_TO_CHECK)
def test_probes_leave_the_model_as_found(probe_name, norm):
    """Parameters, .grad, training flags, buffers and the global RNG are all unchanged."""
    model = _model(norm)
    x, y = _batch()
    torch.nn.functional.cross_entropy(model(x), y).backward()  # some .grad present
    model.blocks[0].eval()  # a mixed train/eval state must survive too
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    flags = [m.training for m in model.modules()]
    rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    frame = PROBES[probe_name](model, (x, y), torch.nn.functional.cross_entropy)
    assert {"probe", "metric", "layer", "value", "hvps", "iters", "converged"} <= set(frame.columns)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert (np.random.get_state()[1] == rng[1]).all() and random.getstate() == rng[2]


def test_presets_name_registered_probes():
    assert all(set(names) <= set(PROBES) for names in PRESETS.values())
    assert list(PRESETS) == ["cheap", "standard", "full"]
