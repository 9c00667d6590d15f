"""Hessian spectra against batch size (frames from ``probes.hessian_vs_batch_size``) as figures.

Rows: per mini-batch size ``B`` (column ``batch_size``) ``lambda_max_mean``/``_std``,
``trace_mean``, ``lr_max_sgd``; the full data (``batch_size == N``) ``lambda_max``, ``trace``;
the fit ``fit_lambda_full``, ``fit_c`` of ``lambda_max = a + c / B``; ``density`` rows with an
``eigenvalue`` column.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .curves import MARGIN


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
        # 1e-4, not plotly's SI default "100μ"
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
    if np.isfinite(full):
        fig.add_hline(y=full, line_dash="dash", annotation_text=f"full data {full:.3g}")
    _layout(fig, "λ_max vs batch size", "batch size B", "λ_max")
    # log y where everything drawn is positive: λ_max spans decades between B=8 and the full
    # data, and the fit (on relative residuals) is judged on this scale
    values = np.concatenate([*drawn, [full] if np.isfinite(full) else []])
    if len(values) and (values > 0).all():
        fig.update_yaxes(type="log")
    return fig


def stable_lr_figure(frame: pd.DataFrame):
    """The implied largest stable SGD learning rate ``2 / lambda_max`` against B."""
    import plotly.graph_objects as go

    lr = _metric(frame, "lr_max_sgd")
    fig = go.Figure(go.Scatter(x=lr["batch_size"], y=lr["value"], mode="markers+lines",
                               name="2 / λ_max"))
    _layout(fig, "largest stable SGD learning rate", "batch size B", "2 / λ_max")
    fig.update_yaxes(type="log")
    return fig


def trace_figure(frame: pd.DataFrame):
    """Hessian trace against B (mean ± std) and of the full data."""
    import plotly.graph_objects as go

    mean, std = _metric(frame, "trace_mean"), _metric(frame, "trace_std")
    fig = go.Figure(go.Scatter(x=mean["batch_size"], y=mean["value"], mode="markers+lines",
                               name="mini-batch trace",
                               error_y={"type": "data", "array": std["value"].tolist()}))
    full = _scalar(frame, "trace")
    if np.isfinite(full):
        fig.add_hline(y=full, line_dash="dash", annotation_text=f"full data {full:.3g}")
    return _layout(fig, "Hessian trace vs batch size", "batch size B", "trace")
