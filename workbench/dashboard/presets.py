"""Arena presets: the papers' comparisons, one click each (shared settings + up to four lanes).

Each lane is a dict of :class:`~workbench.dashboard.arena.Lane` parameters; unspecified ones keep
their defaults. Sizes are small so a preset trains in seconds on a laptop CPU.
"""
from __future__ import annotations

_MICRO = {"model": "convnet", "dataset": "shapes", "batch_size": 32, "micro_batch": 2,
          "optimizer": "sgd", "lr": 0.05}
_LN = {"model": "transformer", "dataset": "markov", "norm": "layer", "batch_size": 32,
       "optimizer": "adam", "lr": 0.003, "warmup_steps": 20}
_BATCH = {"model": "mlp", "dataset": "gaussian_mixture", "optimizer": "sgd", "lr": 0.05}
_LARGE = {"model": "mlp", "dataset": "gaussian_mixture", "norm": "batch", "batch_size": 1024,
          "warmup_steps": 20, "lr_decay": "cosine"}

PRESETS: dict[str, dict] = {
    "micro-batch: BN vs GN vs GN+WS vs BCN": {
        "doc": "BatchNorm fails when each micro-batch holds 2 images; GroupNorm, GN+WS and BCN do not "
               "(Qiao et al., Micro-Batch Training with Batch-Channel Normalization and WS).",
        "shared": {"steps": 200, "width": 16, "depth": 2},
        "lanes": [{**_MICRO, "label": "BN", "norm": "batch"},
                  {**_MICRO, "label": "GN", "norm": "group"},
                  {**_MICRO, "label": "GN+WS", "norm": "group", "ws": True},
                  {**_MICRO, "label": "BCN (+WS)", "norm": "batch_channel", "ws": True}],
    },
    "LN placement: Pre vs Post vs Mix vs LN scaling": {
        "doc": "Where LayerNorm sits decides how variance grows with depth (Curse of Depth, Mix-LN).",
        "shared": {"steps": 300, "width": 32, "depth": 4},
        "lanes": [{**_LN, "label": "Pre-LN", "placement": "pre"},
                  {**_LN, "label": "Post-LN", "placement": "post"},
                  {**_LN, "label": "Mix-LN", "placement": "mix"},
                  {**_LN, "label": "LN scaling", "placement": "ln_scaling"}],
    },
    "batch size: small vs large, with and without ghost BN": {
        "doc": "Large batches generalize worse; ghost BN normalizes over small virtual batches "
               "(Hoffer et al., Train longer, generalize better).",
        "shared": {"steps": 300, "width": 64, "depth": 3},
        "lanes": [{**_BATCH, "label": "B=32 BN", "batch_size": 32, "norm": "batch"},
                  {**_BATCH, "label": "B=32 ghost BN(8)", "batch_size": 32, "norm": "ghost_batch",
                   "virtual_batch": 8},
                  {**_BATCH, "label": "B=512 BN", "batch_size": 512, "norm": "batch",
                   "lr_scaling": "sqrt"},
                  {**_BATCH, "label": "B=512 ghost BN(32)", "batch_size": 512,
                   "norm": "ghost_batch", "virtual_batch": 32, "lr_scaling": "sqrt"}],
    },
    "large batch: SGD vs LARS, Adam vs LAMB": {
        "doc": "Layer-wise trust ratios keep large-batch training stable (You et al., LARS and LAMB).",
        "shared": {"steps": 200, "width": 64, "depth": 3},
        "lanes": [{**_LARGE, "label": "SGD", "optimizer": "sgd", "lr": 0.4},
                  {**_LARGE, "label": "LARS", "optimizer": "lars", "lr": 2.0},
                  {**_LARGE, "label": "Adam", "optimizer": "adam", "lr": 0.004},
                  {**_LARGE, "label": "LAMB", "optimizer": "lamb", "lr": 0.01}],
    },
}
