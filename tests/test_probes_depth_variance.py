"""depth_variance against its oracles: the Pre-LN variance recursion at init, identity blocks."""
import pytest
import torch

from workbench.models import ConvNetConfig, MLPConfig, TransformerConfig, build_model
from workbench.probes._directions import restore_buffers, snapshot_buffers
from workbench.probes.depth_variance import depth_variance

LF = torch.nn.functional.cross_entropy


def _table(frame):
    return frame.pivot(index="layer", columns="metric", values="value")


def test_pre_ln_residual_variance_at_init_follows_the_analytic_recursion():
    """x_{l+1} = x_l + W relu(LN(x_l)) + b with torch's default Linear init (W and b uniform with
    variance 1/(3w)): LN output has unit variance per example, relu keeps half of its second
    moment, and the branch is uncorrelated with x_l over random weights, so in expectation
    Var(x_{l+1}) = Var(x_l) + w * 1/(3w) * 1/2 + 1/(3w) = Var(x_l) + 1/6 + 1/(3w) (linear growth).
    One finite-width net has a random cross term 2 Cov(x_l, F_l) of a few percent per block, so
    (and the block's own output variance, a quadratic form in a low-rank input) is averaged over
    16 initializations."""
    w, depth, seeds = 256, 8, 16
    step = 1 / 6 + 1 / (3 * w)
    growth, added = [], []
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = build_model(MLPConfig(depth=depth, width=w, norm="layer", residual=True, in_dim=32, out_dim=4))
        g = torch.Generator().manual_seed(seed)
        x, y = torch.randn(128, 32, generator=g), torch.randint(0, 4, (128,), generator=g)
        t = _table(depth_variance(model, (x, y), LF))
        var0 = t.loc["blocks.0", "stream_in_variance"]
        growth.append([t.loc[f"blocks.{d}", "stream_out_variance"] - var0 for d in range(depth)])
        added.append(t["block_output_variance"].tolist())
        for d in range(depth):
            row = t.loc[f"blocks.{d}"]
            assert row["stream_in_rms"] ** 2 >= row["stream_in_variance"] * (1 - 1e-6)
            if d:
                assert row["stream_in_variance"] == t.loc[f"blocks.{d - 1}", "stream_out_variance"]
    mean_growth = torch.tensor(growth, dtype=torch.float64).mean(0)
    expected = step * torch.arange(1, depth + 1, dtype=torch.float64)
    torch.testing.assert_close(mean_growth, expected, rtol=0.05, atol=0)
    mean_added = torch.tensor(added, dtype=torch.float64).mean(0)
    torch.testing.assert_close(mean_added, torch.full((depth,), step, dtype=torch.float64), rtol=0.05, atol=0)


def test_variance_and_angle_match_explicit_computation_on_a_transformer():
    torch.manual_seed(0)
    model = build_model(TransformerConfig(depth=3, d_model=16, heads=2, placement="pre", vocab_size=11, seq_len=6))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 11, (4, 6), generator=g), torch.randint(0, 11, (4, 6), generator=g)
    lf = lambda out, t: LF(out.reshape(-1, 11), t.reshape(-1))  # noqa: E731
    t = _table(depth_variance(model, (x, y), lf))
    with torch.no_grad():
        h = model.tok(x) + model.pos(torch.arange(6))
        for i, block in enumerate(model.blocks):
            out = block(h)
            row = t.loc[f"blocks.{i}"]
            assert row["stream_in_variance"] == pytest.approx(float(h.var(unbiased=False)), rel=1e-5)
            assert row["stream_out_rms"] == pytest.approx(float(out.square().mean().sqrt()), rel=1e-5)
            cos = torch.nn.functional.cosine_similarity(h.reshape(-1, 16), out.reshape(-1, 16), dim=1)
            assert row["angular_distance"] == pytest.approx(float(torch.arccos(cos).mean() / torch.pi), rel=1e-4)
            skipped = model.head(model.final_norm(_run(model, model.tok(x) + model.pos(torch.arange(6)), skip=i)))
            full = model(x)
            assert row["skip_loss_increase"] == pytest.approx(float(lf(skipped, y) - lf(full, y)), abs=1e-5)
            h = out
    model.zero_grad()
    lf(model(x), y).backward()
    for i, block in enumerate(model.blocks):
        expected = torch.cat([p.grad.reshape(-1) for p in block.parameters()]).norm()
        assert t.loc[f"blocks.{i}", "grad_norm"] == pytest.approx(float(expected), rel=1e-5)


def _run(model, h, skip):
    for i, block in enumerate(model.blocks):
        h = h if i == skip else block(h)
    return h


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_skipping_an_identity_block_changes_nothing(mode):
    torch.manual_seed(0)
    model = build_model(MLPConfig(depth=4, width=16, norm="batch", residual=True, in_dim=5, out_dim=3))
    with torch.no_grad():  # block 2's branch adds exactly zero: the block is the identity
        model.blocks[2][2].weight.zero_()
        model.blocks[2][2].bias.zero_()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 5, generator=g), torch.randint(0, 3, (32,), generator=g)
    t = _table(depth_variance(model, (x, y), LF, mode=mode))
    row = t.loc["blocks.2"]
    assert row["skip_loss_increase"] == 0.0
    assert row["block_output_variance"] == 0.0 and row["relative_update"] == 0.0
    assert row["angular_distance"] == pytest.approx(0.0, abs=1e-3)
    assert row["jacobian_identity_distance"] == 0.0
    assert row["stream_in_variance"] == row["stream_out_variance"]
    assert (t.drop(index="blocks.2")["skip_loss_increase"].abs() > 0).all()


