"""Per-block quantities over training (frames from ``probes.depth_variance``): heatmaps and lines.

Rows: ``step``, ``metric`` (``stream_out_variance``, ``grad_norm`` ...), ``layer`` (``blocks.i``).
"""
from __future__ import annotations

import pandas as pd

from .curves import MARGIN, set_log_y


def _block(layer: str) -> int:
    try:
        return int(str(layer).rsplit(".", 1)[-1])
    except ValueError:
        return -1


def depth_heatmap(frame: pd.DataFrame, metric: str = "stream_out_variance", title: str = ""):
    """Block (y) by step (x), colored by ``metric`` (log10 when every value is positive)."""
    import numpy as np
    import plotly.graph_objects as go

    rows = frame[frame["metric"] == metric].assign(block=lambda f: f["layer"].map(_block))
    grid = rows.pivot_table(index="block", columns="step", values="value")
    z = grid.to_numpy()
    log = bool(len(rows)) and (rows["value"] > 0).all()
    fig = go.Figure(go.Heatmap(x=grid.columns, y=grid.index, z=np.log10(z) if log else z,
                               colorscale="Viridis",
                               colorbar={"title": f"log10 {metric}" if log else metric}))
    fig.update_layout(title=title or metric, xaxis_title="step", yaxis_title="block",
                      template="plotly_white", margin=MARGIN)
    return fig


def depth_lines(frames: dict[str, pd.DataFrame], metric: str = "stream_out_variance"):
    """``metric`` against block at the last measured step, one line per variant (a log axis
    when every value drawn is positive: the skip-loss increase can be negative)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    positive = True
    for name, frame in frames.items():
        rows = frame[frame["metric"] == metric]
        if rows.empty:
            continue
        last = rows[rows["step"] == rows["step"].max()].assign(block=lambda f: f["layer"].map(_block))
        last = last.sort_values("block")
        positive &= bool((last["value"] > 0).all())
        fig.add_trace(go.Scatter(x=last["block"], y=last["value"], mode="lines+markers", name=name))
    fig.update_layout(title=f"{metric} by block (latest step)", xaxis_title="block",
                      yaxis_title=metric, template="plotly_white", margin=MARGIN,
                      legend={"orientation": "h", "y": -0.25})
    fig.update_xaxes(tickmode="linear", tick0=0, dtick=1)  # blocks are whole numbers
    set_log_y(fig, positive)
    return fig
