"""The normalization zoo against torch's own layers or the formulas written out, in float64.

Every norm x layout x option variant runs a few training forwards and an eval forward next to a
reference; outputs, gradients (input and affine parameters) and every buffer must agree.
PowerNorm's reference backward is the approximate backward of Shen et al. (2020) written out.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from workbench.norms import (
    LAYOUTS,
    NORMS,
    WSConv2d,
    WSLinear,
    is_norm_module,
    make_norm,
    norm_layouts,
    standardize_weight,
)

DT = torch.float64
C = 8
SEEDS = (0, 1, 2)
SHAPES = {"features": (6, C), "conv": (4, C, 3, 3), "tokens": (3, 5, C)}
NAMES = ("none", "batch", "ghost_batch", "layer", "group", "instance", "rms", "batch_channel",
         "power")
VARIANTS = {  # option sets tested per norm (groups=4 so groups hold 2 channels of C=8)
    "batch": [{}, {"momentum": None}],
    "ghost_batch": [{"virtual_batch_size": 2}],
    "group": [{"groups": 4}],
    "instance": [{}, {"track_running_stats": True}],
    "batch_channel": [{"groups": 4, "stats": "estimated"}, {"groups": 4, "stats": "batch"}],
    "power": [{}, {"warmup_iters": 2}],
}
CASES = [pytest.param(name, layout, opts, id=f"{name}-{layout}-{'-'.join(map(str, opts.values()))}")
         for name in NAMES for layout in NORMS[name].layouts
         for opts in VARIANTS.get(name, [{}])]


# Tiny tensors: intra-op threads only add OpenMP hand-offs (30 ms per op on a busy box).
pytestmark = pytest.mark.usefixtures("one_thread")


def make_input(layout: str, seed: int, shape=None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = shape or SHAPES[layout]
    return torch.randn(shape, generator=g, dtype=DT) * 2.0 + 0.5  # non-zero mean on purpose


def build(name: str, layout: str, opts: dict, seed: int) -> nn.Module:
    module = make_norm(name, C, layout, **opts).to(DT)
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():  # non-trivial affine parameters
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * 0.5 + 1.0)
    return module


def ncm(x, layout):  # (N, C, M), written independently of the library's helper
    return {"features": lambda: x[:, :, None], "conv": lambda: x.reshape(*x.shape[:2], -1),
            "tokens": lambda: x.permute(0, 2, 1)}[layout]()


def back(y, layout, shape):
    return {"features": lambda: y[:, :, 0], "conv": lambda: y.reshape(shape),
            "tokens": lambda: y.permute(0, 2, 1)}[layout]()


# ----------------------------------------------------------------------------------- references
class Ref:
    """Copies of the module's parameters and buffers, and a forward written out."""

    def __init__(self, mine: nn.Module, layout: str):
        self.layout = layout
        self.params = {n: p.detach().clone().requires_grad_() for n, p in mine.named_parameters()}
        self.buffers = {n: b.detach().clone() for n, b in mine.named_buffers()}
        self.opts = mine

    def step(self, x, g, training):
        """(output, input gradient, parameter gradients) for upstream gradient ``g``."""
        x = x.clone().requires_grad_()
        for p in self.params.values():
            p.grad = None
        y = self.forward(x, training)
        y.backward(g)
        return y.detach(), x.grad, {n: p.grad for n, p in self.params.items()}

    def affine(self, y3, w="weight", b="bias"):
        if self.params.get(w) is not None:
            y3 = y3 * self.params[w][:, None]
        if self.params.get(b) is not None:
            y3 = y3 + self.params[b][:, None]
        return y3


class TorchRef(Ref):
    """A torch layer with the module's state loaded; ``pre``/``post`` adapt the layout."""

    def __init__(self, mine, layout, module, pre=lambda x: x, post=lambda y, x: y):
        module = module.to(DT)
        module.load_state_dict(mine.state_dict(), strict=False)
        self.module, self.pre, self.post, self.layout = module, pre, post, layout
        self.params = dict(module.named_parameters())
        self.buffers = dict(module.named_buffers())

    def forward(self, x, training):
        return self.post(self.module.train(training)(self.pre(x)), x)


