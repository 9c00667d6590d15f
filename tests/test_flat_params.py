"""Flat parameter/gradient buffers: the same training as the model's own tensors, cheaper."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from workbench.data import DataConfig
from workbench.models import MLPConfig, TransformerConfig
from workbench.train import TrainConfig, build_optimizer, every, param_groups, train
from workbench.train.flat import FlatParams, can_flatten
from workbench.utils import preserved_state

SMALL = DataConfig(name="gaussian_mixture", n_train=512, n_test=256)


def _flat_model(wd=0.0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flat = FlatParams([g["params"] for g in param_groups(model, wd)])
    return model, flat, before


def test_parameters_become_views_of_one_buffer_with_their_values():
    model, flat, before = _flat_model()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) and p.is_leaf and p.requires_grad
    assert flat.data.numel() == sum(p.numel() for p in model.parameters()) == flat.grad.numel()
    assert flat.linked()
    # groups are contiguous: 2-D weights first, then biases and norm gains
    (w0, w1), (b0, b1) = flat.slices
    assert (w0, w1, b0) == (0, 5 * 7 + 7 * 3, w1) and b1 == flat.data.numel()
    # writing through the buffer moves the parameters, backward fills the flat gradient
    x = torch.randn(16, 5)
    model(x).square().mean().backward()
    grads = torch.cat([p.grad.reshape(-1) for p in flat.params])
    assert torch.equal(grads, flat.grad) and flat.grad.abs().sum() > 0
    assert torch.allclose(flat.norms(), torch.stack([grads.norm(), flat.data.norm()]))
    flat.data.add_(1.0)
    assert torch.equal(model[0].weight, before["0.weight"] + 1.0)


def test_relink_brings_back_replaced_data_and_grads():
    model, flat, _ = _flat_model()
    w = model[0].weight
    w.grad = torch.full_like(w, 2.0)             # a new .grad tensor
    model[3].bias.grad = None                    # zero_grad(set_to_none=True)
    model[1].weight.data = torch.full((7,), 3.0)  # .data re-pointed
    assert not flat.linked()
    flat.relink()
    assert flat.linked()
    assert torch.equal(w.grad, torch.full_like(w, 2.0)) and model[3].bias.grad.abs().sum() == 0
    assert torch.equal(model[1].weight, torch.full((7,), 3.0))
    flat.data.zero_()
    assert model[1].weight.abs().sum() == 0  # back in the buffer


def test_preserved_state_keeps_grad_objects_and_storage():
    model, flat, before = _flat_model()
    model(torch.randn(8, 5)).sum().backward()
    saved = flat.grad.clone()
    with preserved_state(model):
        model.zero_grad(set_to_none=True)
        model(torch.randn(8, 5)).sum().backward()
        model[0].weight.data = torch.zeros(7, 5)
    assert flat.linked() and torch.equal(flat.grad, saved)
    assert torch.equal(model[0].weight, before["0.weight"])


def test_cannot_flatten_mixed_or_empty():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3, dtype=torch.float64))
    assert not can_flatten([[a, b]]) and not can_flatten([[]]) and not can_flatten([[a], [a]])
    with pytest.raises(ValueError, match="different dtypes"):
        FlatParams([[a, b]])
    with pytest.raises(ValueError, match="flat= must hold"):
        model = nn.Linear(3, 2)
        build_optimizer("sgd", model, lr=0.1, flat=FlatParams([[model.bias], [model.weight]]))


@pytest.mark.parametrize("opt, extra", [
    ("sgd", {"momentum": 0.9, "weight_decay": 1e-3}),
    ("sgd", {"momentum": 0.9, "nesterov": True}),
    ("adam", {"weight_decay": 1e-3}),
    ("adamw", {"weight_decay": 1e-2}),
    ("lars", {"weight_decay": 1e-4}),
    ("lamb", {"weight_decay": 1e-2}),
])
def test_flat_training_equals_per_tensor_training(opt, extra):
    lr = 0.05 if opt in ("sgd", "lars") else 3e-3
    cfg = TrainConfig(model=MLPConfig(depth=3, width=24, norm="batch"), data=SMALL, steps=25,
                      batch_size=32, optimizer=opt, lr=lr, eval_every=10, **extra)
    a, b = train(cfg, flat_params=True), train(cfg, flat_params=False)
    assert a.status == b.status == "finished"
    # the element-wise updates are the same arithmetic: identical losses and weights
    np.testing.assert_array_equal(a.metric("loss").values, b.metric("loss").values)
    for (na, pa), (nb, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert na == nb and torch.equal(pa, pb), na
    # norms summed in a different order: equal to rounding
    for m in ("grad_norm", "weight_norm"):
        np.testing.assert_allclose(a.metric(m).values, b.metric(m).values, rtol=1e-5)


def test_flat_micro_batches_norm_test_and_transformer_match():
    cfg = TrainConfig(model=MLPConfig(depth=2, width=16, norm="layer"), data=SMALL, steps=20,
                      batch_size=32, micro_batch=8, lr=0.1, batch_schedule="norm_test",
                      norm_test_every=5, max_batch_size=128)
    a, b = train(cfg, flat_params=True), train(cfg, flat_params=False)
    np.testing.assert_array_equal(a.metric("loss").values, b.metric("loss").values)
    np.testing.assert_array_equal(a.metric("batch_size").values, b.metric("batch_size").values)
    tcfg = TrainConfig(model=TransformerConfig(depth=2, d_model=16, heads=2), data=DataConfig(name="markov"),
                       steps=8, batch_size=8, optimizer="adam", lr=3e-3)
    a, b = train(tcfg, flat_params=True), train(tcfg, flat_params=False)
    np.testing.assert_array_equal(a.metric("loss").values, b.metric("loss").values)


def test_probe_that_replaces_grads_does_not_break_training():
    def rude(model, batch, loss_fn):  # no preserved_state: drops and replaces .grad and .data
        for p in model.parameters():
            p.grad = None
        first = next(model.parameters())
        first.data = first.detach().clone()
        return pd.DataFrame({"metric": ["x"], "value": [1.0]})

    cfg = TrainConfig(model=MLPConfig(depth=2, width=16, norm="batch"), data=SMALL, steps=12,
                      batch_size=32)
    plain, probed = train(cfg), train(cfg, probes={"rude": rude}, schedule=every(3))
    np.testing.assert_array_equal(plain.metric("loss").values, probed.metric("loss").values)
    for pa, pb in zip(plain.model.parameters(), probed.model.parameters()):
        assert torch.equal(pa, pb)


def test_forward_uses_rng_flags_dropout_and_unknown_modules():
    from workbench.utils import forward_uses_rng

    class Custom(nn.Module):
        def forward(self, x):
            return x

    assert not forward_uses_rng(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.ReLU()))
    assert forward_uses_rng(nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.1)))
    assert forward_uses_rng(nn.MultiheadAttention(4, 2, dropout=0.1))
    assert not forward_uses_rng(nn.MultiheadAttention(4, 2))
    assert forward_uses_rng(nn.Sequential(nn.Linear(3, 3), Custom()))


def test_flat_view_only_for_consecutive_pieces_of_one_buffer():
    from workbench.probes._directions import flat_view, flatten

    buf = torch.arange(10.0)
    a, b, c = buf[:4].view(2, 2), buf[4:7], buf[7:]
    view = flat_view([a, b, c])
    assert view is not None and torch.equal(view, buf)
    assert flat_view([b, a, c]) is None                     # out of order
    assert flat_view([a, c]) is None                        # a gap
    assert flat_view([a, b.clone(), c]) is None             # another storage
    assert flat_view([buf[::2]]) is None                    # not contiguous
    flat = flatten([a, b, c])
    assert torch.equal(flat, buf) and flat.data_ptr() != buf.data_ptr()  # a copy
    x, y = torch.ones(2), torch.full((3,), 2.0)             # separate tensors: the slow path
    assert torch.equal(flatten([x, y]), torch.tensor([1.0, 1, 2, 2, 2]))
