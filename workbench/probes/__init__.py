"""Probes: functions ``(model, batch, loss_fn, **budget) -> tidy DataFrame``.

Each probe leaves the model exactly as it found it (parameters, ``.grad``, train/eval flags,
BatchNorm buffers, global RNG). ``PROBES`` lists them; ``PRESETS`` groups them by cost.
"""
from .layer_norms import layer_norms

PROBES = {
    "layer_norms": layer_norms,
}

# Presets ordered by cost; every name must be in PROBES.
PRESETS = {
    "cheap": ("layer_norms",),
    "standard": ("layer_norms",),
    "full": ("layer_norms",),
}

__all__ = ["PRESETS", "PROBES", "layer_norms"]
