"""Probes: functions ``(model, batch, loss_fn, **budget) -> tidy DataFrame``.

Each probe leaves the model exactly as it found it (parameters, ``.grad``, train/eval flags,
BatchNorm buffers, global RNG). ``PROBES`` lists them; ``PRESETS`` groups them by cost.
"""
from .channel_health import activation_modules, channel_health
from .depth_variance import depth_variance
from .fixed import FixedBatch, on_batch
from .gradient_noise_scale import gradient_noise_scale
from .hessian_density import hessian_density
from .hessian_top_eigs import hessian_top_eigs
from .hessian_trace import hessian_trace
from .hessian_vs_batch_size import hessian_vs_batch_size
from .landscape import landscape
from .layer_norms import layer_norms
from .smoothness import smoothness, smoothness_small
from .together import Together, run_together

PROBES = {
    "layer_norms": layer_norms,
    "hessian_top_eigs": hessian_top_eigs,
    "hessian_trace": hessian_trace,
    "hessian_density": hessian_density,
    "hessian_vs_batch_size": hessian_vs_batch_size,
    "gradient_noise_scale": gradient_noise_scale,
    "channel_health": channel_health,
    "smoothness_small": smoothness_small,
    "smoothness": smoothness,
    "landscape": landscape,
    "depth_variance": depth_variance,
}

# Presets ordered by cost; every name must be in PROBES. `cheap` and `standard` are meant to run
# on the trainer's default schedule (every steps // 10); in `train` their probes run together
# inside the training step (see .together), and benchmarks/bench_probes.py measures what that
# costs; curvature probes cost tens to hundreds of training steps per call, so they are in `full`
# only (where layer_norms + channel_health + smoothness still run together).
PRESETS = {
    "cheap": ("layer_norms", "channel_health"),
    "standard": ("layer_norms", "channel_health", "smoothness_small"),
    "full": ("layer_norms", "channel_health", "smoothness", "hessian_top_eigs", "hessian_trace",
             "gradient_noise_scale", "hessian_density", "hessian_vs_batch_size", "landscape"),
}
# depth_variance is in no preset: it raises on models without residual blocks (plain MLPs).

# What a preset's probe needs of the model: a check that raises ValueError (saying why) on a
# model it cannot measure. A preset then leaves the probe out for that model (the trainer warns
# and notes it in the run's meta); the probe named on its own still raises.
PRESET_NEEDS = {"channel_health": activation_modules}

__all__ = ["PRESETS", "PRESET_NEEDS", "PROBES", "FixedBatch", "Together", "channel_health",
           "depth_variance", "gradient_noise_scale", "hessian_density", "hessian_top_eigs", "hessian_trace",
           "hessian_vs_batch_size", "landscape", "layer_norms", "on_batch", "run_together",
           "smoothness", "smoothness_small"]