def tokens_as_bn(mine, layout, module):
    if layout != "tokens":
        return TorchRef(mine, layout, module)
    return TorchRef(mine, layout, module, lambda x: x.transpose(1, 2), lambda y, x: y.transpose(1, 2))


class GhostRef(Ref):
    def forward(self, x, training):
        m, v, eps, bufs = self.opts.momentum, self.opts.virtual_batch_size, self.opts.eps, self.buffers
        x3 = ncm(x, self.layout)
        if not training:
            y3 = (x3 - bufs["running_mean"][:, None]) / torch.sqrt(bufs["running_var"][:, None] + eps)
            return back(self.affine(y3), self.layout, x.shape)
        outs, mean_sum, var_sum = [], 0.0, 0.0
        for chunk in x3.split(v):
            mean = chunk.mean(dim=(0, 2))
            var = ((chunk - mean[:, None]) ** 2).mean(dim=(0, 2))
            outs.append((chunk - mean[:, None]) / torch.sqrt(var[:, None] + eps))
            n, share = chunk.shape[0] * chunk.shape[2], chunk.shape[0] / x3.shape[0]
            mean_sum = mean_sum + share * mean.detach()
            var_sum = var_sum + share * var.detach() * n / (n - 1)
        bufs["num_batches_tracked"] += 1
        bufs["running_mean"] = (1 - m) * bufs["running_mean"] + m * mean_sum
        bufs["running_var"] = (1 - m) * bufs["running_var"] + m * var_sum
        return back(self.affine(torch.cat(outs)), self.layout, x.shape)


class RMSConvRef(Ref):
    def forward(self, x, training):
        y = x / torch.sqrt(x.pow(2).mean(dim=(1, 2, 3), keepdim=True) + self.opts.eps)
        return y * self.params["weight"].view(1, -1, 1, 1)


class BCNRef(Ref):
    """Qiao et al.: batch step on estimated (or batch) statistics, then group norm, both affine."""

    def forward(self, x, training):
        r, eps, G, bufs = self.opts.momentum, self.opts.eps, self.opts.groups, self.buffers
        x3 = ncm(x, self.layout)
        if training:
            bufs["num_batches_tracked"] += 1
        if self.opts.stats == "estimated":
            if training:
                with torch.no_grad():
                    mu = x3.mean(dim=(0, 2))
                    var = ((x3 - bufs["running_mean"][:, None]) ** 2).mean(dim=(0, 2))
                    bufs["running_mean"] = (1 - r) * bufs["running_mean"] + r * mu
                    bufs["running_var"] = (1 - r) * bufs["running_var"] + r * var
            mu, var = bufs["running_mean"], bufs["running_var"]
        elif training:
            mu, var = x3.mean(dim=(0, 2)), x3.var(dim=(0, 2), unbiased=False)
            n = x3.shape[0] * x3.shape[2]
            bufs["running_mean"] = (1 - r) * bufs["running_mean"] + r * mu.detach()
            bufs["running_var"] = (1 - r) * bufs["running_var"] + r * var.detach() * n / (n - 1)
        else:
            mu, var = bufs["running_mean"], bufs["running_var"]
        xb = self.affine((x3 - mu[:, None]) / torch.sqrt(var[:, None] + eps),
                         "batch_weight", "batch_bias")
        grp = xb.reshape(xb.shape[0], G, -1)
        grp = (grp - grp.mean(-1, keepdim=True)) / torch.sqrt(grp.var(-1, unbiased=False, keepdim=True) + eps)
        return back(self.affine(grp.reshape(xb.shape)), self.layout, x.shape)


