"""Arena presets: the papers' comparisons, one click each (shared settings + up to four lanes).

Each lane is a dict of :class:`~workbench.dashboard.arena.Lane` parameters; unspecified ones keep
their defaults; ``shared`` sets the Arena's own (probes none and probe interval default unless
given). Sizes are small so a preset trains in seconds on a laptop CPU. Each doc says where the
claim shows (the dashed test curves, a probe panel), and what does not reproduce at this scale;
tests/test_dashboard_arena.py checks the micro-batch and LN-placement claims on the Arena itself.
"""
from __future__ import annotations

_MICRO = {"model": "convnet", "dataset": "shapes", "batch_size": 32, "micro_batch": 1,
          "optimizer": "sgd", "lr": 0.05}
_LN = {"model": "transformer", "dataset": "markov", "norm": "layer", "batch_size": 32,
       "optimizer": "adam", "lr": 0.003, "warmup_steps": 20}
_BATCH = {"model": "mlp", "dataset": "gaussian_mixture", "optimizer": "sgd", "lr": 0.05}
_LARGE = {"model": "mlp", "dataset": "gaussian_mixture", "norm": "batch", "batch_size": 1024,
          "warmup_steps": 20, "lr_decay": "cosine"}

PRESETS: dict[str, dict] = {
    "micro-batch: BN vs GN vs GN+WS vs BCN": {
        "doc": "One image per micro-batch: BatchNorm then normalizes each image over its own "
               "pixels. It trains, but its test accuracy (dashed) collapses: the running "
               "statistics used at test time describe another function. GroupNorm has no batch "
               "dependence but trains slowly, WS speeds it up, and BCN's batch step uses "
               "estimated statistics (Qiao et al., Micro-Batch Training with Batch-Channel "
               "Normalization and Weight Standardization).",
        "shared": {"steps": 200, "width": 16, "depth": 2},
        "lanes": [{**_MICRO, "label": "BN", "norm": "batch"},
                  {**_MICRO, "label": "GN", "norm": "group"},
                  {**_MICRO, "label": "GN+WS", "norm": "group", "ws": True},
                  {**_MICRO, "label": "BCN (+WS)", "norm": "batch_channel", "ws": True}],
    },
    "LN placement: Pre vs Post vs Mix vs LN scaling": {
        "doc": "Where LayerNorm sits decides how the residual stream's variance grows (Curse of "
               "Depth; Mix-LN). The probe panel shows it, averaged over the 8 blocks: Pre-LN's "
               "grows during training, Post-LN's stays near 1, Mix-LN and LN scaling grow less "
               "than Pre-LN. On this easy chain the losses coincide; notebook 04 has the "
               "per-block picture.",
        "shared": {"steps": 300, "width": 32, "depth": 8, "probes": ["depth_variance"],
                   "probe_every": 25},
        "lanes": [{**_LN, "label": "Pre-LN", "placement": "pre"},
                  {**_LN, "label": "Post-LN", "placement": "post"},
                  {**_LN, "label": "Mix-LN", "placement": "mix"},
                  {**_LN, "label": "LN scaling", "placement": "ln_scaling"}],
    },
    "batch size: small vs large, with and without ghost BN": {
        "doc": "At equal steps the large batches end with a higher test loss (dashed); ghost BN, "
               "normalizing over small virtual batches, lowers the large batch's somewhat "
               "(Hoffer et al., Train longer, generalize better). Notebook 06 adds equal-update "
               "runs and the weight-distance law.",
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
        "doc": "LARS and LAMB scale each layer's step by a trust ratio, to keep large-batch "
               "training stable at large learning rates (You et al.). At this scale SGD and Adam "
               "with tuned rates do as well (Nado et al. 2021, A Large Batch Optimizer Reality "
               "Check); notebook 06 sweeps the rates.",
        "shared": {"steps": 200, "width": 64, "depth": 3},
        "lanes": [{**_LARGE, "label": "SGD", "optimizer": "sgd", "lr": 0.4},
                  {**_LARGE, "label": "LARS", "optimizer": "lars", "lr": 2.0},
                  {**_LARGE, "label": "Adam", "optimizer": "adam", "lr": 0.004},
                  {**_LARGE, "label": "LAMB", "optimizer": "lamb", "lr": 0.01}],
    },
}
