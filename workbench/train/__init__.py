"""Training: configs, batch strategies, optimizers (incl. LARS/LAMB) and the trainer."""
from .config import DATASET_INPUTS, SHUFFLES, TrainConfig
from .hooks import CancelToken, every, log_spaced
from .optim import LAMB, LARS, OPTIMIZERS, build_optimizer, param_groups
from .schedules import (
                        BATCH_SCHEDULES,
                        LR_DECAY,
                        LR_SCALING,
                        BatchSizeSchedule,
                        lr_at,
                        make_batch_schedule,
                        scaled_lr,
)
from .trainer import TRAIN_METRICS, evaluate, resolve_probes, train, train_many

__all__ = ["BATCH_SCHEDULES", "DATASET_INPUTS", "LAMB", "LARS", "LR_DECAY", "LR_SCALING",
           "OPTIMIZERS", "SHUFFLES", "BatchSizeSchedule", "CancelToken", "TRAIN_METRICS",
           "TrainConfig", "build_optimizer", "evaluate", "every", "log_spaced", "lr_at",
           "make_batch_schedule", "param_groups", "resolve_probes", "scaled_lr", "train",
           "train_many"]
