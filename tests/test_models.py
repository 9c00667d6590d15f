"""Every model x compatible norm builds, runs forward/backward, and trains a few steps."""
import math

import pytest
import torch

from workbench.models import (
    ConvNetConfig,
    MLPConfig,
    TransformerConfig,
    build_model,
    config_from_dict,
    config_to_dict,
    fit_to_data,
    model_config,
)
from workbench.norms import NORMS, norm_layouts

MLP_NORMS = [n for n in NORMS if "features" in norm_layouts(n)]
CONV_NORMS = [n for n in NORMS if "conv" in norm_layouts(n)]
TRANSFORMER_NORMS = ["layer", "rms", "batch", "power"]


def _opts(norm, channels=16):
    return {"groups": 4} if norm in ("group", "batch_channel") else (
        {"virtual_batch_size": 4} if norm == "ghost_batch" else {})


def _train_steps(model, x, y, loss_fn, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
    return float(loss.detach())


@pytest.mark.parametrize("norm", MLP_NORMS)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("ws", [False, True])
def test_mlp_every_norm(norm, residual, ws):
    torch.manual_seed(0)
    cfg = MLPConfig(depth=2, width=16, norm=norm, norm_options=_opts(norm), residual=residual, ws=ws,
                    in_dim=12, out_dim=3)
    model = build_model(cfg)
    x, y = torch.randn(16, 12), torch.randint(0, 3, (16,))
    out = model(x)
    assert out.shape == (16, 3)
    loss = _train_steps(model, x, y, torch.nn.functional.cross_entropy)
    assert math.isfinite(loss)
    assert [n for n, _ in model.named_blocks()] == ["blocks.0", "blocks.1"]
    assert len(model.named_layers()) >= 3
    model.eval()
    assert model(x[:1]).shape == (1, 3)  # eval mode works with a single example


@pytest.mark.parametrize("norm", CONV_NORMS)
@pytest.mark.parametrize("ws", [False, True])
def test_convnet_every_norm(norm, ws):
    torch.manual_seed(0)
    cfg = ConvNetConfig(stages=2, channels=8, norm=norm, norm_options=_opts(norm), ws=ws,
                        in_channels=1, out_dim=4)
    model = build_model(cfg)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 4, (8,))
    assert model(x).shape == (8, 4)
    assert math.isfinite(_train_steps(model, x, y, torch.nn.functional.cross_entropy))
    assert len(model.named_blocks()) == 2
    if norm != "none":
        assert len(model.named_norms()) >= 4


def _lm_loss(out, y):
    return torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


@pytest.mark.parametrize("norm", TRANSFORMER_NORMS)
@pytest.mark.parametrize("placement", ["pre", "post", "mix", "ln_scaling"])
def test_transformer_every_norm_and_placement(norm, placement):
    torch.manual_seed(0)
    cfg = TransformerConfig(depth=4, d_model=16, heads=2, norm=norm, placement=placement,
                            mix_fraction=0.5, vocab_size=11, seq_len=8)
    model = build_model(cfg)
    x, y = torch.randint(0, 11, (4, 8)), torch.randint(0, 11, (4, 8))
    assert model(x).shape == (4, 8, 11)
    assert math.isfinite(_train_steps(model, x, y, _lm_loss))
    posts = [b.post for b in model.blocks]
    expected = {"pre": [False] * 4, "post": [True] * 4, "mix": [True, True, False, False],
                "ln_scaling": [False] * 4}[placement]
    assert posts == expected
    scales = [b.scale for b in model.blocks]
    if placement == "ln_scaling":
        assert scales == pytest.approx([1 / math.sqrt(i) for i in range(1, 5)])
    else:
        assert scales == [1.0] * 4


def test_transformer_is_causal():
    torch.manual_seed(0)
    model = build_model(TransformerConfig(vocab_size=7, seq_len=6)).eval()
    x = torch.randint(0, 7, (2, 6))
    x2 = x.clone()
    x2[:, 4:] = (x2[:, 4:] + 1) % 7  # change the future
    assert torch.allclose(model(x)[:, :4], model(x2)[:, :4], atol=1e-6)