class PowerRef(Ref):
    """Shen et al. 2020, Algorithm 1 as in the official mask_powernorm.py, backward written out."""

    def forward(self, x, training):  # eval only: exact autograd
        y3 = ncm(x, self.layout) / torch.sqrt(self.buffers["running_phi"][:, None] + self.opts.eps)
        return back(self.affine(y3), self.layout, x.shape)

    def step(self, x, g, training):
        if not training:
            return super().step(x, g, training)
        o, bufs = self.opts, self.buffers
        eps, m, bm = o.eps, o.momentum, o.backward_momentum
        x3, g3 = ncm(x, self.layout), ncm(g, self.layout)
        bufs["num_batches_tracked"] += 1
        t = int(bufs["num_batches_tracked"])
        psi2_b = (x3 ** 2).mean(dim=(0, 2))
        psi2 = psi2_b if t <= o.warmup_iters else bufs["running_phi"]
        z = x3 / torch.sqrt(psi2[:, None] + eps)
        phi = bufs["running_phi"]
        if t < o.warmup_iters:
            phi = phi * (t - 1) / t + psi2_b / t
        bufs["running_phi"] = (1 - m) * phi + m * psi2_b
        w, b = self.params["weight"].detach(), self.params["bias"].detach()
        y3 = w[:, None] * z + b[:, None]
        # approximate backward: g_hat = w*g - (1-alpha_b)*Gamma*z ; dx = g_hat / psi_B
        g_hat = w[:, None] * g3 - bm * bufs["ema_gz"][:, None] * z
        bufs["ema_gz"] = bufs["ema_gz"] + (g_hat * z).mean(dim=(0, 2))
        dx = g_hat / torch.sqrt(psi2_b[:, None] + eps)
        grads = {"weight": (g3 * z).sum(dim=(0, 2)), "bias": g3.sum(dim=(0, 2))}
        return back(y3, self.layout, x.shape), back(dx, self.layout, x.shape), grads


def reference(name, mine, layout) -> Ref:
    if name == "none":
        return TorchRef(mine, layout, nn.Identity())
    if name == "batch":
        cls = nn.BatchNorm2d if layout == "conv" else nn.BatchNorm1d
        return tokens_as_bn(mine, layout, cls(C, eps=mine.eps, momentum=mine.momentum))
    if name == "layer":
        return TorchRef(mine, layout, nn.GroupNorm(1, C) if layout == "conv" else nn.LayerNorm(C))
    if name == "group":
        if layout != "tokens":
            return TorchRef(mine, layout, nn.GroupNorm(mine.groups, C))
        return TorchRef(mine, layout, nn.GroupNorm(mine.groups, C),
                        lambda x: x.reshape(-1, C), lambda y, x: y.reshape(x.shape))
    if name == "instance":
        return TorchRef(mine, layout, nn.InstanceNorm2d(
            C, affine=True, track_running_stats=mine.track_running_stats))
    if name == "rms":
        return RMSConvRef(mine, layout) if layout == "conv" else TorchRef(mine, layout, nn.RMSNorm(C, eps=mine.eps))
    return {"ghost_batch": GhostRef, "batch_channel": BCNRef, "power": PowerRef}[name](mine, layout)


def run_step(mine, ref, x, g, training):
    mine.train(training)
    xm = x.clone().requires_grad_()
    mine.zero_grad(set_to_none=True)
    ym = mine(xm)
    ym.backward(g)
    y_ref, dx_ref, grads_ref = ref.step(x, g, training)
    assert_close(ym, y_ref)
    assert_close(xm.grad, dx_ref)
    for n, p in mine.named_parameters():
        assert_close(p.grad, grads_ref[n], msg=f"grad of {n}")
    for n, b in mine.named_buffers():
        assert_close(b, ref.buffers[n].to(b.dtype), msg=f"buffer {n}")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name,layout,opts", CASES)
def test_matches_reference_in_train_then_eval_mode(name, layout, opts, seed):
    mine = build(name, layout, opts, seed)
    ref = reference(name, mine, layout)
    for step in range(3):  # training steps: outputs, gradients, running statistics
        x = make_input(layout, 10 * seed + step)
        g = make_input(layout, 10 * seed + step + 100)
        run_step(mine, ref, x, g, training=True)
    for step in range(2):  # eval with the running statistics the training steps left
        run_step(mine, ref, make_input(layout, 50 + step), make_input(layout, 70 + step), False)
    if name != "none":
        mine.train()
        run_step(mine, ref, make_input(layout, 90), make_input(layout, 91), True)  # and back


