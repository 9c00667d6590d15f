"""Runs: every stored run in a table; filter, compare curves, export the selection.

State in :class:`RunBrowser`: ``query`` is matched as plain text (never evaluated) against each
run's id, model, norm, data set, optimizer and status; ``selected`` run ids are drawn with
:func:`~workbench.viz.curves.metric_curves`; the export buttons stream CSV or Parquet of the
selected rows to the browser (no path on the server is ever typed).
"""
from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import panel as pn
import param
from bokeh.models.widgets.tables import NumberFormatter

from ..store import RunStore
from ..store.run import STATUSES
from ..viz.curves import metric_curves
from ._session import Form, SessionApp, page, plotly_pane

SEARCHED = ("run_id", "label", "model", "norm", "dataset", "optimizer", "status")
MAX_QUERY = 100
# the table's column order: what tells runs apart and how they ended first, bookkeeping last
COLUMNS = ("run_id", "status", "final_loss", "test_accuracy", "label", "model", "norm", "dataset",
           "optimizer", "batch_size", "lr", "steps", "seed", "wall_time", "started_at")


LEGEND_LABEL = 40  # characters of a run's label in the compare plot's legend


def _run_name(run_id: str, label: str, cut: int | None = None) -> str:
    """``"<run_id> · <label>"`` (the label cut at ``cut`` characters), the bare id without one."""
    if cut is not None and len(label) > cut:
        label = label[:cut - 1] + "…"
    return f"{run_id} · {label}" if label else run_id


def _label(row) -> str:
    """A run in the compare list: its id, its Arena lane name (when it has one), what it trained."""
    return (f"{_run_name(row.run_id, row.label)} · {row.model}/{row.norm} B={row.batch_size} "
            f"{row.optimizer} · {row.status}")


