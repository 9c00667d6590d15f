"""RunStore round-trips runs and writes atomically."""
import json
import os
import time

import pandas as pd
import pytest
import torch

from workbench.data import DataConfig
from workbench.models import ConvNetConfig, MLPConfig, TransformerConfig
from workbench.probes import layer_norms
from workbench.store import Run, RunStore, config_hash
from workbench.train import TrainConfig, train


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


def test_summary_reads_no_rows_and_matches_them(tmp_path):
    """summary() takes the final values stored in meta.json, equal to those computed from the
    rows (NaN and inf included); a run stored before they were has its rows read instead."""
    store = RunStore(tmp_path)
    store.save(_run())
    diverged = _run("def456", status="diverged", n=3)
    diverged.frame.loc[2, "value"] = float("inf")
    evals = pd.DataFrame({"run_id": "def456", "step": [2], "probe": "eval", "metric": "accuracy",
                          "layer": "", "value": [float("nan")]})
    diverged.frame = pd.concat([diverged.frame, evals], ignore_index=True)
    store.save(diverged)
    store.save(Run(run_id="0ff", config={}, status="failed", error="boom"))  # no rows at all
    from_rows = pd.DataFrame([store.get(r).summary() for r in store.run_ids()])
    assert from_rows.final_loss.tolist()[1:] == [0.2, float("inf")]  # 0ff: NaN
    for run_id in store.run_ids():  # summary() must not need them
        (tmp_path / run_id / "rows.parquet").write_bytes(b"not parquet")
    pd.testing.assert_frame_equal(store.summary(), from_rows)
    meta = json.loads((tmp_path / "def456" / "meta.json").read_text())
    assert meta["finals"] == {"final_loss": "inf", "test_accuracy": "nan"}  # plain JSON
    # a store written before the final values were kept: its rows are read
    store.save(_run())
    meta_path = tmp_path / "abc123" / "meta.json"
    old = json.loads(meta_path.read_text())
    del old["finals"]
    meta_path.write_text(json.dumps(old))
    assert store.get("abc123", rows=False).finals is None
    assert store.summary().set_index("run_id").final_loss["abc123"] == 0.2


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
    # failing while the new files are made (before any is renamed): the old run, untouched
    assert len(store.get("abc123").frame) == 3
    assert not [p for p in os.listdir(tmp_path / "abc123") if p.endswith(".tmp")]

    real_replace = os.replace

    def replace_until_rows(src, dst):
        if str(dst).endswith("rows.parquet"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_until_rows)
    with pytest.raises(OSError):
        store.save(_run(n=10))
    monkeypatch.undo()
    # failing while renaming: meta.json was removed first, so the half-updated run (new config,
    # old rows) is not reported as complete
    assert not store.has("abc123")
    assert not [p for p in os.listdir(tmp_path / "abc123") if p.endswith(".tmp")]
    store.save(_run(n=10))
    assert len(store.get("abc123").frame) == 10


def test_listing_is_safe_while_another_writer_overwrites_runs(tmp_path):
    """``save`` removes meta.json before it renames the new files into place; a reader listing
    the store in between used to get a KeyError for the run being rewritten (about 3% of
    listings under a busy writer), or, on a loaded machine, left it out: the run was missing
    while its files were serialized and fsynced, longer than the reader's retries."""
    import threading

    store = RunStore(tmp_path)
    ids = ["abc123", "abc124", "abc125"]
    runs = [_run(run_id=r, n=5) for r in ids]
    for run in runs:
        store.save(run)
    stop, errors = threading.Event(), []

    def writer():  # a busy writer: a run re-saved every few milliseconds
        while not stop.is_set():
            for run in runs:
                store.save(run)
                time.sleep(0.003)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(30):
            try:
                assert len(store.load()) == 15
                assert sorted(store.summary().run_id) == ids
                assert [r.run_id for r in store.runs(ids, rows=False)] == ids
            except (KeyError, AssertionError) as exc:  # collected: the thread must be stopped
                errors.append(exc)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[:3]
    store.delete("abc124")  # deleted, or never stored: left out at once
    assert [r.run_id for r in store.runs([*ids, "fff000"])] == ["abc123", "abc125"]


def test_a_run_saved_while_it_is_read_is_not_mixed_with_the_old_one(tmp_path, monkeypatch):
    """``get`` reads meta.json, config.json and the rows one after the other; another run saved
    under the same id in between used to come back as the old meta with the new rows."""
    store = RunStore(tmp_path)
    store.save(_run(n=3))
    newer, newest = _run(n=7), _run(n=9)
    newer.started_at, newest.started_at = "later", "latest"
    real_read = pd.read_parquet
    pending = [newer]  # saved, one per read, while a run's rows are read

    def read_during_a_save(*args, **kwargs):
        if pending:
            store.save(pending.pop(0))
        return real_read(*args, **kwargs)

    monkeypatch.setattr(pd, "read_parquet", read_during_a_save)
    with pytest.raises(KeyError, match="is being rewritten while it was read"):
        store.get("abc123")
    pending.append(newest)
    (back,) = store.runs(["abc123"])  # the listing reads it again, after the save: all newest
    assert back.started_at == "latest" and len(back.frame) == 9 == back.steps_done


def test_run_ids_are_validated(tmp_path):
    with pytest.raises(ValueError, match="invalid run id"):
        RunStore(tmp_path).get("../etc")