# ------------------------------------------------------------------------------- ghost batch
@pytest.mark.parametrize("layout", LAYOUTS)
def test_ghost_with_full_virtual_batch_is_batch_norm(layout):
    ghost = build("ghost_batch", layout, {"virtual_batch_size": SHAPES[layout][0]}, 0)
    batch = build("batch", layout, {}, 0)
    for step in range(3):
        x, g = make_input(layout, step), make_input(layout, step + 10)
        outs = []
        for m in (ghost, batch):
            xi = x.clone().requires_grad_()
            m.zero_grad()
            y = m(xi)
            y.backward(g)
            outs.append((y, xi.grad, m.weight.grad, m.bias.grad))
        for a, b in zip(*outs):
            assert_close(a, b)
        assert_close(ghost.running_mean, batch.running_mean)
        assert_close(ghost.running_var, batch.running_var)


@pytest.mark.parametrize("layout", ["conv", "tokens"])
def test_ghost_normalizes_each_chunk_on_its_own(layout):
    shape = (5,) + SHAPES[layout][1:]  # chunks of 2, 2 and a smaller last one of 1
    ghost = build("ghost_batch", layout, {"virtual_batch_size": 2}, 0)
    x = make_input(layout, 3, shape)
    y = ghost.train()(x)
    for lo, hi in ((0, 2), (2, 4), (4, 5)):
        alone = build("batch", layout, {}, 0).train()(x[lo:hi])
        assert_close(y[lo:hi], alone)
    assert not torch.allclose(y, build("batch", layout, {}, 0).train()(x))


def test_ghost_last_chunk_of_one_value_is_a_clear_error():
    ghost = make_norm("ghost_batch", C, "features", virtual_batch_size=2)
    with pytest.raises(ValueError, match="last virtual batch .* one value per channel"):
        ghost(torch.randn(5, C))


@pytest.mark.parametrize("layout, shape", [("features", (1, 4)), ("conv", (1, 4, 1, 1)),
                                           ("tokens", (1, 1, 4))])
def test_batch_norm_on_one_value_per_channel_is_a_clear_error(layout, shape):
    """torch's "Expected more than 1 value per channel" named neither the batch size nor the
    norm; eval mode, and one example with several positions (conv, tokens), are fine."""
    bn = make_norm("batch", 4, layout)
    with pytest.raises(ValueError, match="batch norm in train mode needs more than one value per "
                                         "channel.*batch size .*of at least 2"):
        bn(torch.randn(shape))
    bn.eval()
    assert bn(torch.randn(shape)).shape == shape
    bn.train()
    wide = (1, 4, 3, 3) if layout == "conv" else (1, 5, 4) if layout == "tokens" else (2, 4)
    assert bn(torch.randn(wide)).shape == wide


@pytest.mark.parametrize("name", ["batch", "ghost_batch"])
def test_replace_all_batch_norm_modules_works(name):
    net = nn.Sequential(make_norm(name, C, "conv", **VARIANTS.get(name, [{}])[0]))
    torch.func.replace_all_batch_norm_modules_(net)
    assert net[0].running_mean is None
    x = torch.randn(4, C, 3, 3)
    assert_close(net.eval()(x), net.train()(x))  # batch statistics in both modes now


# ------------------------------------------------------------------------------ batch-channel
@pytest.mark.parametrize("layout", ["features", "conv"])
def test_bcn_estimated_works_for_a_batch_of_one(layout):
    bcn = make_norm("batch_channel", C, layout, groups=4).to(DT)
    for _ in range(3):
        x = make_input(layout, 0, (1,) + SHAPES[layout][1:]).requires_grad_()
        y = bcn.train()(x)
        (y * make_input(layout, 1, y.shape)).sum().backward()
        assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
        assert x.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in bcn.parameters())


def test_bcn_estimated_forward_and_reverse_mode_agree():
    """The estimates are constants in train mode: a jvp by forward-mode AD (depth_variance's
    Jacobian probe) equals the reverse-mode one and leaves no tangent on the running statistics
    (no_grad does not stop forward AD, so the update detaches its input)."""
    from torch.autograd import forward_ad as fwAD

    a, b = (make_norm("batch_channel", C, "conv", groups=4).to(DT) for _ in range(2))
    x, v = make_input("conv", 0), make_input("conv", 1)
    with fwAD.dual_level():
        t = fwAD.unpack_dual(a.train()(fwAD.make_dual(x, v))).tangent
        assert fwAD.unpack_dual(a.running_mean).tangent is None
        assert fwAD.unpack_dual(a.running_var).tangent is None
    xr = x.clone().requires_grad_()
    y = b.train()(xr)
    u = torch.zeros_like(y, requires_grad=True)
    (g,) = torch.autograd.grad(y, xr, u, create_graph=True)
    (jv,) = torch.autograd.grad(g, u, v)
    assert_close(t, jv)
    assert_close(a.running_mean, b.running_mean) and assert_close(a.running_var, b.running_var)


