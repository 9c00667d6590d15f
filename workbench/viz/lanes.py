"""Side-by-side runs ("lanes"): one line per run for a metric, and probe summaries per step.

The dashboards stream into these figures: trace ``i`` belongs to lane ``i``, so a refresh sets
``fig.data[i].x/y`` in place. Plotly is imported inside each function.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .curves import MARGIN, set_log_y

LANE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")
# The one number a probe is drawn by in the Arena (the others are in its frame and the store).
HEADLINE = {"hessian_top_eigs": "eigenvalue", "hessian_trace": "trace",
            "channel_health": "dead_fraction", "depth_variance": "stream_out_variance",
            "smoothness_small": "beta_smoothness", "smoothness": "beta_smoothness",
            "gradient_noise_scale": "b_simple", "layer_norms": "weight_norm"}


def lanes_figure(names: list[str], *, metric: str = "loss", log_y: bool = False,
                 title: str | None = None, height: int | None = None, test: bool = False):
    """An empty figure with one named line per lane (trace ``i`` is lane ``i``).

    ``test``: also a dashed line with markers per lane for its test-set values, trace
    ``len(names) + i`` for lane ``i``, named ``"<lane> (test)"`` and toggled with the lane's line.
    """
    import plotly.graph_objects as go

    colors = [LANE_COLORS[i % len(LANE_COLORS)] for i in range(len(names))]
    traces = [go.Scatter(x=[], y=[], mode="lines", name=n, legendgroup=f"lane{i}",
                         line={"color": c}) for i, (n, c) in enumerate(zip(names, colors))]
    if test:
        traces += [go.Scatter(x=[], y=[], mode="lines+markers", name=f"{n} (test)",
                              legendgroup=f"lane{i}", marker={"size": 6},
                              line={"color": c, "dash": "dash"})
                   for i, (n, c) in enumerate(zip(names, colors))]
    fig = go.Figure(traces)
    fig.update_layout(title=title or metric, xaxis_title="step", yaxis_title=metric,
                      template="plotly_white", margin=MARGIN, uirevision="lanes",
                      legend={"orientation": "h", "y": -0.2}, height=height)
    if log_y:
        set_log_y(fig)
    return fig


def probes_figure(names: list[str], probes: list[str], *, height_per_probe: int = 150):
    """One stacked panel per probe (its :data:`HEADLINE` metric), one line per lane in each.

    Trace ``r * len(names) + i`` is probe ``r``, lane ``i``; only the first panel's lines are in
    the legend. With no probe chosen, one empty panel says so.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = max(len(probes), 1)
    titles = [f"{p}: {HEADLINE.get(p, 'value')}" for p in probes] or ["no probe chosen"]
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, subplot_titles=titles,
                        vertical_spacing=min(0.12, 0.3 / rows))
    for r in range(len(probes)):
        for i, n in enumerate(names):
            fig.add_trace(go.Scatter(x=[], y=[], mode="lines+markers", name=n, legendgroup=n,
                                     showlegend=r == 0, marker={"size": 5},
                                     line={"color": LANE_COLORS[i % len(LANE_COLORS)]}),
                          row=r + 1, col=1)
    fig.update_layout(title="probes (as they arrive)", template="plotly_white", margin=MARGIN,
                      uirevision="lanes", legend={"orientation": "h", "y": -0.2},
                      height=120 + height_per_probe * rows)
    fig.update_xaxes(title_text="step", row=rows, col=1)
    if not probes:
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    return fig


def probe_summary(frame: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """``step, value`` of one probe metric: the whole-model row, or the mean over layers.

    Args:
        frame: a probe's tidy rows with a ``step`` column (several steps allowed).
        metric: which metric; default the probe's :data:`HEADLINE`, else its first metric.
    """
    if frame.empty:
        return pd.DataFrame({"step": [], "value": []})
    if metric is None:
        probe = str(frame["probe"].iloc[0]) if "probe" in frame else ""
        metric = HEADLINE.get(probe)
        if metric not in set(frame["metric"]):
            metric = str(frame["metric"].iloc[0])
    rows = frame[frame["metric"] == metric]
    if "index" in rows and rows["index"].notna().any():  # eigenvalues: the largest
        rows = rows[rows["index"] == 1]
    whole = rows[rows["layer"].fillna("").isin(["", "all"])] if "layer" in rows else rows
    rows = whole if len(whole) else rows
    out = rows.groupby("step", as_index=False)["value"].mean()
    return out.sort_values("step")


def probe_metrics(frame: pd.DataFrame) -> list[str]:
    """``probe: metric`` labels present in a frame of probe rows."""
    if frame.empty:
        return []
    pairs = frame[["probe", "metric"]].drop_duplicates()
    return [f"{p}: {m}" for p, m in pairs.itertuples(index=False)]


def thin(xs, ys, max_points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """At most about ``max_points`` evenly strided points, always keeping the last one.

    A live figure is sent whole on every refresh; thinning keeps each update small (and the
    event loop free for the Stop button) however long the run. The points come back as float64
    numpy arrays, which Bokeh sends as binary buffers: about half the server time per redraw of
    Python lists, time the training thread would otherwise wait for (benchmarks/bench_dashboard.py).
    """
    n = len(xs)
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if n <= max_points:
        return x, y
    stride = -(-n // max_points)
    idx = np.arange(0, n, stride)
    if idx[-1] != n - 1:
        idx = np.append(idx, n - 1)
    return x[idx], y[idx]
