"""RunStore round-trips runs and writes atomically."""
import json
import os

import pandas as pd
import pytest

from workbench.store import Run, RunStore, config_hash


def _run(run_id="abc123", status="finished", n=5):
    frame = pd.DataFrame({"run_id": run_id, "step": range(n), "probe": "train", "metric": "loss",
                          "layer": "", "value": [1.0 / (i + 1) for i in range(n)]})
    return Run(run_id=run_id, config={"seed": 1, "model": {"kind": "mlp", "norm": "batch"}},
               status=status, frame=frame, steps_done=n)


def test_round_trip(tmp_path):
    store = RunStore(tmp_path)
    run = _run()
    store.save(run)
    assert store.has("abc123") and store.run_ids() == ["abc123"]
    back = store.get("abc123")
    assert back.status == "finished" and back.config == run.config and back.steps_done == 5
    pd.testing.assert_frame_equal(back.frame, run.frame, check_dtype=False)
    store.save(_run("def456", status="diverged", n=2))
    assert len(store.load()) == 7
    assert set(store.load(status="diverged").run_id) == {"def456"}
    assert list(store.summary().run_id) == ["abc123", "def456"]
    with pytest.raises(ValueError, match="unknown status 'done'"):
        store.load(status="done")
    with pytest.raises(KeyError, match="no run 'ffff'"):
        store.get("ffff")


def test_incomplete_run_is_invisible_and_overwritten(tmp_path):
    store = RunStore(tmp_path)
    folder = tmp_path / "abc123"
    folder.mkdir()
    (folder / "rows.parquet").write_bytes(b"half a file")  # a writer killed before meta.json
    assert not store.has("abc123") and store.run_ids() == [] and len(store.load()) == 0
    store.save(_run())
    assert store.has("abc123")


def test_write_is_atomic(tmp_path, monkeypatch):
    """A crash mid-save never leaves a run that looks complete but holds torn or mixed files."""
    store = RunStore(tmp_path)
    store.save(_run(n=3))

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", boom)
    with pytest.raises(OSError):
        store.save(_run(n=10))
    monkeypatch.undo()
    # meta.json was removed first, so the half-updated run is not reported as complete
    assert not store.has("abc123")
    assert not [p for p in os.listdir(tmp_path / "abc123") if p.endswith(".tmp")]
    store.save(_run(n=10))
    assert len(store.get("abc123").frame) == 10


def test_run_ids_are_validated(tmp_path):
    with pytest.raises(ValueError, match="invalid run id"):
        RunStore(tmp_path).get("../etc")


def test_config_hash_is_stable():
    a = {"b": 1, "a": [1, 2], "c": {"y": 1, "x": 2}}
    b = json.loads(json.dumps({"c": {"x": 2, "y": 1}, "a": [1, 2], "b": 1}))
    assert config_hash(a) == config_hash(b) and len(config_hash(a)) == 12
    assert config_hash(a) != config_hash({**a, "b": 2})
