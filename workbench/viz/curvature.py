"""Hessian spectra against batch size (frames from ``probes.hessian_vs_batch_size``) as figures.

Rows: per mini-batch size ``B`` (column ``batch_size``) ``lambda_max_mean``/``_std``,
``trace_mean``, ``lr_max_sgd`` (and ``lr_max_adam``); the full data (``batch_size == N``) ``lambda_max``, ``trace``;
the fit ``fit_lambda_full``, ``fit_c`` of ``lambda_max = a + c / B``; ``density`` rows with an
``eigenvalue`` column.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .curves import MARGIN, labelled_hline, set_log_y


def _metric(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    return frame[frame["metric"] == name].sort_values("batch_size")


def _scalar(frame: pd.DataFrame, name: str) -> float:
    rows = frame[frame["metric"] == name]
    return float(rows["value"].iloc[0]) if len(rows) else float("nan")


def _layout(fig, title, x, y, log_x=True):
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, template="plotly_white",
                      margin=MARGIN, legend={"orientation": "h", "y": -0.25})
    if log_x:
        fig.update_xaxes(type="log")
    return fig


def density_figure(frame: pd.DataFrame, *, floor: float = 1e-5):
    """Overlaid spectral densities, one line per batch size (the full data dashed), on a log
    axis as in Ghorbani et al. and PyHessian: on a linear one the bulk near zero is one spike and
    the outliers, where the batch sizes differ, are invisible. Values below ``floor`` times the
    highest density are drawn at that floor."""
    import plotly.graph_objects as go

    fig = go.Figure()
    rows = frame[frame["metric"] == "density"]
    full = frame["batch_size"].max() if len(frame) else None
    top = float(rows["value"].max()) if len(rows) else float("nan")
    low = top * floor if np.isfinite(top) and top > 0 else None
    for b, group in rows.groupby("batch_size", sort=True):
        group = group.sort_values("eigenvalue")
        y = group["value"].clip(lower=low) if low is not None else group["value"]
        fig.add_trace(go.Scatter(x=group["eigenvalue"], y=y, mode="lines",
                                 name="full data" if b == full else f"B={int(b)}",
                                 line={"dash": "dash"} if b == full else {}))
    if low is not None:
        # 1e-4, not plotly's SI default "100μ"; five decades: plotly's own ticks (one a decade),
        # not set_log_y's three
        fig.update_yaxes(type="log", range=[np.log10(low), np.log10(top) + 0.3],
                         exponentformat="e")
    return _layout(fig, "Hessian spectral density per batch size", "eigenvalue", "density",
                   log_x=False)


def lambda_max_figure(frame: pd.DataFrame):
    """``lambda_max`` of mini-batch Hessians against B (mean ± std), the 1/B fit, the full data."""
    import plotly.graph_objects as go

    mean, std = _metric(frame, "lambda_max_mean"), _metric(frame, "lambda_max_std")
    fig = go.Figure(go.Scatter(x=mean["batch_size"], y=mean["value"], mode="markers+lines",
                               name="mini-batch λ_max",
                               error_y={"type": "data", "array": std["value"].tolist()}))
    a, c = _scalar(frame, "fit_lambda_full"), _scalar(frame, "fit_c")
    drawn = [mean["value"].to_numpy(float)]
    if len(mean) and np.isfinite(a) and np.isfinite(c):
        bs = np.geomspace(mean["batch_size"].min(), frame["batch_size"].max(), 50)
        drawn.append(a + c / bs)
        fig.add_trace(go.Scatter(x=bs, y=drawn[-1], mode="lines", name=f"fit {a:.3g} + {c:.3g}/B",
                                 line={"dash": "dot"}))
    full = _scalar(frame, "lambda_max")
    _layout(fig, "λ_max vs batch size", "batch size B", "λ_max")
    # log y where everything drawn is positive: λ_max spans decades between B=8 and the full
    # data, and the fit (on relative residuals) is judged on this scale
    values = np.concatenate([*drawn, [full] if np.isfinite(full) else []])
    if len(values) and (values > 0).all():
        set_log_y(fig)
    if np.isfinite(full):
        labelled_hline(fig, full, f"full data {full:.3g}")
    return fig


def stable_lr_figure(frame: pd.DataFrame, *, optimizer: str = "sgd", run_lr: float | None = None,
                     run_batch_size: int | None = None, what: str = ""):
    """The implied largest stable learning rate ``k / lambda_max`` against B.

    ``k`` is the optimizer's factor (``probes.hessian_vs_batch_size.stable_lr_factor``: 2 for
    plain gradient descent, 3.8 with heavy-ball momentum 0.9). Drawn: the mini-batch sizes, the
    fitted law ``k / (a + c/B)`` (SGD), the full data as a line and, with ``run_lr``, the run
    itself at its batch size: below the curve, that batch size's curvature is stable at its
    learning rate. ``optimizer="adam"`` draws the Adam-preconditioned rows (``lr_max_adam``).
    ``what`` (e.g. ``"SGD, momentum 0.9"``) goes into the title."""
    import plotly.graph_objects as go

    adam = optimizer in ("adam", "adamw") and (frame["metric"] == "lr_max_adam").any()
    lr_rows, lam_rows = ("lr_max_adam", "adam_lambda_max") if adam else ("lr_max_sgd", "lambda_max")
    full_n = frame["batch_size"].max() if len(frame) else None
    lr = _metric(frame, lr_rows)
    mini, full = lr[lr["batch_size"] != full_n], lr[lr["batch_size"] == full_n]
    lam = _metric(frame, f"{lam_rows}_mean").set_index("batch_size")["value"]
    k = next((float(v * lam[b]) for b, v in zip(mini["batch_size"], mini["value"])
              if b in lam.index and np.isfinite(v) and lam[b] > 0), float("nan"))
    name = f"{k:.3g} / λ_max" if np.isfinite(k) else "lr_max"
    fig = go.Figure(go.Scatter(x=mini["batch_size"], y=mini["value"], mode="markers+lines",
                               name=f"{name} of mini-batches"))
    a, c = _scalar(frame, "fit_lambda_full"), _scalar(frame, "fit_c")
    if not adam and len(mini) and np.isfinite(k) and np.isfinite(a) and np.isfinite(c):
        bs = np.geomspace(mini["batch_size"].min(), full_n, 50)
        law = a + c / bs
        keep = law > 0  # a negative intercept: no stable-rate limit past where the law crosses 0
        fig.add_trace(go.Scatter(x=bs[keep], y=k / law[keep], mode="lines", line={"dash": "dot"},
                                 name=f"{k:.3g} / ({a:.3g} + {c:.3g}/B)"))
    if run_lr is not None and run_batch_size is not None:
        fig.add_trace(go.Scatter(x=[run_batch_size], y=[run_lr], mode="markers",
                                 marker={"symbol": "star", "size": 14},
                                 name=f"this run: B={run_batch_size}, lr={run_lr:g}"))
    title = "largest stable learning rate" + (f" ({what})" if what else "")
    _layout(fig, title, "batch size B", "learning rate")
    set_log_y(fig)
    if len(full) and np.isfinite(full["value"].iloc[0]):
        v = float(full["value"].iloc[0])
        labelled_hline(fig, v, f"full data {v:.3g}")
    return fig


def trace_figure(frame: pd.DataFrame):
    """Hessian trace against B (mean ± std) and of the full data."""
    import plotly.graph_objects as go

    mean, std = _metric(frame, "trace_mean"), _metric(frame, "trace_std")
    fig = go.Figure(go.Scatter(x=mean["batch_size"], y=mean["value"], mode="markers+lines",
                               name="mini-batch trace",
                               error_y={"type": "data", "array": std["value"].tolist()}))
    full = _scalar(frame, "trace")
    _layout(fig, "Hessian trace vs batch size", "batch size B", "trace")
    if np.isfinite(full):
        labelled_hline(fig, full, f"full data {full:.3g}")
    return fig
