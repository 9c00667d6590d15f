"""channel_health against constructed singularities, and healthy random networks at init."""
import math

import pytest
import torch

from workbench.models import ConvNetConfig, MLPConfig, TransformerConfig, build_model
from workbench.probes.channel_health import channel_health


def _summary(frame):
    if "channel" in frame:
        frame = frame[frame.channel == -1]
    return frame.pivot(index="layer", columns="metric", values="value")


def _sick_mlp(norm="none"):
    """Layer blocks.0 (8 channels): 0 dead (always negative, not constant), 1 constant 0.5,
    2 and 3 identical, 4 = -2 x channel 5 + 1 (anti-correlated: not a duplicate)."""
    torch.manual_seed(0)
    model = build_model(MLPConfig(depth=2, width=8, norm=norm, in_dim=5, out_dim=3))
    lin = model.blocks[0][0]
    with torch.no_grad():
        lin.weight[0] *= 0.01
        lin.bias[0] = -10.0
        lin.weight[1] = 0.0
        lin.bias[1] = 0.5
        lin.weight[3] = lin.weight[2]
        lin.bias[3] = lin.bias[2]
        lin.weight[4] = -2 * lin.weight[5]
        lin.bias[4] = 1 - 2 * lin.bias[5]
    return model


def _x(n=64, seed=1):
    return torch.randn(n, 5, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_constructed_dead_constant_and_duplicate_channels_are_diagnosed_exactly(mode):
    model = _sick_mlp()
    frame = channel_health(model, (_x(), None), mode=mode, per_channel=True)
    per = frame[frame.channel >= 0]
    layer = per[per.layer == "blocks.0.2"].pivot(index="channel", columns="metric", values="value")
    assert layer.index.tolist() == list(range(8))
    assert layer.dead[layer.dead == 1].index.tolist() == [0]
    assert layer.near_constant[layer.near_constant == 1].index.tolist() == [1]
    assert layer.duplicate[layer.duplicate == 1].index.tolist() == [2, 3]
    assert layer.loc[1, "elimination_distance"] == math.inf and layer.loc[1, "pre_std"] == 0.0
    assert layer.loc[1, "pre_mean"] == pytest.approx(0.5)
    x = _x()
    pre0 = x @ model.blocks[0][0].weight[0].detach() - 10.0
    assert layer.loc[0, "pre_mean"] == pytest.approx(float(pre0.mean()), rel=1e-5)
    assert layer.loc[0, "elimination_distance"] == pytest.approx(float(pre0.mean().abs() / pre0.std(unbiased=False)), rel=1e-4)
    s = _summary(frame).loc["blocks.0.2"]
    assert s.dead_fraction == 1 / 8 and s.constant_fraction == 1 / 8
    assert s.duplicate_fraction == 2 / 8 and s.duplicate_pairs == 1 and s.channels == 8
    assert s.one_sided_fraction == (layer.elimination_distance > 3).mean()
    # the next layer sees two identical inputs but builds independent channels from them
    nxt = _summary(frame).loc["blocks.1.2"]
    assert nxt.duplicate_pairs == 0 and nxt.constant_fraction == 0


def test_a_nan_channel_hides_no_duplicates():
    """A channel whose pre-activations are NaN correlates as NaN with every other: it is nobody's
    duplicate, and the real pair (2, 3) is still found."""
    model = _sick_mlp()
    with torch.no_grad():
        model.blocks[0][0].weight[6, 0] = math.nan
    frame = channel_health(model, (_x(), None), per_channel=True)
    layer = frame[(frame.channel >= 0) & (frame.layer == "blocks.0.2")].pivot(
        index="channel", columns="metric", values="value")
    assert layer.duplicate[layer.duplicate == 1].index.tolist() == [2, 3]
    assert math.isnan(layer.loc[6, "pre_mean"]) and layer.loc[6, "dead"] == 0


def test_zero_gains_of_norm_layers_are_counted():
    torch.manual_seed(0)
    model = build_model(MLPConfig(depth=2, width=8, norm="batch", in_dim=5, out_dim=3))
    with torch.no_grad():
        model.blocks[1][1].weight[[2, 5]] = 1e-5
    frame = channel_health(model, (_x(), None), per_channel=True)
    s = _summary(frame)
    assert s.loc["blocks.1.1", "zero_gain_fraction"] == 2 / 8
    assert s.loc["blocks.0.1", "zero_gain_fraction"] == 0
    # a near-zero BN gain makes the channel's pre-activation near-constant (beta = 0)
    layer = frame[(frame.layer == "blocks.1.2") & (frame.channel >= 0)]
    const = layer[(layer.metric == "near_constant") & (layer.value == 1)].channel.tolist()
    assert const == [2, 5]


def _healthy():
    """Nets that are healthy at init: BatchNorm (each channel centred over the batch), tanh, GELU.
    Not in the list, because the probe rightly flags them: a plain ReLU MLP with torch's default
    init (6-30% of the deeper channels dead: biases dominate the shrinking signal) and ReLU MLPs
    with LN, GN or BCN (at init BCN's estimated statistics are 0/1, so it is GN): per-example
    normalization lets a channel sit below the example's mean for the whole batch (1 of 16 dead
    in the deeper layers) — the drift toward elimination singularities the WS/BCN paper names."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    for norm, act in [("batch", "relu"), ("batch", "tanh"), ("layer", "gelu")]:
        yield (f"mlp-{norm}-{act}", build_model(MLPConfig(depth=3, width=16, norm=norm, activation=act,
                                                           in_dim=10, out_dim=3)), torch.randn(128, 10, generator=g))
    yield ("convnet", build_model(ConvNetConfig(stages=2, channels=4, in_channels=3, out_dim=5)),
           torch.randn(16, 3, 8, 8, generator=g))
    yield ("transformer", build_model(TransformerConfig(depth=2, d_model=16, heads=2, vocab_size=11, seq_len=8)),
           torch.randint(0, 11, (16, 8), generator=g))


def test_healthy_random_networks_at_init_show_none():
    for name, model, x in _healthy():
        s = _summary(channel_health(model, (x, None)))
        for metric in ["dead_fraction", "constant_fraction", "duplicate_fraction", "zero_gain_fraction",
                       "one_sided_fraction"]:
            if metric in s:
                assert (s[metric].dropna() == 0).all(), (name, metric, s[metric])


@pytest.mark.parametrize("kwargs, msg", [
    ({"constant_threshold": 0.0}, "constant_threshold must be > 0"),
    ({"elimination_threshold": -1.0}, "elimination_threshold must be > 0"),
    ({"duplicate_threshold": 1.5}, r"duplicate_threshold must be in \(0, 1\]"),
    ({"duplicate_threshold": 0.0}, "duplicate_threshold must be > 0"),
    ({"gain_threshold": -1e-3}, "gain_threshold must be >= 0"),
    ({"mode": "test"}, "unknown mode 'test'"),
])
def test_thresholds_out_of_range_are_value_errors(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        channel_health(_sick_mlp(), (_x(), None), **kwargs)


def test_a_model_without_activations_is_rejected():
    with pytest.raises(ValueError, match="channel_health needs activation modules"):
        channel_health(torch.nn.Linear(5, 3), (_x(), None))


def test_an_activation_module_shared_by_two_layers_is_rejected_not_misread():
    """One ReLU module called by two layers (torchvision's ResNet blocks share ``self.relu``):
    only its last call was kept, so the first layer's dead channels went unreported."""
    from workbench.probes import run_together

    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2, self.head = (torch.nn.Linear(5, 6), torch.nn.Linear(6, 6),
                                           torch.nn.Linear(6, 3))
            self.relu = torch.nn.ReLU()

        def forward(self, x):
            return self.head(self.relu(self.l2(self.relu(self.l1(x)))))

    batch = (_x(), torch.zeros(64, dtype=torch.long))
    with pytest.raises(ValueError, match="'relu' ran more than once in one forward pass"):
        channel_health(Shared(), batch)
    with pytest.raises(ValueError, match="'relu' ran more than once"):  # inside a training step
        run_together(Shared(), batch, torch.nn.functional.cross_entropy,
                     names=["layer_norms", "channel_health"])