def test_config_hash_is_stable():
    a = {"b": 1, "a": [1, 2], "c": {"y": 1, "x": 2}}
    b = json.loads(json.dumps({"c": {"x": 2, "y": 1}, "a": [1, 2], "b": 1}))
    assert config_hash(a) == config_hash(b) and len(config_hash(a)) == 12
    assert config_hash(a) != config_hash({**a, "b": 2})


def test_equal_configs_get_one_run_id():
    """lr=1 (a YAML grid) and lr=1.0 (a CLI flag) compare equal: they are one run, not two;
    the same for -0.0 and 0.0 and a transformer's float fields."""
    smoke = TrainConfig.smoke()
    assert smoke.replace(lr=1).run_id == smoke.replace(lr=1.0).run_id
    assert smoke.replace(momentum=-0.0).run_id == smoke.replace(momentum=0).run_id
    assert smoke.replace(betas=(0, 0.9)).run_id == smoke.replace(betas=(0.0, 0.9)).run_id
    assert type(smoke.replace(lr=1).to_dict()["lr"]) is float
    assert (TransformerConfig(mix_fraction=1, init_std=1).__dict__
            == TransformerConfig(mix_fraction=1.0, init_std=1.0).__dict__)
    from workbench.sweeps import Sweep

    assert len(Sweep(base=smoke, grid={"lr": [1, 1.0]}).configs()) == 1
    with pytest.raises(ValueError, match="lr must be a number, got 'fast'"):
        smoke.replace(lr="fast")


# -- weights: a stored run comes back as a model any probe can look inside --------------------
_KINDS = {
    "mlp, BatchNorm (running statistics)": TrainConfig.smoke(),
    "convnet, GroupNorm + WS": TrainConfig.smoke().replace(
        model=ConvNetConfig(stages=2, channels=8, norm="group", ws=True),
        data=DataConfig(name="shapes", n_train=64, n_test=32), steps=5),
    "transformer, Pre-LN": TrainConfig.smoke().replace(
        model=TransformerConfig.smoke(), data=DataConfig(name="markov", n_train=64, n_test=32),
        steps=5, optimizer="adam", lr=1e-3),
    "mlp, PowerNorm (its own buffers)": TrainConfig.smoke().replace(
        model=MLPConfig(depth=2, width=16, norm="power")),
}


@pytest.mark.filterwarnings("ignore:PowerNorm's approximate backward")  # hessian_top_eigs on it
@pytest.mark.parametrize("cfg", list(_KINDS.values()), ids=list(_KINDS))
def test_restore_gives_back_the_trained_model(tmp_path, cfg):
    store = RunStore(tmp_path)
    run = train(cfg, store=store, probes=["layer_norms", "hessian_top_eigs"])
    assert run.status == "finished" and (tmp_path / run.run_id / "weights.pt").exists()
    rng = torch.get_rng_state()
    back = store.restore(run.run_id)
    assert torch.equal(torch.get_rng_state(), rng), "restore must not draw from the global RNG"
    assert back.model.training
    pd.testing.assert_frame_equal(back.frame, run.frame)  # probe rows (budget columns) included
    state, saved = run.model.state_dict(), back.model.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in state)
    x, y = back.dataset.x_test[:16], back.dataset.y_test[:16]
    assert torch.equal(x, run.dataset.x_test[:16])  # the data set is regenerated exactly
    for mode in (False, True):  # eval: running statistics; train: batch statistics
        run.model.train(mode), back.model.train(mode)
        with torch.no_grad():
            assert torch.equal(run.model(x), back.model(x))
    run.model.train(), back.model.train()
    f, g = (layer_norms(m, (x, y), back.dataset.loss_fn) for m in (run.model, back.model))
    pd.testing.assert_frame_equal(f, g)


def test_runs_trained_in_a_worker_keep_their_weights(tmp_path):
    """Sweep workers and dashboard training processes send the weights, not the model."""
    from workbench.sweeps.runner import _run_one

    cfg = TrainConfig.smoke()
    run = _run_one(cfg.to_dict())
    assert run.model is None and run.weights is not None
    store = RunStore(tmp_path)
    store.save(run)
    back = store.restore(run.run_id)
    reference = train(cfg).model
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(),
                                                  back.model.state_dict().values(), strict=True))


def test_restore_without_weights_is_a_clear_error(tmp_path):
    store = RunStore(tmp_path)
    cfg = TrainConfig.smoke()
    run = train(cfg, store=store)
    store.save(_run(run.run_id))  # overwritten by a run without a model: its weights go too
    assert not (tmp_path / run.run_id / "weights.pt").exists()
    with pytest.raises(ValueError, match="stored without weights"):
        store.restore(run.run_id)
    with pytest.raises(KeyError, match="no run 'ffff'"):
        store.restore("ffff")


def test_files_are_readable_as_new_files_are_and_a_damaged_run_is_named_not_fatal(tmp_path):
    """mkstemp's owner-only mode made a store shared by a group unreadable to the others; one
    truncated meta.json made every listing fail with a bare JSON error."""
    store = RunStore(tmp_path)
    store.save(_run())
    store.save(_run("def456"))
    mask = os.umask(0)
    os.umask(mask)
    for f in (tmp_path / "abc123").iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f
    meta = tmp_path / "def456" / "meta.json"
    meta.write_text(meta.read_text()[:20])  # truncated
    with pytest.warns(RuntimeWarning, match=r"left out: .*def456.*meta.json is not valid JSON"):
        assert list(store.summary().run_id) == ["abc123"]
    with pytest.raises(ValueError, match="meta.json is not valid JSON"):
        store.get("def456")