# ---------------------------------------------------------------------------------- PowerNorm
def test_power_backward_is_approximate_not_exact():
    pn = build("power", "tokens", {}, 0)
    for step in range(3):  # builds up a non-zero Gamma
        x = make_input("tokens", step).requires_grad_()
        pn.train()(x).backward(make_input("tokens", step + 10))
    assert pn.ema_gz.abs().sum() > 0
    x = make_input("tokens", 5).requires_grad_()
    phi = pn.running_phi.clone()
    y = pn(x)
    y.backward(torch.ones_like(y))
    exact = (pn.weight / torch.sqrt(phi + pn.eps)).expand_as(x)
    assert not torch.allclose(x.grad, exact)


def test_power_warmup_starts_running_phi_at_the_batch_quadratic_mean():
    pn = make_norm("power", C, "conv", warmup_iters=5).to(DT)
    x = make_input("conv", 0)
    y = pn.train()(x)
    psi2 = x.pow(2).mean(dim=(0, 2, 3))
    assert_close(pn.running_phi, psi2)
    assert_close(y, x / torch.sqrt(psi2 + pn.eps).view(1, -1, 1, 1))


def test_power_backward_is_differentiable_for_hessian_probes():
    pn = build("power", "features", {}, 0)
    x = make_input("features", 0).requires_grad_()
    loss = pn.train()(x).pow(2).sum()
    (gx,) = torch.autograd.grad(loss, x, create_graph=True)
    (hv,) = torch.autograd.grad(gx, x, torch.ones_like(x))
    assert torch.isfinite(hv).all() and hv.abs().sum() > 0


@pytest.mark.parametrize("layout", ["features", "conv", "tokens"])
@pytest.mark.parametrize("warmup", [0, 5])
def test_power_forward_mode_is_the_exact_derivative_of_the_forward(layout, warmup):
    """Forward-mode AD (depth_variance's Jacobian-vector products) differentiates the forward
    map itself, running statistic included during warm-up (when it is the batch's): central
    differences agree; the approximate backward's J v does not."""
    import torch.autograd.forward_ad as fwAD

    pn = build("power", layout, {"warmup_iters": warmup}, 0).train()
    for step in range(3):  # a non-zero Gamma and a running psi^2 away from its start
        x = make_input(layout, step).requires_grad_()
        pn(x).backward(make_input(layout, step + 10))
    state = {k: v.clone() for k, v in pn.state_dict().items()}
    x, v = make_input(layout, 5), make_input(layout, 6)

    def f(z):
        pn.load_state_dict(state)  # every evaluation from the same statistics
        return pn(z)

    with fwAD.dual_level(), torch.no_grad():
        jv = fwAD.unpack_dual(f(fwAD.make_dual(x, v))).tangent
    with torch.no_grad():
        central = (f(x + 1e-6 * v) - f(x - 1e-6 * v)) / 2e-6
    assert_close(jv, central, rtol=1e-7, atol=1e-8)
    _, backward_jv = torch.autograd.functional.jvp(f, x, v)  # through the approximate backward
    assert not torch.allclose(backward_jv, central, rtol=1e-3)


# ---------------------------------------------------------------------- weight standardization
def ws_explicit(w, eps=1e-5):
    flat = w.reshape(w.shape[0], -1)
    mean = flat.mean(1, keepdim=True)
    var = ((flat - mean) ** 2).mean(1, keepdim=True)
    return ((flat - mean) / torch.sqrt(var + eps)).reshape(w.shape)


