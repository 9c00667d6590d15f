"""A training run: its config, status and tidy frame of rows."""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

STATUSES = ("finished", "diverged", "cancelled", "failed")

# The tidy format every trainer step and every probe shares (budget columns are optional).
COLUMNS = ["run_id", "step", "probe", "metric", "layer", "value"]
BUDGET_COLUMNS = ["hvps", "iters", "converged"]


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no spaces: the same config always gives the same text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(obj):
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot serialize {type(obj).__name__} in a config")


def config_hash(config_dict: dict, length: int = 12) -> str:
    """Stable run id: the first ``length`` hex digits of the SHA-256 of the canonical JSON."""
    return hashlib.sha256(canonical_json(config_dict).encode()).hexdigest()[:length]


def empty_frame() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                         zip(COLUMNS, ["string", "int64", "string", "string", "string", "float64"])})


@dataclass
class Run:
    """One training run.

    Attributes:
        run_id: stable hash of the config (same config -> same id).
        config: the config as a plain dict (``TrainConfig.to_dict()``).
        status: one of ``finished``, ``diverged``, ``cancelled``, ``failed``.
        frame: tidy rows ``run_id, step, probe, metric, layer, value`` (+ probe budget columns).
        error: the error message of a failed run.
        diverged_step: the step whose loss was NaN/inf, for a diverged run.
        model, dataset: the live objects after training (the model's weights are stored, see
            :meth:`RunStore.restore <workbench.store.RunStore.restore>`).
        weights: the model's ``state_dict`` on the CPU, where the run comes back without its
            model (from a training process); the store saves it like the model's.
        finals: the final values :meth:`summary` reports (``final_loss``, ``test_accuracy``) as
            the store saved them, for a run read without its rows (``rows=False``).
    """

    run_id: str
    config: dict
    status: str
    frame: pd.DataFrame = field(default_factory=empty_frame)
    error: str | None = None
    diverged_step: int | None = None
    steps_done: int = 0
    wall_time: float = 0.0
    started_at: str = ""
    meta: dict = field(default_factory=dict)
    model: Any = field(default=None, repr=False, compare=False)
    dataset: Any = field(default=None, repr=False, compare=False)
    weights: dict | None = field(default=None, repr=False, compare=False)
    finals: dict | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict:
        # weights travel as torch.save bytes: pickled tensors would be handed over in shared
        # memory owned by the sending process (a training process that exits right after)
        state = dict(self.__dict__)
        if state.get("weights") is not None:
            import torch

            buf = io.BytesIO()
            torch.save(state["weights"], buf)
            state["weights"] = buf.getvalue()
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state.get("weights"), bytes):
            import torch

            state["weights"] = torch.load(io.BytesIO(state["weights"]), weights_only=True)
        self.__dict__.update(state)

    def state_dict(self) -> dict | None:
        """The trained weights (parameters and buffers) as CPU tensors of their own, or None."""
        if self.model is None:
            return self.weights
        # clones: the trainer's parameters are views into flat buffers, which torch.save would
        # write whole with every view
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def metric(self, metric: str, probe: str = "train") -> pd.Series:
        """One metric as a Series indexed by step (``run.metric("loss")``)."""
        rows = self.frame[(self.frame.probe == probe) & (self.frame.metric == metric)]
        return rows.set_index("step")["value"].rename(metric)

    def final(self, metric: str = "loss", probe: str = "train") -> float:
        s = self.metric(metric, probe)
        return float(s.iloc[-1]) if len(s) else float("nan")

    def final_values(self) -> dict:
        """The final values :meth:`summary` reports: from the rows, or as stored (``finals``)
        where the run was read without them."""
        if len(self.frame) or self.finals is None:
            return {"final_loss": self.final("loss"), "test_accuracy": self.final("accuracy", "eval")}
        return {k: float(self.finals.get(k, "nan")) for k in ("final_loss", "test_accuracy")}

    def summary(self) -> dict:
        """One line of facts about the run, as shown by ``python -m workbench runs``."""
        m = self.config.get("model", {})
        out = {"run_id": self.run_id, "label": self.meta.get("label", ""),
               "status": self.status, "model": m.get("kind"),
               "norm": m.get("norm"), "dataset": self.config.get("data", {}).get("name"),
               "optimizer": self.config.get("optimizer"), "batch_size": self.config.get("batch_size"),
               "lr": self.config.get("lr"), "seed": self.config.get("seed"),
               "steps": self.steps_done, **self.final_values(), "wall_time": round(self.wall_time, 3),
               "started_at": self.started_at}
        return out

    def meta_dict(self) -> dict:
        return {"run_id": self.run_id, "status": self.status, "error": self.error,
                "diverged_step": self.diverged_step, "steps_done": self.steps_done,
                "wall_time": self.wall_time, "started_at": self.started_at, **self.meta}