def _explicit_jv(block, inp, v, buffers):
    """J v from the block's explicit Jacobian (reverse mode, one row per output element)."""
    def f(z):
        restore_buffers(buffers)  # every evaluation from the same statistics, as the probe's
        return block(z)
    jac = torch.autograd.functional.jacobian(f, inp)
    return (jac.reshape(-1, inp.numel()) @ v.reshape(-1)).reshape(jac.shape[:inp.dim()])


@pytest.mark.parametrize("model_cfg, kind", [
    (MLPConfig(depth=3, width=6, norm="batch", residual=True, in_dim=4, out_dim=3), "branch"),
    (TransformerConfig(depth=3, d_model=8, heads=2, placement="pre", vocab_size=7, seq_len=4), "block"),
    (TransformerConfig(depth=3, d_model=8, heads=2, placement="post", vocab_size=7, seq_len=4), "block"),
    (ConvNetConfig(stages=2, channels=2, norm="batch", in_channels=2, out_dim=3), "block"),
])
def test_jacobian_identity_distance_matches_the_explicit_jacobian(model_cfg, kind):
    """||J v - J_s v|| / ||J_s v|| against the blocks' explicit Jacobians (float64, train-mode
    BatchNorm included: the Jacobian of the map on the whole batch), with the probe's own
    directions: a generator seeded with ``seed``, one draw per block in order. The ConvNet's
    second block changes shape: J_s is its projection shortcut's Jacobian."""
    torch.manual_seed(0)
    model = build_model(model_cfg).double()
    g = torch.Generator().manual_seed(1)
    if kind == "branch":
        x, y = torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)
    elif isinstance(model_cfg, TransformerConfig):
        x = y = torch.randint(0, 7, (2, 4), generator=g)
    else:
        x, y = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (3,), generator=g)
    lf = (lambda out, t: LF(out.reshape(-1, 7), t.reshape(-1))) if x.dtype == torch.long else LF
    t = _table(depth_variance(model, (x, y), lf, seed=5))
    model.train()
    buffers = snapshot_buffers(model)
    seen = {}
    blocks = model.named_blocks()
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, a[0].detach()))
             for i, (_, b) in enumerate(blocks)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    gen = torch.Generator().manual_seed(5)
    checked_shortcut = False
    for i, (name, block) in enumerate(blocks):
        inp = seen[i]
        v = torch.randn(inp.shape, generator=gen, dtype=inp.dtype)
        jv = _explicit_jv(block, inp, v, buffers)
        through = v
        if kind == "block" and hasattr(block, "shortcut") and not isinstance(block.shortcut, torch.nn.Identity):
            through, checked_shortcut = _explicit_jv(block.shortcut, inp, v, buffers), True
        expected = (jv if kind == "branch" else jv - through).norm() / through.norm()
        assert t.loc[name, "jacobian_identity_distance"] == pytest.approx(float(expected), rel=1e-9)
    assert checked_shortcut == isinstance(model_cfg, ConvNetConfig)


def test_a_pre_ln_block_approaches_the_identity_as_the_stream_grows():
    """The Curse of Depth's mechanism, exactly: a Pre-LN block x + F(LN(x)) sees LN(c x) = LN(x)
    (up to LN's eps), so its branch Jacobian at c x is the one at x divided by c, and so is the
    distance. Measured by the probe on a residual LN-MLP whose input is scaled by c."""
    torch.manual_seed(0)
    model = build_model(MLPConfig(depth=1, width=16, norm="layer", residual=True, in_dim=16,
                                  out_dim=3)).double()
    with torch.no_grad():  # the stem passes x on unchanged: the block's input is c x
        model.stem.weight.copy_(torch.eye(16))
        model.stem.bias.zero_()
    x, y = torch.randn(8, 16, dtype=torch.float64), torch.randint(0, 3, (8,))
    dist = [_table(depth_variance(model, (c * x, y), LF)).loc["blocks.0", "jacobian_identity_distance"]
            for c in (1.0, 10.0, 100.0)]
    assert dist[0] > 0.1
    assert dist[1] == pytest.approx(dist[0] / 10, rel=1e-4)  # LN eps = 1e-5 against Var ~ 1
    assert dist[2] == pytest.approx(dist[0] / 100, rel=1e-4)


@pytest.mark.parametrize("placement", ["pre", "post", "mix", "ln_scaling"])
def test_every_transformer_placement_and_the_convnet_are_supported(placement):
    torch.manual_seed(0)
    model = build_model(TransformerConfig(depth=4, d_model=8, heads=2, placement=placement, vocab_size=7, seq_len=5))
    x = torch.randint(0, 7, (3, 5))
    lf = lambda out, t: LF(out.reshape(-1, 7), t.reshape(-1))  # noqa: E731
    frame = depth_variance(model, (x, x), lf)
    assert sorted(frame.layer.unique()) == [f"blocks.{i}" for i in range(4)]
    assert frame.value.notna().all()
    conv = build_model(ConvNetConfig(stages=2, channels=4, in_channels=3, out_dim=5))
    t = _table(depth_variance(conv, (torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))), LF))
    assert t.notna().all().all() and len(t) == 2


def test_models_without_residual_blocks_are_rejected():
    model = build_model(MLPConfig(depth=2, width=8, in_dim=5, out_dim=3))
    with pytest.raises(ValueError, match="depth_variance needs residual blocks; got an MLP with "
                                         "residual=False. Supported: MLPConfig\\(residual=True\\)"):
        depth_variance(model, (torch.randn(4, 5), torch.zeros(4, dtype=torch.long)), LF)
    with pytest.raises(ValueError, match="got Linear"):
        depth_variance(torch.nn.Linear(5, 3), (torch.randn(4, 5), torch.zeros(4, dtype=torch.long)), LF)