@pytest.mark.parametrize("seed", SEEDS)
def test_ws_linear_and_conv_match_explicit_standardization(seed):
    torch.manual_seed(seed)
    lin = WSLinear(6, 5).to(DT)
    conv = WSConv2d(4, 6, 3, stride=2, padding=1, groups=2).to(DT)
    for layer, x in ((lin, torch.randn(7, 6, dtype=DT)), (conv, torch.randn(2, 4, 5, 5, dtype=DT))):
        w_hat = layer.standardized_weight().reshape(layer.weight.shape[0], -1)
        assert_close(w_hat.mean(1), torch.zeros(w_hat.shape[0], dtype=DT))
        assert_close(w_hat.std(1, unbiased=False), torch.ones(w_hat.shape[0], dtype=DT), atol=1e-3, rtol=0)
        w = ws_explicit(layer.weight.detach())
        expected = (F.linear(x, w, layer.bias) if layer is lin else
                    F.conv2d(x, w, layer.bias, stride=2, padding=1, groups=2))
        y = layer(x)
        assert_close(y, expected)
        y.pow(2).sum().backward()
        # standardization is shift invariant per unit, so each unit's raw-weight gradient sums to 0
        assert_close(layer.weight.grad.reshape(layer.weight.shape[0], -1).sum(1),
                     torch.zeros(layer.weight.shape[0], dtype=DT))


