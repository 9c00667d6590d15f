"""layer_norms against explicit autograd (the probe invariants are in test_probe_invariants.py)."""

import pytest
import torch

from workbench.models import MLPConfig, build_model
from workbench.probes import layer_norms


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