class RunBrowser(SessionApp):
    """Browse, compare and export stored runs; one instance per browser session."""

    query = param.String(default="", label="Filter (text in id, name, model, norm, data, optimizer)")
    status_filter = param.Selector(objects=["any", *STATUSES], default="any", label="Status")
    selected = param.ListSelector(default=[], objects=[], label="Runs to compare")
    metric = param.Selector(objects=["loss", "accuracy", "grad_norm", "weight_norm", "lr",
                                     "batch_size"], default="loss")
    probe = param.Selector(objects=["train", "eval"], default="train", label="Rows")
    log_y = param.Boolean(default=True, label="Log-scale y axis")
    smoothing = param.Number(default=0.6, bounds=(0.0, 0.99), step=0.01,
                             doc="EMA weight, as TensorBoard's slider; the raw curve stays faint "
                                 "behind (0: raw only)")

    def __init__(self, store_root: str | Path = "data/runs", **params):
        super().__init__(**params)
        self.store = RunStore(store_root)
        self.summary = pd.DataFrame(columns=list(SEARCHED))
        # run_id stays in view when the table scrolls sideways; losses with 4 decimals
        self.table = pn.widgets.Tabulator(self.summary, disabled=True, show_index=False,
                                          height=260, sizing_mode="stretch_width", pagination=None,
                                          frozen_columns=["run_id"], formatters={
                                              "final_loss": NumberFormatter(format="0.0000"),
                                              "test_accuracy": NumberFormatter(format="0.000"),
                                              "wall_time": NumberFormatter(format="0.0")})
        self.plot = plotly_pane(metric_curves(pd.DataFrame(
            columns=["run_id", "step", "probe", "metric", "layer", "value"])), height=380,
            sizing_mode="stretch_width", config={"displaylogo": False})
        self.reload_button = pn.widgets.Button(name="Reload store", width=120)
        self.select_all = pn.widgets.Button(name="Select all shown", width=140)
        self.reload_button.on_click(lambda event: self.reload())
        self.select_all.on_click(lambda event: self.select_shown())
        self.csv = pn.widgets.FileDownload(callback=self.export_csv, filename="runs.csv",
                                           label="Export CSV", button_type="primary", width=140)
        self.parquet = pn.widgets.FileDownload(callback=self.export_parquet,
                                               filename="runs.parquet", label="Export Parquet",
                                               button_type="primary", width=140)
        self.reload()

    # -- state ---------------------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read the store's summaries (a run saved by the Arena shows up here) and redraw: a
        run saved again under its id may have new rows, a new status or a new name."""
        before = list(self.selected)
        self.summary = self.store.summary()
        self.apply_filter()
        if self.selected == before:  # else the selection's change has redrawn already
            self.draw()

    def shown(self) -> pd.DataFrame:
        """The stored runs that pass the text and status filters."""
        df = self.summary
        if df.empty:
            return df
        if self.status_filter != "any":
            df = df[df["status"] == self.status_filter]
        q = self.query.strip().lower()
        if q:
            text = df[[c for c in SEARCHED if c in df]].astype(str).agg(" ".join, axis=1).str.lower()
            df = df[text.str.contains(q, regex=False)]  # plain substring: nothing is evaluated
        return df

    @param.depends("query", "status_filter", watch=True)
    def apply_filter(self) -> None:
        if len(self.query) > MAX_QUERY:
            self.show_error(f"the filter is {len(self.query)} characters long; at most {MAX_QUERY}")
            return
        df = self.shown()
        self.table.value = df[[c for c in COLUMNS if c in df]].reset_index(drop=True)
        ids = df["run_id"].tolist() if len(df) else []
        labels = {_label(r): r.run_id for r in df.itertuples()} if len(df) else {}
        self.param.selected.objects = labels
        self.selected = [r for r in self.selected if r in ids]
        if self.summary.empty:
            self.show_error("the run store is empty: train something in the Arena first")
        elif df.empty:
            self.show_error(f"no stored run matches {self.query!r} (status {self.status_filter}); "
                            f"{len(self.summary)} runs in the store")
        else:
            self.clear_error()
        self.status.object = f"{len(df)} of {len(self.summary)} stored runs shown, {len(self.selected)} selected"

    def select_shown(self) -> None:
        df = self.shown()
        self.selected = df["run_id"].tolist() if len(df) else []

    def frame(self) -> pd.DataFrame:
        """Every row of the selected runs (tidy), with each run's status/model/norm merged in."""
        frames = [run.frame for run in self.store.runs(self.selected)]
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame(columns=["run_id", "step", "probe", "metric", "layer", "value"])
        rows = pd.concat(frames, ignore_index=True)
        facts = self.summary[["run_id", "status", "model", "norm", "batch_size", "optimizer"]]
        return rows.merge(facts, on="run_id", how="left")

    @param.depends("selected", "metric", "probe", "log_y", "smoothing", watch=True)
    def draw(self) -> None:
        frame = self.frame()
        status = dict(zip(self.summary.get("run_id", []), self.summary.get("status", []), strict=False))
        # a line per run, named by its id and (an Arena run) its lane's name in the legend
        frame = frame.assign(run=frame["run_id"].map(self._legend_names()))
        fig = metric_curves(frame, metric=self.metric, probe=self.probe, log_y=self.log_y,
                            status=status, smoothing=self.smoothing, color="run",
                            title=f"{self.metric} ({self.probe}) of {len(self.selected)} runs")
        self.plot.object = fig
        self.status.object = (f"{len(self.shown())} of {len(self.summary)} stored runs shown, "
                              f"{len(self.selected)} selected")

    def _legend_names(self) -> dict[str, str]:
        """``{run_id: _run_name(...)}``, labels cut at :data:`LEGEND_LABEL` characters (a legend
        entry takes the plot's width)."""
        if self.summary.empty:
            return {}
        return {run_id: _run_name(run_id, label, LEGEND_LABEL)
                for run_id, label in zip(self.summary["run_id"], self.summary["label"], strict=True)}

    def export_csv(self) -> io.BytesIO:
        return io.BytesIO(self.frame().to_csv(index=False).encode())

    def export_parquet(self) -> io.BytesIO:
        buf = io.BytesIO()
        self.frame().to_parquet(buf, index=False)
        buf.seek(0)
        return buf

    def refresh(self) -> None:
        self.reload()

    def stop(self) -> None:
        """Nothing runs in the background here."""

    # -- layout --------------------------------------------------------------------------------
    def view(self) -> pn.viewable.Viewable:
        form = Form(self, parameters=["query", "status_filter", "selected", "metric", "probe",
                                      "log_y", "smoothing"],
                    widgets={"selected": {"type": pn.widgets.MultiSelect, "size": 10,
                                          "width": 360}},  # room for the run descriptions
                    show_name=False, width=380)
        return pn.Row(
            pn.Column(form, pn.Row(self.reload_button, self.select_all),
                      pn.Row(self.csv, self.parquet)),
            pn.Column(self.alert, self.status, self.plot, self.table, sizing_mode="stretch_width"),
            sizing_mode="stretch_width")


def runs_app(store_root: str | Path = "data/runs", template: bool = True):
    pn.extension("plotly", "tabulator")
    browser = RunBrowser(store_root=store_root)
    browser.bind_session()
    return page("runs", browser.view(), template=template)