@pytest.mark.parametrize("shape", [(5, 6), (6, 2, 3, 3), (3, 1, 1, 1)])
def test_ws_derivatives_match_the_explicit_formula(shape):
    """The fused standardization's gradient, Hessian-vector product and forward-mode tangent are
    those of the explicit (w - mean) / sqrt(var + eps), in float64 (the probes need all three)."""
    torch.manual_seed(0)
    w, v, g = (torch.randn(shape, dtype=DT) for _ in range(3))
    w[0] *= 1e-3  # a nearly constant unit: eps matters there

    def loss(f):
        return lambda w: (f(w, 1e-5) * g).sin().sum()

    fused, explicit = loss(standardize_weight), loss(ws_explicit)
    assert_close(fused(w), explicit(w), rtol=1e-12, atol=1e-12)
    assert_close(torch.func.grad(fused)(w), torch.func.grad(explicit)(w), rtol=1e-10, atol=1e-12)
    hvp_fused = torch.autograd.functional.hvp(fused, w, v)[1]
    hvp_explicit = torch.autograd.functional.hvp(explicit, w, v)[1]
    assert_close(hvp_fused, hvp_explicit, rtol=1e-9, atol=1e-10)
    assert_close(torch.func.jvp(fused, (w,), (v,))[1], torch.func.jvp(explicit, (w,), (v,))[1],
                 rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_ws_composes_with_every_norm(name):
    opts = VARIANTS.get(name, [{}])[0]
    for layout, layer, x in (("features", WSLinear(5, C), torch.randn(6, 5)),
                             ("conv", WSConv2d(3, C, 3, padding=1), torch.randn(4, 3, 5, 5))):
        if layout not in norm_layouts(name):
            continue
        net = nn.Sequential(layer, make_norm(name, C, layout, **opts), nn.ReLU())
        net(x).sum().backward()
        assert torch.isfinite(layer.weight.grad).all()
        assert not is_norm_module(layer)


# ------------------------------------------------------------------------------ registry, errors
def test_registry_lists_every_norm_in_order_with_its_spec():
    assert tuple(NORMS) == NAMES
    for name, spec in NORMS.items():
        assert spec.name == name and spec.doc and set(spec.layouts) <= set(LAYOUTS)
        assert norm_layouts(name) == spec.layouts
        assert isinstance(spec.options, dict)
        module = spec.build(C, spec.layouts[0], **VARIANTS.get(name, [{}])[0])
        assert is_norm_module(module) == (name != "none")
    assert norm_layouts("instance") == ("conv",)
    assert norm_layouts("batch_channel") == ("features", "conv")


@pytest.mark.parametrize("name", NAMES[1:])
def test_norm_modules_expose_gain_bias_and_repr(name):
    layout = norm_layouts(name)[0]
    opts = VARIANTS.get(name, [{}])[0]
    m = make_norm(name, C, layout, **opts)
    assert m.weight.shape == (C,)
    assert (m.bias is None) if name == "rms" else (m.bias.shape == (C,))
    assert f"layout={layout}" in repr(m)
    plain = make_norm(name, C, layout, **opts, affine=False)
    assert plain.weight is None and plain.bias is None
    assert is_norm_module(m) and is_norm_module(plain)


def test_is_norm_module():
    assert not is_norm_module(make_norm("none", C, "conv"))
    assert not is_norm_module(nn.Linear(2, 2))
    assert is_norm_module(nn.BatchNorm2d(3)) and is_norm_module(nn.LayerNorm(3))


def test_unknown_norm_lists_all_names():
    with pytest.raises(ValueError) as err:
        make_norm("bachnorm", C, "conv")
    assert str(err.value) == f"unknown norm 'bachnorm'; choose one of: {', '.join(NAMES)}"
    with pytest.raises(ValueError, match="unknown norm 'x'"):
        norm_layouts("x")


@pytest.mark.parametrize("name,layout,valid", [
    ("instance", "tokens", "conv"), ("instance", "features", "conv"),
    ("batch_channel", "tokens", "features, conv")])
def test_unsupported_layout_lists_the_norms_layouts(name, layout, valid):
    with pytest.raises(ValueError) as err:
        make_norm(name, C, layout)
    assert str(err.value) == (f"norm {name!r} is not defined for layout {layout!r}; "
                              f"layouts for {name!r}: {valid}")


@pytest.mark.parametrize("name", ["group", "batch_channel"])
def test_groups_must_divide_channels(name):
    with pytest.raises(ValueError, match=r"groups=5 does not divide num_channels=12; "
                                         r"valid values: 1, 2, 3, 4, 6, 12"):
        make_norm(name, 12, "conv", groups=5)
    with pytest.raises(ValueError, match="groups=8 does not divide num_channels=12"):
        make_norm(name, 12, "conv")  # the default


def test_unknown_option_lists_the_norms_options():
    with pytest.raises(ValueError) as err:
        make_norm("group", C, "conv", grops=2)
    assert str(err.value) == "unknown option 'grops' for norm 'group'; choose one of: groups, eps, affine"
    with pytest.raises(ValueError, match="unknown option 'eps' for norm 'none'"):
        make_norm("none", C, "conv", eps=1e-3)


@pytest.mark.parametrize("num_channels", [0, -3, 2.5, True])
def test_bad_num_channels(num_channels):
    with pytest.raises(ValueError, match="num_channels must be"):
        make_norm("layer", num_channels, "features")


def test_bad_layout_name():
    with pytest.raises(ValueError) as err:
        make_norm("batch", C, "nchw")
    assert str(err.value) == "unknown layout 'nchw'; choose one of: features, conv, tokens"


@pytest.mark.parametrize("name,opts,match", [
    ("batch_channel", {"stats": "micro"}, "unknown batch_channel stats 'micro'; choose one of: estimated, batch"),
    ("batch", {"momentum": 1.5}, "momentum must be <= 1"),
    ("layer", {"eps": 0}, "eps must be > 0"),
    ("ghost_batch", {"virtual_batch_size": 0}, "virtual_batch_size must be > 0"),
    ("power", {"warmup_iters": -1}, "warmup_iters must be >= 0"),
    ("rms", {"affine": "yes"}, "affine must be True or False"),
])
def test_bad_option_values(name, opts, match):
    with pytest.raises(ValueError, match=match):
        make_norm(name, C, "features", **opts)


@pytest.mark.parametrize("name,layout", [(n, lay) for n in NAMES[1:] for lay in NORMS[n].layouts])
def test_wrong_input_rank_or_channels_is_a_clear_error(name, layout):
    m = make_norm(name, C, layout, **VARIANTS.get(name, [{}])[0])
    wrong_rank = {"features": (4, C, 3), "conv": (4, C), "tokens": (4, C, 3, 3)}[layout]
    wrong_channels = SHAPES[layout][:-1] + (C + 1,) if layout == "tokens" else \
        (SHAPES[layout][0], C + 1) + SHAPES[layout][2:]
    for shape in (wrong_rank, wrong_channels):
        with pytest.raises(ValueError, match=rf"norm '{name}' with layout '{layout}' expects input "
                                             rf"of shape .* with C={C}; got shape"):
            m(torch.randn(shape))
