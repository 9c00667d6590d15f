"""Probes: functions ``(model, batch, loss_fn, **budget) -> tidy DataFrame``.

Each probe leaves the model exactly as it found it (parameters, ``.grad``, train/eval flags,
BatchNorm buffers, global RNG). ``PROBES`` lists them; ``PRESETS`` groups them by cost.
"""
from .gradient_noise_scale import gradient_noise_scale
from .hessian_density import hessian_density
from .hessian_top_eigs import hessian_top_eigs
from .hessian_trace import hessian_trace
from .hessian_vs_batch_size import hessian_vs_batch_size
from .layer_norms import layer_norms

PROBES = {
    "layer_norms": layer_norms,
    "hessian_top_eigs": hessian_top_eigs,
    "hessian_trace": hessian_trace,
    "hessian_density": hessian_density,
    "hessian_vs_batch_size": hessian_vs_batch_size,
    "gradient_noise_scale": gradient_noise_scale,
}

# Presets ordered by cost; every name must be in PROBES.
PRESETS = {
    "cheap": ("layer_norms",),
    "standard": ("layer_norms", "hessian_top_eigs", "hessian_trace", "gradient_noise_scale"),
    "full": ("layer_norms", "hessian_top_eigs", "hessian_trace", "gradient_noise_scale",
             "hessian_density", "hessian_vs_batch_size"),
}

__all__ = ["PRESETS", "PROBES", "gradient_noise_scale", "hessian_density", "hessian_top_eigs",
           "hessian_trace", "hessian_vs_batch_size", "layer_norms"]
