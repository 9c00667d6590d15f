"""Training curves: a metric against step, one line per run (or per any column), from a tidy frame.

Frames have the columns ``run_id, step, probe, metric, layer, value`` (see ``workbench.store``).
Plotly is imported inside each function so importing this module costs nothing.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd

DIVERGED_SYMBOL = "x"
DIVERGED_COLOR = "crimson"
MARGIN = {"l": 60, "r": 20, "t": 50, "b": 50}


def _finite_last(steps: Sequence[float], values: Sequence[float]) -> tuple[float, float] | None:
    """The last step and the last finite value before it (a diverged run ends in NaN/inf)."""
    if len(steps) == 0:
        return None
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(steps[-1]), (finite[-1] if finite else float("nan"))


def diverged_marker(step: float, value: float, *, name: str = "diverged", showlegend: bool = True):
    """A red ``x`` at ``(step, value)``: where a run's loss stopped being finite.

    Args:
        step: the step whose loss was NaN/inf.
        value: the y to draw it at, usually the last finite value of the curve.
    """
    import plotly.graph_objects as go

    return go.Scatter(x=[step], y=[value], mode="markers", name=name, showlegend=showlegend,
                      marker={"symbol": DIVERGED_SYMBOL, "size": 14, "color": DIVERGED_COLOR,
                              "line": {"width": 2, "color": DIVERGED_COLOR}},
                      hovertemplate=f"{name} at step %{{x}}<extra></extra>")


def check_smoothing(weight: float) -> None:
    """A ValueError unless ``weight`` is an EMA weight in [0, 1)."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {weight!r}")


class RunningEma:
    """TensorBoard's smoothing, one value at a time: a debiased exponential moving average,
    ``m_k = weight * m_{k-1} + (1 - weight) * v_k`` shown as ``m_k / (1 - weight**k)`` (so the
    first point is the first value, not a fraction of it); ``weight`` 0 passes values through.
    Feed it finite values only (the dashboards' streaming curves, :func:`smooth_ema`)."""

    def __init__(self, weight: float):
        check_smoothing(weight)
        self.weight, self._m, self._n = float(weight), 0.0, 0

    def __call__(self, value: float) -> float:
        w = self.weight
        self._m, self._n = w * self._m + (1 - w) * value, self._n + 1
        return self._m / (1 - w ** self._n)


class SmoothedCurve:
    """A metric as it streams in: steps, raw values and their :class:`RunningEma` (what the
    dashboards draw), smoothed one point at a time and again in full when the weight changes."""

    __slots__ = ("xs", "ys", "drawn", "_ema")

    def __init__(self, smoothing: float):
        self.xs: list[int] = []
        self.ys: list[float] = []
        self.drawn: list[float] = []
        self._ema = RunningEma(smoothing)

    def add(self, x: int, y: float) -> None:
        self.xs.append(x)
        self.ys.append(y)
        self.drawn.append(self._ema(y))

    def resmooth(self, smoothing: float) -> None:
        self._ema = RunningEma(smoothing)
        self.drawn = [self._ema(y) for y in self.ys]


def smoothed_title(metric: str, smoothing: float) -> str:
    """``"loss (smoothed: EMA 0.9)"``, or the bare name without smoothing."""
    return f"{metric} (smoothed: EMA {smoothing:g})" if smoothing else metric


def smooth_ema(values: Sequence[float], weight: float) -> list[float | None]:
    """:class:`RunningEma` over ``values``; NaN/inf values are skipped and come back as ``None``
    (a gap); ``weight`` 0 returns the values unchanged."""
    ema = RunningEma(weight)
    return [ema(v) if math.isfinite(v) else None for v in map(float, values)]


