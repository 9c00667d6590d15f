"""``python -m workbench sweep FILE.yaml``: run a sweep file, then print its analyses.

Registered by :mod:`workbench.cli` through :func:`add_sweep_parser` and :func:`run_sweep_command`.
"""
from __future__ import annotations

import argparse
import sys

from .executors import EXECUTORS

SHOW = 20  # rows of the final-loss table printed; analysis.final_metric_table has them all


def add_sweep_parser(subparsers) -> argparse.ArgumentParser:
    s = subparsers.add_parser("sweep", help="run a sweep file (resumable), then print its analyses")
    s.add_argument("file", help="sweep YAML file, e.g. sweeps/critical_batch.yaml")
    s.add_argument("--executor", default="local", help=f"{', '.join(EXECUTORS)} (default: local)")
    s.add_argument("--scheduler", default=None, help="Dask scheduler address, e.g. tcp://host:8786")
    s.add_argument("--workers", type=int, default=None,
                   help="local processes or LocalCluster workers (default: CPU count)")
    s.add_argument("--store", default="data/runs")
    s.add_argument("--retry-failed", action="store_true", help="train runs stored as failed again")
    s.add_argument("--dry-run", action="store_true", help="list the runs and what is stored; train nothing")
    s.add_argument("--no-progress", action="store_true")
    return s


def _print_analyses(sweep, store: str, run_ids: list[str]) -> None:
    import pandas as pd

    from . import analysis

    opts = sweep.analysis
    by = opts.get("by", ["model.norm"])
    table = analysis.runs_table(store, run_ids, target_loss=opts.get("target_loss"),
                                target_probe=opts.get("target_probe", "train"))
    if table.empty:
        return
    with pd.option_context("display.width", 160, "display.max_columns", None):
        fmt = lambda v: f"{v:.4g}"  # noqa: E731
        final = analysis.final_metric_table(table).sort_values("mean", ignore_index=True)
        more = f" (the best {SHOW} of {len(final)} configs)" if len(final) > SHOW else ""
        print(f"\nfinal train loss (mean of each run's last 5 steps) over seeds{more}:")
        print(final.head(SHOW).to_string(index=False, float_format=fmt))
        if "target_loss" in opts and table["batch_size"].nunique() > 1:
            steps = analysis.steps_vs_batch(table, by=by)
            print(f"\nsteps to {opts.get('target_probe', 'train')} loss {opts['target_loss']} vs batch size "
                  f"(best lr per batch size):")
            print(steps.to_string(index=False, float_format=fmt))
            print("\ncritical batch size, fit of (S/S_min - 1)(E/E_min - 1) = 1:")
            print(analysis.critical_batch(steps, by=by).to_string(index=False, float_format=fmt))
        if "lr" in table and table["lr"].nunique() > 2 and table["batch_size"].nunique() > 1:
            _, fits = analysis.best_lr_vs_batch(table, by=opts.get("lr_by", ["optimizer"]))
            print("\nbest lr vs batch size, lr* = c * B**k:")
            print(fits.to_string(index=False, float_format=fmt))


def run_sweep_command(a) -> int:
    """Run the sweep named by the parsed arguments; 0 when every run ended, 1 if some failed."""
    from ..store import RunStore
    from .runner import _stored_status, run_sweep
    from .sweep import Sweep

    sweep = Sweep.from_yaml(a.file)
    if a.workers is not None and a.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {a.workers}")
    if a.dry_run:
        store = RunStore(a.store)
        configs = sweep.configs()
        stored = [_stored_status(store, c.run_id) for c in configs]
        for cfg, status in zip(configs, stored):
            print(f"{cfg.run_id}  {status or 'to run':9s}  {cfg.model.kind}/{cfg.model.norm} "
                  f"B={cfg.batch_size} lr={cfg.lr} seed={cfg.seed}")
        print(f"{len(configs)} runs, {sum(s is None for s in stored)} not stored")
        return 0
    try:
        result = run_sweep(sweep, a.store, a.executor, workers=a.workers, scheduler=a.scheduler,
                           retry_failed=a.retry_failed, progress=not a.no_progress)
    except RuntimeError as exc:  # the executor itself broke (workers cannot start, lost scheduler)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(result.summary())
    if result.interrupted:
        return 130
    _print_analyses(sweep, a.store, result.run_ids)
    return 1 if result.counts.get("failed") else 0
