"""Models: frozen dataclass configs and ``build_model(cfg)``.

Every model is ``stem -> blocks -> head`` with its blocks in ``model.blocks`` and named accessors
(``named_blocks``, ``named_layers``, ``named_norms``) so probes can report per block and layer.
"""
from __future__ import annotations

import dataclasses

from .._validate import check_choice
from .base import ACTIVATIONS, WorkbenchModel
from .convnet import ConvNet, ConvNetConfig
from .mlp import MLP, MLPConfig
from .transformer import PLACEMENTS, TRANSFORMER_NORMS, Transformer, TransformerConfig

MODELS = {"mlp": (MLPConfig, MLP), "convnet": (ConvNetConfig, ConvNet),
          "transformer": (TransformerConfig, Transformer)}
ModelConfig = MLPConfig | ConvNetConfig | TransformerConfig

# Which data a model can take (by the data set's input kind).
_INPUTS = {"mlp": ("features", "images"), "convnet": ("images",), "transformer": ("tokens",)}


def build_model(cfg: ModelConfig) -> WorkbenchModel:
    """Build the model a config describes (dims must be filled: see :func:`fit_to_data`)."""
    for config_cls, model_cls in MODELS.values():
        if type(cfg) is config_cls:
            return model_cls(cfg)
    raise ValueError(f"unknown model config {type(cfg).__name__}; choose one of: "
                     f"{', '.join(c.__name__ for c, _ in MODELS.values())}")


def model_config(kind: str, **fields) -> ModelConfig:
    """``model_config("mlp", norm="batch")`` -> ``MLPConfig(norm="batch")``."""
    check_choice("model", kind, MODELS)
    _check_fields(kind, fields)
    return MODELS[kind][0](**fields)


def _check_fields(kind: str, fields) -> None:
    """A ValueError naming unknown fields of model ``kind`` and listing its valid ones."""
    cls = MODELS[kind][0]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known, key=str)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {', '.join(map(repr, unknown))}; "
                         f"valid fields: {', '.join(sorted(known))}")


def input_kind(input_shape: tuple, task: str) -> str:
    if task == "lm":
        return "tokens"
    return "images" if len(input_shape) == 3 else "features"


def fit_to_data(cfg: ModelConfig, input_shape: tuple, num_outputs: int, task: str,
                dataset: str = "this data set") -> ModelConfig:
    """Fill a config's input/output dims from a data set, checking the model can take it."""
    kind = input_kind(tuple(input_shape), task)
    if kind not in _INPUTS[cfg.kind]:
        fits = [k for k, kinds in _INPUTS.items() if kind in kinds]
        raise ValueError(f"model {cfg.kind!r} cannot take data set {dataset!r} ({kind}); "
                         f"models for it: {', '.join(fits)}")
    if cfg.kind == "mlp":
        in_dim = 1
        for d in input_shape:
            in_dim *= int(d)
        return dataclasses.replace(cfg, in_dim=in_dim, out_dim=num_outputs)
    if cfg.kind == "convnet":
        return dataclasses.replace(cfg, in_channels=int(input_shape[0]), out_dim=num_outputs)
    return dataclasses.replace(cfg, vocab_size=num_outputs, seq_len=int(input_shape[0]))


def config_to_dict(cfg: ModelConfig) -> dict:
    return {"kind": cfg.kind, **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}}


def config_from_dict(d: dict) -> ModelConfig:
    """``{"kind": "mlp", "width": 64, ...}`` -> ``MLPConfig(width=64, ...)``; a ValueError for a
    missing or unknown ``kind`` or an unknown field (naming the valid ones)."""
    if not isinstance(d, dict):
        raise ValueError(f"a model config must be a mapping with a 'kind' ({', '.join(MODELS)}) and "
                         f"its fields, got {d!r}")
    d = dict(d)
    if "kind" not in d:
        raise ValueError(f"model config {d!r} has no 'kind'; choose one of: {', '.join(MODELS)}")
    kind = d.pop("kind")
    check_choice("model", kind, MODELS)
    _check_fields(kind, d)
    return MODELS[kind][0](**d)


__all__ = ["ACTIVATIONS", "MODELS", "PLACEMENTS", "TRANSFORMER_NORMS", "ConvNet", "ConvNetConfig",
           "MLP", "MLPConfig", "ModelConfig", "Transformer", "TransformerConfig", "WorkbenchModel",
           "build_model", "config_from_dict", "config_to_dict", "fit_to_data", "input_kind",
           "model_config"]
