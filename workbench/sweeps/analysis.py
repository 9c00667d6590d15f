"""Analyses of a stored sweep: steps to a target vs batch size, the critical batch size, the best
learning rate vs batch size, and final-metric tables over seeds. Frames in, frames out; no plots.

The critical batch size follows McCandlish et al., "An Empirical Model of Large-Batch Training":
with S the optimizer steps and E = B*S the examples needed to reach a target loss,
``(S/S_min - 1)(E/E_min - 1) = 1``, equivalently ``S(B) = S_min + E_min/B``, and
``B_crit = E_min/S_min``: below it, doubling the batch nearly halves the steps; above it, it
nearly doubles the examples.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..store import RunStore


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


def steps_to_target(frame: pd.DataFrame, target: float, *, metric: str = "loss", probe: str = "train",
                    window: int = 5) -> pd.DataFrame:
    """First step at which a run's metric, averaged over ``window`` steps, is at most ``target``.

    Args:
        frame: tidy rows (``RunStore.load()``), several runs.
        target: the loss to reach.
        window: trailing mean over this many steps (mini-batch losses are noisy).

    Returns:
        One row per run: ``run_id, steps_to_target, examples_to_target`` (NaN: never reached).
        ``steps_to_target`` counts updates; examples come from the ``examples`` metric.
    """
    rows = frame[(frame.probe == probe) & (frame.metric == metric)]
    examples = frame[(frame.probe == "train") & (frame.metric == "examples")].set_index(["run_id", "step"])["value"]
    out = []
    for run_id, r in rows.groupby("run_id", sort=True):
        r = r.sort_values("step")
        smooth = r["value"].astype(float).rolling(window, min_periods=window).mean()
        hit = np.flatnonzero((smooth <= target).to_numpy())
        if len(hit):
            # a train row at step s is the loss before update s+1; an eval row at step s follows s updates
            updates = int(r["step"].iloc[hit[0]]) + (probe == "train")
            out.append((run_id, updates, float(examples.get((run_id, updates - 1), np.nan))))
        else:
            out.append((run_id, np.nan, np.nan))
    return pd.DataFrame(out, columns=["run_id", "steps_to_target", "examples_to_target"])


def runs_table(store: RunStore | str, run_ids=None, *, target_loss: float | None = None,
               target_probe: str = "train", window: int = 5) -> pd.DataFrame:
    """One row per stored run: status, config fields as dotted columns, final metrics.

    Columns: ``run_id, status, error, steps_done`` + ``model.norm, batch_size, lr, ...`` +
    ``final_train_loss`` (mean of the last ``window`` steps; NaN/inf for a run that diverged
    in them), ``final_eval_loss``,
    ``final_eval_accuracy`` and, with ``target_loss``, ``steps_to_target, examples_to_target``
    (:func:`steps_to_target` on the ``target_probe`` loss: ``train``, smoothed over ``window``
    steps, or ``eval``, the test loss every ``eval_every`` steps, unsmoothed).

    Note:
        Reads every run's rows once: about a millisecond per small run.
    """
    store = store if isinstance(store, RunStore) else RunStore(store)
    rows, frames = [], []
    for run in store.runs(run_ids):  # the stored ones, read safely while others write
        row = {"run_id": run.run_id, "status": run.status, "error": run.error, "steps_done": run.steps_done,
               **_flatten(run.config)}
        loss = run.metric("loss")
        # NaN/inf kept (skipna=False): a diverged run's last loss is, and it must not rank as
        # the mean of its finite steps before it
        row["final_train_loss"] = float(loss.iloc[-window:].mean(skipna=False)) if len(loss) else np.nan
        row["final_eval_loss"] = run.final("loss", "eval")
        row["final_eval_accuracy"] = run.final("accuracy", "eval")
        rows.append(row)
        frames.append(run.frame)
    table = pd.DataFrame(rows)
    if target_loss is not None and len(table):
        frame = pd.concat([f for f in frames if len(f)], ignore_index=True)
        reached = steps_to_target(frame, target_loss, probe=target_probe,
                                  window=window if target_probe == "train" else 1)
        table = table.merge(reached, on="run_id", how="left")
    return table


def _varying(table: pd.DataFrame, exclude) -> list[str]:
    skip = {"run_id", "status", "error", "steps_done", "seed", *exclude}
    metrics = {c for c in table if c.startswith(("final_", "steps_to", "examples_to"))}
    return [c for c in table if c not in skip | metrics and table[c].astype(str).nunique() > 1]


def final_metric_table(table: pd.DataFrame, metric: str = "final_train_loss", by=None) -> pd.DataFrame:
    """Mean and spread of ``metric`` over seeds for each config.

    Args:
        by: grouping columns; default every config column that varies, except ``seed``.

    Returns:
        ``by`` columns + ``mean, std, sem, min, max, n`` (finished or diverged runs with a finite
        value) and ``n_runs, n_diverged, n_failed``.
    """
    by = list(by) if by is not None else _varying(table, ())
    rows = []
    for key, g in table.groupby(by, sort=True, dropna=False) if by else [((), table)]:
        v = g[metric].astype(float)
        v = v[np.isfinite(v) & g.status.isin(["finished", "diverged"])]
        n = len(v)
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))),
                     "mean": v.mean() if n else np.nan, "std": v.std(ddof=1) if n > 1 else np.nan,
                     "sem": v.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan,
                     "min": v.min() if n else np.nan, "max": v.max() if n else np.nan, "n": n,
                     "n_runs": len(g), "n_diverged": int((g.status == "diverged").sum()),
                     "n_failed": int((g.status == "failed").sum())})
    return pd.DataFrame(rows)


def _best(table: pd.DataFrame, metric: str, by: list[str], tune: list[str]) -> pd.DataFrame:
    """Per ``by + [batch_size]``: mean of ``metric`` over seeds per ``tune`` value, then the best."""
    t = table.copy()
    # diverged, failed or never reached: the worst value
    t[metric] = t[metric].astype(float).where(t.status == "finished", np.inf).fillna(np.inf)
    keys = by + ["batch_size"]
    mean = t.groupby(keys + tune, dropna=False)[metric].agg(["mean", "size"]).reset_index()
    idx = mean.groupby(keys, dropna=False)["mean"].idxmin()
    best = mean.loc[idx].rename(columns={"mean": metric, "size": "n_seeds"}).reset_index(drop=True)
    for col in tune:  # flag optima on the edge of the tuned grid: the true optimum may lie outside
        edges = t.groupby(keys, dropna=False)[col].agg(["min", "max"]).reset_index()
        best = best.merge(edges, on=keys, how="left")
        best[f"{col}_at_edge"] = (best[col] == best["min"]) | (best[col] == best["max"])
        best = best.drop(columns=["min", "max"])
    return best.sort_values(keys, ignore_index=True)


def steps_vs_batch(table: pd.DataFrame, by=("model.norm",), tune=("lr",)) -> pd.DataFrame:
    """Steps and examples to the target loss vs batch size, per strategy, at the best ``tune`` value.

    Args:
        table: :func:`runs_table` with ``target_loss`` set.
        by: columns that name a strategy (norm, optimizer, lr scaling ...).
        tune: columns minimized over (mean over seeds first), as the paper tunes the lr per B.

    Returns:
        ``by, batch_size, <tune>, steps_to_target, examples_to_target, n_seeds`` (inf: no run reached it).
    """
    by, tune = [c for c in by if c in table], [c for c in tune if c in table]
    best = _best(table, "steps_to_target", by, tune)
    best["examples_to_target"] = best["steps_to_target"] * best["batch_size"]
    return best


@dataclass(frozen=True)
class CriticalBatchFit:
    """``S(B) = s_min + e_min / B``; ``b_crit = e_min / s_min``; ``rel_rmse`` of the fitted steps."""

    s_min: float
    e_min: float
    b_crit: float
    rel_rmse: float
    n_points: int

    def steps(self, batch_size) -> np.ndarray:
        return self.s_min + self.e_min / np.asarray(batch_size, dtype=float)

    def examples(self, batch_size) -> np.ndarray:
        return self.steps(batch_size) * np.asarray(batch_size, dtype=float)


def fit_critical_batch(batch_sizes, steps) -> CriticalBatchFit:
    """Fit ``(S/S_min - 1)(E/E_min - 1) = 1`` to steps-to-target ``steps`` at ``batch_sizes``.

    The relation is linear in the unknowns, ``S = S_min + E_min * (1/B)``; it is solved by least
    squares on relative residuals ``(S_i - S(B_i)) / S_i`` so small and large batches weigh alike.
    Points with a non-finite step count (target never reached) are dropped.

    Returns:
        A :class:`CriticalBatchFit`; ``b_crit`` is NaN when fewer than two batch sizes remain or
        the steps do not fall with the batch size (no knee in range).
    """
    B = np.asarray(batch_sizes, dtype=float)
    S = np.asarray(steps, dtype=float)
    keep = np.isfinite(B) & np.isfinite(S) & (B > 0) & (S > 0)
    B, S = B[keep], S[keep]
    if len(np.unique(B)) < 2:
        return CriticalBatchFit(np.nan, np.nan, np.nan, np.nan, len(B))
    A = np.stack([np.ones_like(B), 1.0 / B], axis=1) / S[:, None]  # (n, 2), rows scaled by 1/S_i
    (s_min, e_min), *_ = np.linalg.lstsq(A, np.ones_like(S), rcond=None)
    rel_rmse = float(np.sqrt(np.mean((A @ np.array([s_min, e_min]) - 1.0) ** 2)))
    b_crit = e_min / s_min if s_min > 0 and e_min > 0 else np.nan
    return CriticalBatchFit(float(s_min), float(e_min), float(b_crit), rel_rmse, len(B))


def critical_batch(steps_table: pd.DataFrame, by=("model.norm",)) -> pd.DataFrame:
    """:func:`fit_critical_batch` per strategy of a :func:`steps_vs_batch` table.

    Returns:
        ``by, s_min, e_min, b_crit, rel_rmse, n_points``.
    """
    by = [c for c in by if c in steps_table]
    groups = steps_table.groupby(by, sort=True, dropna=False) if by else [((), steps_table)]
    rows = []
    for key, g in groups:
        fit = fit_critical_batch(g["batch_size"], g["steps_to_target"])
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), **fit.__dict__})
    return pd.DataFrame(rows)


def fit_power_law(x, y) -> tuple[float, float]:
    """``y = c * x**k`` by least squares in log-log; returns ``(k, c)`` (NaN with < 2 points)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if len(np.unique(x[keep])) < 2:
        return np.nan, np.nan
    k, logc = np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)
    return float(k), float(np.exp(logc))


def best_lr_vs_batch(table: pd.DataFrame, metric: str = "final_train_loss", by=("optimizer",)):
    """The learning rate with the lowest ``metric`` (mean over seeds) at each batch size.

    Args:
        table: :func:`runs_table`; diverged and failed runs count as the worst value.
        metric: what the best lr minimizes (``final_train_loss``, ``steps_to_target`` ...).
        by: strategy columns (usually ``optimizer``).

    Returns:
        ``(best, fits)``: ``best`` has ``by, batch_size, lr, <metric>, n_seeds, lr_at_edge``;
        ``fits`` has ``by, exponent, prefactor, n_points, n_at_edge`` from ``lr* = c * B**k``
        (k near 1: linear scaling; near 0.5: square-root scaling).
    """
    by = [c for c in by if c in table]
    best = _best(table, metric, by, ["lr"])
    rows = []
    for key, g in best.groupby(by, sort=True, dropna=False) if by else [((), best)]:
        ok = g[np.isfinite(g[metric].astype(float))]
        k, c = fit_power_law(ok["batch_size"], ok["lr"])
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "exponent": k,
                     "prefactor": c, "n_points": len(ok), "n_at_edge": int(ok["lr_at_edge"].sum())})
    return best, pd.DataFrame(rows)
