"""Loss-landscape slices (frames from ``probes.landscape``): a line, a contour, a surface.

Rows: ``metric == "loss"``, coordinates ``alpha`` and ``beta`` (NaN for a 1-D slice).
"""
from __future__ import annotations

import pandas as pd

from .curves import MARGIN


def _grid(frame: pd.DataFrame):
    rows = frame[frame["metric"] == "loss"]
    grid = rows.pivot_table(index="beta", columns="alpha", values="value")
    return grid.columns.to_numpy(), grid.index.to_numpy(), grid.to_numpy()


def line_figure(frame: pd.DataFrame, name: str = "loss"):
    """Loss along one direction (``alpha``), the trained weights at 0."""
    import plotly.graph_objects as go

    rows = frame[frame["metric"] == "loss"]
    if rows["beta"].notna().any():  # a plane: its beta = 0 line (nearest)
        b0 = rows["beta"].abs().min()
        rows = rows[rows["beta"].abs() == b0]
    rows = rows.sort_values("alpha")
    fig = go.Figure(go.Scatter(x=rows["alpha"], y=rows["value"], mode="lines+markers", name=name))
    fig.update_layout(title="1-D slice", xaxis_title="α (step along direction 1)",
                      yaxis_title="loss", template="plotly_white", margin=MARGIN)
    return fig


def contour_figure(frame: pd.DataFrame):
    import plotly.graph_objects as go

    x, y, z = _grid(frame)
    fig = go.Figure(go.Contour(x=x, y=y, z=z, colorscale="Viridis", contours={"showlabels": True},
                               colorbar={"title": "loss"}))
    fig.add_trace(go.Scatter(x=[0], y=[0], mode="markers", marker={"symbol": "star", "size": 12,
                                                                   "color": "white"},
                             name="trained weights"))
    fig.update_layout(title="2-D slice", xaxis_title="α", yaxis_title="β",
                      template="plotly_white", margin=MARGIN, showlegend=False)
    return fig


def surface_figure(frame: pd.DataFrame):
    import plotly.graph_objects as go

    x, y, z = _grid(frame)
    fig = go.Figure(go.Surface(x=x, y=y, z=z, colorscale="Viridis", showscale=False))
    fig.update_layout(title="3-D surface", template="plotly_white", margin=MARGIN,
                      scene={"xaxis_title": "α", "yaxis_title": "β", "zaxis_title": "loss"})
    return fig