def metric_curves(frame: pd.DataFrame, metric: str = "loss", probe: str = "train",
                  color: str = "run_id", log_y: bool = False,
                  status: Mapping[str, str] | None = None, title: str | None = None,
                  smoothing: float = 0.0):
    """One line per value of ``color`` for ``metric`` against ``step``.

    Args:
        frame: tidy rows (``run_id, step, probe, metric, layer, value``; extra columns such as a
            run's ``norm`` or ``batch_size`` can be merged in and used as ``color``).
        metric: which metric to draw (``loss``, ``accuracy``, ``grad_norm`` ...).
        probe: which probe's rows (``train`` for per-step training rows, ``eval`` for test set).
        color: the column that splits lines. Per-layer metrics (more than one ``layer``) get one
            line per (``color``, ``layer``).
        log_y: logarithmic y axis (non-positive values are dropped by plotly).
        status: ``{run_id: status}``; runs whose status is ``diverged`` get a red ``x`` at their
            last step, drawn at the last finite value.
        title: figure title; defaults to ``"<metric> (<probe>)"``.
        smoothing: weight in [0, 1) of :func:`smooth_ema` (as TensorBoard's slider). Above 0
            each line is drawn smoothed, over its raw values in the same colour, faint and
            without a legend entry of its own; 0 draws the raw values only.

    Returns:
        A ``plotly.graph_objects.Figure``.
    """
    import plotly.colors
    import plotly.graph_objects as go

    check_smoothing(smoothing)
    palette = plotly.colors.qualitative.Plotly
    for col in ("step", "probe", "metric", "value", color):
        if col not in frame.columns:
            raise ValueError(f"frame has no column {col!r}; columns: {', '.join(map(str, frame.columns))}")
    rows = frame[(frame["probe"] == probe) & (frame["metric"] == metric)]
    keys = [color]
    if "layer" in rows.columns and color != "layer" and rows["layer"].fillna("").nunique() > 1:
        keys.append("layer")
    fig = go.Figure()
    groups = rows.sort_values("step", kind="stable").groupby(keys, sort=True, dropna=False)
    for k, (key, group) in enumerate(groups):
        key = key if isinstance(key, tuple) else (key,)
        name = " / ".join(str(k) for k in key if pd.notna(k) and k != "") or metric
        x, values = group["step"].tolist(), group["value"].astype(float).tolist()
        # NaN/inf are not JSON: show them as gaps, the diverged marker says what happened.
        raw = [v if math.isfinite(v) else None for v in values]
        line = {"color": palette[k % len(palette)]}
        if smoothing:
            fig.add_trace(go.Scatter(x=x, y=raw, mode="lines", name=f"{name} (raw)", line=line,
                                     opacity=0.25, legendgroup=name, showlegend=False,
                                     hoverinfo="skip"))
            fig.add_trace(go.Scatter(x=x, y=smooth_ema(values, smoothing), mode="lines",
                                     name=name, line=line, legendgroup=name))
        else:
            fig.add_trace(go.Scatter(x=x, y=raw, mode="lines", name=name, line=line))
    if status:
        shown = False
        for run_id, group in rows.sort_values("step", kind="stable").groupby("run_id", sort=True):
            if status.get(run_id) != "diverged":
                continue
            last = _finite_last(group["step"].tolist(), group["value"].astype(float).tolist())
            if last is not None:
                fig.add_trace(diverged_marker(*last, name="diverged", showlegend=not shown))
                shown = True
    fig.update_layout(title=title or f"{metric} ({probe})", xaxis_title="step", yaxis_title=metric,
                      template="plotly_white", margin=MARGIN,
                      legend_title_text=" / ".join(keys))
    if log_y:
        set_log_y(fig)
    return fig


def live_loss_figure(title: str = "training loss", log_y: bool = True):
    """The figure the live dashboard streams into, empty to start with: trace 0 is the training
    loss, trace 1 (dashed, with markers) the test loss at each evaluation."""
    import plotly.graph_objects as go

    fig = go.Figure([go.Scatter(x=[], y=[], mode="lines", name="training loss"),
                     go.Scatter(x=[], y=[], mode="lines+markers", name="test loss",
                                line={"dash": "dash"}, marker={"size": 6})])
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="loss", template="plotly_white",
                      margin=MARGIN, uirevision="live", legend={"orientation": "h", "y": -0.2})
    if log_y:
        set_log_y(fig)
    return fig


def set_log_y(fig, log: bool = True, **axis) -> None:
    """Make every y axis of ``fig`` logarithmic (``log``) or linear, with ``axis`` options.

    A log axis asks for about 3 ticks: on a short plot spanning a decade or so, plotly's own choice
    labels every digit (1, 2, 3, ... 9 in each decade), and 7, 8 and 9 print over each other. With 3
    it labels 1, 2 and 5 per decade, whole decades over a wider span, and plain values within one
    decade. A linear axis gets plotly's automatic count back."""
    fig.update_yaxes(type="log" if log else "linear", nticks=3 if log else 0, **axis)


def labelled_hline(fig, value: float, text: str, *, dash: str = "dash"):
    """A horizontal line at ``value`` across the plot, labelled ``text`` at its right end.

    Call it once the y axis type is set: on a log axis plotly places a shape by its value but an
    annotation by the value's log10 (plotly.js#6880), so ``fig.add_hline(annotation_text=...)``
    puts the label of a line at 2 at 10**2. Non-positive values on a log axis get no label."""
    fig.add_hline(y=value, line_dash=dash)
    log = fig.layout.yaxis.type == "log"
    if log and not value > 0:
        return fig
    fig.add_annotation(x=1, xref="x domain", xanchor="right", yanchor="bottom", showarrow=False,
                       y=math.log10(value) if log else value, yref="y", text=text)
    return fig
