"""Normlab workbench: why normalization layers and batch-size choices make networks train well or badly.

The core (this package minus ``workbench.viz`` and ``workbench.dashboard``) needs only torch,
numpy and pandas::

    from workbench import TrainConfig, MLPConfig, DataConfig, train
    run = train(TrainConfig(model=MLPConfig(norm="batch"), data=DataConfig("gaussian_mixture")))
    run.frame            # tidy: run_id, step, probe, metric, layer, value
"""
from .data import DATASETS, DataConfig, make_dataset
from .models import ConvNetConfig, MLPConfig, TransformerConfig, build_model
from .norms import NORMS, make_norm
from .probes import PRESETS, PROBES
from .store import Run, RunStore
from .train import CancelToken, TrainConfig, every, log_spaced, train

__version__ = "0.1.0"

__all__ = ["DATASETS", "NORMS", "PRESETS", "PROBES", "CancelToken", "ConvNetConfig", "DataConfig",
           "MLPConfig", "Run", "RunStore", "TrainConfig", "TransformerConfig", "build_model",
           "every", "log_spaced", "make_dataset", "make_norm", "train"]
