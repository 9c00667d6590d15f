"""Sweeps: grids of runs (``Sweep``), executors (serial, local processes, Dask) and analyses.

    from workbench.sweeps import Sweep, run_sweep
    result = run_sweep(Sweep.from_yaml("sweeps/critical_batch.yaml"), store="data/runs")
"""
from .executors import EXECUTORS, make_executor
from .runner import SweepResult, run_sweep
from .sweep import Sweep, valid_fields

__all__ = ["EXECUTORS", "Sweep", "SweepResult", "make_executor", "run_sweep", "valid_fields"]
