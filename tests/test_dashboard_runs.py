"""The Runs browser without a browser: filter, compare, export, bad filters."""
from __future__ import annotations

import io

import pandas as pd
import pytest

pytest.importorskip("panel")

from workbench.dashboard.runs import RunBrowser, runs_app
from workbench.models import MLPConfig
from workbench.store import RunStore
from workbench.train import TrainConfig, train


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    store = RunStore(root)
    base = TrainConfig.smoke()
    for cfg in (base, base.replace(model=MLPConfig.smoke().__class__(depth=2, width=16, norm="layer")),
                base.replace(lr=1e6, model=MLPConfig(depth=2, width=16, norm="none"))):
        store.save(train(cfg))
    return root


def test_lists_filters_and_compares(store_root):
    b = RunBrowser(store_root=store_root)
    assert len(b.summary) == 3 and len(b.table.value) == 3 and not b.alert.visible
    b.query = "LAYER"  # case-insensitive plain text
    assert b.shown()["norm"].tolist() == ["layer"]
    b.query = ""
    b.status_filter = "diverged"
    assert b.shown()["status"].tolist() == ["diverged"]
    b.status_filter = "any"
    b.select_shown()
    lines = [t for t in b.plot.object.data if t.mode == "lines"]
    markers = [t for t in b.plot.object.data if t.mode == "markers"]
    assert len(markers) == 1  # the diverged run is marked
    # smoothed by default (0.6): each run's line over its faint raw values
    assert len(lines) == 6 and sum(t.opacity == 0.25 for t in lines) == 3
    b.smoothing = 0.0
    assert len([t for t in b.plot.object.data if t.mode == "lines"]) == 3
    assert "3 selected" in b.status.object
    # how runs ended comes right after their id (the table scrolls sideways at 1300 px)
    assert list(b.table.value.columns[:4]) == ["run_id", "status", "final_loss", "test_accuracy"]
    assert b.table.frozen_columns == ["run_id"]
    b.metric = "accuracy"
    assert b.plot.object.layout.yaxis.title.text == "accuracy"


def test_a_run_named_in_the_arena_is_listed_and_found_by_its_name(tmp_path):
    store = RunStore(tmp_path)
    run = train(TrainConfig.smoke())
    run.meta["label"] = "GN+WS"  # what the Arena's Job stores: the lane's name
    store.save(run)
    store.save(train(TrainConfig.smoke().replace(seed=1)))  # no name
    b = RunBrowser(store_root=tmp_path)
    assert sorted(b.summary["label"]) == ["", "GN+WS"]
    b.query = "gn+ws"
    assert b.shown()["run_id"].tolist() == [run.run_id]
    ((name, run_id),) = b.param.selected.names.items()  # the compare list: id · name · setup
    assert run_id == run.run_id and name.startswith(f"{run.run_id} · GN+WS · mlp/")
    assert "label" in b.table.value.columns
    # the compare plot's legend names it too; a run without a name keeps its bare id
    b.query = ""
    b.select_shown()
    legend = sorted(t.name for t in b.plot.object.data if t.showlegend is not False)
    unnamed = next(r for r in b.summary["run_id"] if r != run.run_id)
    assert legend == sorted([f"{run.run_id} · GN+WS", unnamed])
    run.meta["label"] = "x" * 100  # the longest label the Arena keeps: cut in the legend
    store.save(run)
    b.reload()
    b.select_shown()
    assert f"{run.run_id} · {'x' * 39}…" in [t.name for t in b.plot.object.data]


def test_export_csv_and_parquet_of_the_selection(store_root):
    b = RunBrowser(store_root=store_root)
    b.selected = b.summary["run_id"].tolist()[:2]
    csv = pd.read_csv(io.BytesIO(b.export_csv().getvalue()))
    parquet = pd.read_parquet(b.export_parquet())
    assert set(csv["run_id"]) == set(b.selected) == set(parquet["run_id"])
    assert {"step", "probe", "metric", "value", "norm", "status"} <= set(csv.columns)
    assert len(csv) == len(parquet)


@pytest.mark.parametrize("query", ["no-such-run", "__import__('os').system('true')", "../../etc"])
def test_a_filter_matching_nothing_is_a_message(store_root, query):
    b = RunBrowser(store_root=store_root)
    b.query = query
    assert b.alert.visible and "no stored run matches" in b.alert.object
    assert b.shown().empty and b.selected == []
    b.query = ""
    assert not b.alert.visible


def test_overlong_filter_and_empty_store(tmp_path):
    b = RunBrowser(store_root=tmp_path / "empty")
    assert b.alert.visible and "store is empty" in b.alert.object
    b.query = "x" * 500
    assert "at most" in b.alert.object


def test_reload_sees_new_runs(tmp_path):
    b = RunBrowser(store_root=tmp_path)
    assert b.summary.empty
    RunStore(tmp_path).save(train(TrainConfig.smoke()))
    b.reload()
    assert len(b.summary) == 1


def test_layout(store_root):
    names = {type(o).__name__ for o in runs_app(store_root=store_root, template=False).select()}
    assert {"Tabulator", "MultiSelect", "FileDownload", "Plotly", "TextInput"} <= names