def test_ln_scaling_scales_the_norm_output():
    """LNS block l computes x + f(LN(x)/sqrt(l)): check block 3 by hand."""
    torch.manual_seed(0)
    model = build_model(TransformerConfig(depth=3, placement="ln_scaling", vocab_size=5, seq_len=4))
    block = model.blocks[2]
    x = torch.randn(2, 4, 32)
    h = x + block.attn(block.norm1(x) / math.sqrt(3))
    expected = h + block.mlp(block.norm2(h) / math.sqrt(3))
    assert torch.allclose(block(x), expected, atol=1e-6)


def test_post_ln_block_by_hand():
    torch.manual_seed(0)
    model = build_model(TransformerConfig(depth=1, placement="post", vocab_size=5, seq_len=4))
    block = model.blocks[0]
    x = torch.randn(2, 4, 32)
    h = block.norm1(x + block.attn(x))
    assert torch.allclose(block(x), block.norm2(h + block.mlp(h)), atol=1e-6)


def test_fit_to_data_and_round_trip():
    cfg = fit_to_data(MLPConfig(), (1, 8, 8), 10, "classification")
    assert (cfg.in_dim, cfg.out_dim) == (64, 10)
    cfg = fit_to_data(ConvNetConfig(), (3, 16, 16), 6, "classification")
    assert (cfg.in_channels, cfg.out_dim) == (3, 6)
    cfg = fit_to_data(TransformerConfig(), (32,), 32, "lm")
    assert (cfg.vocab_size, cfg.seq_len) == (32, 32)
    for c in (MLPConfig(norm="group", norm_options={"groups": 4}), ConvNetConfig(), TransformerConfig()):
        assert config_from_dict(config_to_dict(c)) == c
    with pytest.raises(ValueError, match="cannot take"):
        fit_to_data(ConvNetConfig(), (32,), 10, "classification")


@pytest.mark.parametrize("build, match", [
    (lambda: MLPConfig(norm="bachnorm"), r"unknown norm 'bachnorm'.*batch"),
    (lambda: MLPConfig(norm="instance"), r"instance.*features"),
    (lambda: MLPConfig(width=0), r"width must be > 0"),
    (lambda: MLPConfig(depth=-1), r"depth must be > 0"),
    (lambda: MLPConfig(activation="swish"), r"unknown activation 'swish'.*relu"),
    (lambda: MLPConfig(width=30, norm="group", norm_options={"groups": 4}), r"groups=4.*30"),
    (lambda: ConvNetConfig(channels=6, norm="group", norm_options={"groups": 4}), r"groups=4"),
    (lambda: TransformerConfig(norm="group"), r"unknown transformer norm 'group'.*layer, rms, batch, power"),
    (lambda: TransformerConfig(placement="middle"), r"unknown placement 'middle'.*pre, post, mix, ln_scaling"),
    (lambda: TransformerConfig(d_model=30, heads=4), r"heads=4 does not divide d_model=30"),
    (lambda: TransformerConfig(mix_fraction=1.5), r"mix_fraction"),
    (lambda: model_config("resnet"), r"unknown model 'resnet'.*mlp, convnet, transformer"),
])
def test_bad_model_configs(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_transformer_init_std_draws_every_weight_from_a_small_normal():
    torch.manual_seed(0)
    model = build_model(TransformerConfig(depth=2, d_model=64, vocab_size=50, seq_len=16,
                                          init_std=0.02))
    weights = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))]
    assert len(weights) >= 2 + 2 * 2 + 1  # embeddings, attention and MLP layers, head
    for w in weights:
        assert abs(w.std().item() - 0.02) < 0.004 and abs(w.mean().item()) < 0.004
    assert all(torch.all(m.bias == 0) for m in model.modules()
               if isinstance(m, torch.nn.Linear) and m.bias is not None)
    default = build_model(TransformerConfig(depth=2, d_model=64, vocab_size=50, seq_len=16))
    assert default.tok.weight.std().item() > 0.5  # PyTorch's N(0, 1) embedding when None
    for bad in (0, -0.1, math.inf, "0.02"):
        with pytest.raises(ValueError, match="init_std"):
            TransformerConfig(init_std=bad)
