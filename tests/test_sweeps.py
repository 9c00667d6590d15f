"""Sweeps: grids, executors that agree, kill-and-resume without loss, failures recorded, analyses."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.cli import main
from workbench.data import BatchSampler
from workbench.models import MLPConfig
from workbench.store import RunStore
from workbench.sweeps import Sweep, run_sweep
from workbench.sweeps import analysis as A
from workbench.sweeps.executors import DaskExecutor
from workbench.sweeps.runner import read_journal
from workbench.train import TrainConfig

trainer_module = sys.modules["workbench.train.trainer"]  # (the package's `train` is the function)

ROOT = Path(__file__).resolve().parents[1]
SMOKE = TrainConfig.smoke()  # MLP width 16, 256 examples, 20 steps


def _rows(store: RunStore, run_id: str) -> pd.DataFrame:
    """A run's rows without wall-clock timings (the only values allowed to differ between runs)."""
    f = store.get(run_id).frame
    return f[f.metric != "wall_time"].reset_index(drop=True)


def test_grid_fields_seeds_and_ids():
    sweep = Sweep(base=SMOKE, grid={"batch_size": [8, 16], "model.norm": ["none", "batch"],
                                    "data.n_train": [128, 256]},
                  extra=[{"model.norm": "group", "model.norm_options.groups": 4}], seeds=[0, 1])
    cfgs = sweep.configs()
    assert len(cfgs) == (2 * 2 * 2 + 1) * 2 == len({c.run_id for c in cfgs})
    assert [c.seed for c in cfgs[:2]] == [0, 1] and cfgs[0].batch_size == cfgs[1].batch_size  # seeds innermost
    assert {c.data.n_train for c in cfgs} == {128, 256}
    assert cfgs[-1].model.norm_options == {"groups": 4}
    assert [c.run_id for c in cfgs] == [c.run_id for c in Sweep(base=SMOKE, grid=sweep.grid, extra=sweep.extra,
                                                                seeds=[0, 1]).configs()]  # stable ids
    dup = Sweep(base=SMOKE, grid={"lr": [0.05, 0.05]}, extra=[{"lr": 0.05}])
    assert len(dup.configs()) == 1  # the same config is one run
    kinds = Sweep(base=SMOKE.replace(data=SMOKE.data.__class__(name="shapes", n_train=64, n_test=32)),
                  grid={"model.kind": ["mlp", "convnet"], "model.norm": ["group"]})
    assert [type(c.model).__name__ for c in kinds.configs()] == ["MLPConfig", "ConvNetConfig"]


def test_serial_local_and_dask_give_identical_runs(tmp_path):
    sweep = Sweep(base=SMOKE, grid={"batch_size": [8, 16], "model.norm": ["none", "batch"]})
    ids = [c.run_id for c in sweep.configs()]
    stores = {}
    for name, executor in [("serial", "serial"), ("local", "local")]:
        stores[name] = RunStore(tmp_path / name)
        result = run_sweep(sweep, stores[name], executor, workers=2, progress=False)
        assert result.counts["finished"] == 4, result.summary()
    # one in-process worker thread: runs seed the global torch RNG, so two threads would race
    ex = DaskExecutor(workers=1, processes=False)
    try:
        stores["dask"] = RunStore(tmp_path / "dask")
        assert run_sweep(sweep, stores["dask"], ex, progress=False).counts["finished"] == 4
    finally:
        ex.close()
    for name, store in stores.items():
        assert store.run_ids() == sorted(ids), name
        for run_id in ids:
            pd.testing.assert_frame_equal(_rows(store, run_id), _rows(stores["serial"], run_id))
            assert store.get(run_id).status == "finished"
            # and the same trained weights, whichever process trained them
            w, ref = (s.restore(run_id).model.state_dict() for s in (store, stores["serial"]))
            assert all(torch.equal(w[k], ref[k]) for k in ref), (name, run_id)
    pids = {stores["local"].get(r).meta["worker_pid"] for r in ids}
    assert os.getpid() not in pids  # local really ran in other processes


def killed_sweep() -> Sweep:
    """24 runs of about 0.1 s: long enough to kill the sweep in the middle."""
    base = SMOKE.replace(steps=150, model=MLPConfig(depth=2, width=32))
    return Sweep(base=base, grid={"lr": [0.01, 0.02, 0.03, 0.04, 0.05, 0.06], "batch_size": [16, 32]},
                 seeds=[0, 1], name="killed")


def test_killed_sweep_resumes_without_loss_or_repeats(tmp_path):
    store, sweep = RunStore(tmp_path / "runs"), killed_sweep()
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
            f"from test_sweeps import killed_sweep\nfrom workbench.sweeps import run_sweep\n"
            f"run_sweep(killed_sweep(), {str(store.root)!r}, 'local', workers=2, progress=False)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while len(store.run_ids()) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep, its forkserver and its workers: a hard kill
    out = proc.communicate()[0].decode()
    before = {r: (_rows(store, r), (store.root / r / "meta.json").stat().st_mtime_ns) for r in store.run_ids()}
    assert 3 <= len(before) < len(sweep.configs()), f"kill came too late or too early: {len(before)} runs\n{out}"

    result = run_sweep(sweep, store, "serial", progress=False)
    assert result.skipped == len(before) and result.counts["finished"] == len(sweep.configs()) - len(before)
    assert sorted(store.run_ids()) == sorted(c.run_id for c in sweep.configs())
    for run_id, (rows, mtime) in before.items():  # finished before the kill: untouched
        pd.testing.assert_frame_equal(_rows(store, run_id), rows)
        assert (store.root / run_id / "meta.json").stat().st_mtime_ns == mtime
    journal = read_journal(store)
    saved = journal[journal.event == "saved"]
    assert saved.run_id.value_counts().max() == 1  # every config trained to the end exactly once
    resumed = journal[(journal.event == "submit") & (journal.pid == os.getpid())]
    assert not set(resumed.run_id) & set(before)  # nothing finished was submitted again
    assert all(store.get(r).status == "finished" for r in store.run_ids())


class _FailingSampler(BatchSampler):
    """The trainer's sampler, raising on the sixth batch of a run that does not shuffle: a run
    that fails part-way (validation leaves no config that fails once training has started), in
    this process (the serial executor), with the error a broken data pipeline would give."""

    def next(self, n):
        self.calls = getattr(self, "calls", 0) + 1
        if self.shuffle == "none" and self.calls == 6:
            raise OSError("the data source went away at step 5")
        return super().next(n)


def test_failing_and_diverging_runs_are_recorded_and_the_rest_finish(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "BatchSampler", _FailingSampler)
    failing = {"shuffle": "none"}
    diverging = {"lr": 1e6}
    sweep = Sweep(base=SMOKE, grid={"batch_size": [8, 16]}, extra=[failing, diverging])
    store = RunStore(tmp_path)
    with pytest.warns(RuntimeWarning, match="failed"):
        result = run_sweep(sweep, store, "serial", progress=False)
    assert (result.counts["finished"], result.counts["failed"], result.counts["diverged"]) == (2, 1, 1)
    by_status = {store.get(r).status: store.get(r) for r in store.run_ids()}
    assert by_status["failed"].error == "OSError: the data source went away at step 5"
    assert by_status["failed"].steps_done == 5  # its first five steps are kept
    # a diverged run's final loss is not the mean of its finite steps: it must not rank
    table = A.runs_table(store)
    final = dict(zip(table.status, table.final_train_loss))
    assert not np.isfinite(final["diverged"]) and np.isfinite(final["finished"])
    stats = A.final_metric_table(table, by=["lr"]).set_index("lr")
    assert (stats.loc[1e6, "n"], stats.loc[1e6, "n_diverged"]) == (0, 1)
    assert np.isnan(stats.loc[1e6, "mean"])
    assert "failed" in result.summary() and by_status["failed"].run_id in result.summary()
    assert by_status["diverged"].diverged_step is not None
    assert run_sweep(sweep, store, "serial", progress=False).skipped == 4  # all four are results
    with pytest.warns(RuntimeWarning):
        again = run_sweep(sweep, store, "serial", progress=False, retry_failed=True)
    assert again.skipped == 3 and again.counts["failed"] == 1


@pytest.mark.parametrize("s_min,b_crit", [(100.0, 64.0), (20.0, 1000.0), (500.0, 8.0)])
def test_critical_batch_fit_recovers_known_parameters(s_min, b_crit):
    rng = np.random.default_rng(0)
    B = 2.0 ** np.arange(1, 15)
    S = s_min * (1 + b_crit / B) * np.exp(rng.normal(0, 0.02, len(B)))  # 2% noise
    fit = A.fit_critical_batch(B, S)
    assert fit.b_crit == pytest.approx(b_crit, rel=0.08)
    assert fit.s_min == pytest.approx(s_min, rel=0.05) and fit.e_min == pytest.approx(s_min * b_crit, rel=0.08)
    S_fit, E = fit.steps(B), fit.examples(B)  # the paper's form holds for the fitted curve
    np.testing.assert_allclose((S_fit / fit.s_min - 1) * (E / fit.e_min - 1), 1.0, rtol=1e-9)
    assert np.isnan(A.fit_critical_batch([32, 32], [10, 11]).b_crit)  # one batch size: no fit


def test_steps_vs_batch_tunes_lr_and_fits_per_strategy():
    rows = []  # a synthetic runs table: steps = S(B) * (1 + (log2 lr - log2 lr*)^2), two seeds
    for norm, b_crit in [("none", 32.0), ("batch", 256.0)]:
        for B in [4, 16, 64, 256, 1024]:
            for lr in [0.01, 0.02, 0.04, 0.08]:
                for seed in (0, 1):
                    steps = 50 * (1 + b_crit / B) * (1 + (np.log2(lr) - np.log2(0.04)) ** 2)
                    rows.append({"run_id": f"{norm}{B}{lr}{seed}", "status": "finished", "model.norm": norm,
                                 "batch_size": B, "lr": lr, "seed": seed, "steps_to_target": steps,
                                 "final_train_loss": 0.1 + (np.log(lr) - np.log(1e-4 * B ** 0.5)) ** 2})
    table = pd.DataFrame(rows)
    table.loc[0, "status"] = "diverged"  # counts as never reaching the target, not as a result
    steps = A.steps_vs_batch(table, by=["model.norm"])
    assert (steps[steps.batch_size > 4].lr == 0.04).all()
    fits = A.critical_batch(steps, by=["model.norm"]).set_index("model.norm")
    assert fits.loc["none", "b_crit"] == pytest.approx(32, rel=1e-6)
    assert fits.loc["batch", "b_crit"] == pytest.approx(256, rel=1e-6)
    final = A.final_metric_table(table, "final_train_loss", by=["model.norm", "batch_size", "lr"])
    assert set(final.n_runs) == {2} and final.n_diverged.sum() == 1


@pytest.mark.parametrize("exponent", [1.0, 0.5])
def test_best_lr_vs_batch_exponent(exponent):
    lrs = 2.0 ** np.arange(-14, 2, 0.25)
    rows = [{"run_id": f"{B}-{lr}", "status": "finished", "optimizer": "sgd", "batch_size": B, "lr": lr,
             "seed": 0, "final_train_loss": (np.log(lr) - np.log(1e-3 * B ** exponent)) ** 2}
            for B in [8, 32, 128, 512] for lr in lrs]
    best, fits = A.best_lr_vs_batch(pd.DataFrame(rows))
    assert fits.exponent.iloc[0] == pytest.approx(exponent, abs=0.1) and fits.n_at_edge.iloc[0] == 0
    assert list(best.batch_size) == [8, 32, 128, 512]


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


BASE = "base: {model: {kind: mlp, depth: 2, width: 16}, data: {n_train: 256, n_test: 128}, steps: 20}\n"


@pytest.mark.parametrize("text,names", [
    (BASE + "grid: {model.nrom: [none, batch]}", ["'model.nrom'", "model.norm", "batch_size"]),
    (BASE + "grid: {lrr: [0.1]}", ["'lrr'", "valid fields", "lr,"]),
    (BASE + "grid: {}", ["grid is empty"]),
    (BASE, ["grid is empty"]),
    (BASE + "grid: {lr: []}", ["'lr'", "empty"]),
    (BASE + "grid: {lr: 0.1}", ["'lr'", "list"]),
    (BASE + "grid: {batch_size: [16, big]}", ["'batch_size'", "int", "'big'"]),
    (BASE + "grid: {model.norm: [bachnorm]}", ["bachnorm", "choose one of"]),
    (BASE + "grid: {lr: [0.1]}\nseeds: [0, -1]", ["'seeds'", "-1"]),
    (BASE + "grid: {lr: [0.1]}\ngrd: {}", ["'grd'", "valid keys"]),
    ("base: {stepz: 3}\ngrid: {lr: [0.1]}", ["'base'", "stepz"]),
    (BASE + "grid: {seed: [0, 1]}", ["'seed'", "seeds"]),
    (BASE + "extra: [{model.width: wide}]", ["extra[0]", "'model.width'", "int"]),
])
def test_bad_sweep_files_name_the_field(tmp_path, capsys, text, names):
    path = _write(tmp_path, text)
    with pytest.raises(ValueError) as err:
        Sweep.from_yaml(path)
    for name in names:
        assert name in str(err.value), str(err.value)
    assert main(["sweep", path, "--store", str(tmp_path / "runs")]) == 2  # one line, exit 2
    assert capsys.readouterr().err.startswith("error: ")


def test_cli_sweep_runs_resumes_and_analyses(tmp_path, capsys):
    path = _write(tmp_path, BASE + "grid: {batch_size: [8, 16, 32], lr: [0.05, 0.1, 0.2]}\n"
                  "analysis: {target_loss: 2.0, by: [model.norm]}\n")
    store = str(tmp_path / "runs")
    assert main(["sweep", path, "--executor", "serial", "--store", store, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "9 runs; 0 already stored, 9 trained" in out and "critical batch size" in out and "lr* =" in out
    assert main(["sweep", path, "--store", store, "--dry-run"]) == 0
    assert "9 runs, 0 not stored" in capsys.readouterr().out
    assert main(["sweep", path, "--executor", "serial", "--store", store, "--no-progress"]) == 0
    assert "9 already stored, 0 trained" in capsys.readouterr().out
    assert main(["sweep", path, "--executor", "slurm", "--store", store]) == 2
    assert "unknown executor 'slurm'; choose one of: local, serial, dask" in capsys.readouterr().err


def test_shipped_example_is_a_valid_laptop_sweep():
    sweep = Sweep.from_yaml(ROOT / "sweeps" / "critical_batch.yaml")
    cfgs = sweep.configs()
    assert 50 <= len(cfgs) <= 400 and {c.batch_size for c in cfgs} >= {16, 64, 1024}
    assert sweep.analysis["target_loss"] > 0
    json.dumps([c.to_dict() for c in cfgs])  # plain data: ships to Dask workers as is


def test_progress_bar_counts_and_summary(tmp_path, capsys):
    sweep = Sweep(base=SMOKE, grid={"batch_size": [8, 16]}, extra=[{"lr": 1e6}], name="bar")
    result = run_sweep(sweep, tmp_path, "serial", progress=True)
    err = capsys.readouterr().err
    assert "sweep bar" in err and "finished=2 running=0 failed=0 diverged=1" in err and "3/3" in err
    assert result.summary().startswith("sweep 'bar' (serial): 3 runs; 0 already stored, 3 trained")


def test_ctrl_c_stops_a_serial_sweep_not_just_its_current_run(tmp_path, monkeypatch):
    """train() turns Ctrl-C into a cancelled run; in a serial sweep (same process) that Ctrl-C
    must end the sweep, as with the process pools, not only the run it came in."""
    calls = []
    real = trainer_module.evaluate

    def evaluate(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # the second run's final evaluation
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(trainer_module, "evaluate", evaluate)
    sweep = Sweep(base=SMOKE.replace(eval_every=0), grid={"lr": [0.01, 0.02, 0.04, 0.08]})
    store = RunStore(tmp_path)
    result = run_sweep(sweep, store, "serial", progress=False)
    assert result.interrupted
    assert len(store.run_ids()) == 1 and store.get(store.run_ids()[0]).status == "finished"
    assert len(calls) == 2  # nothing trained after the Ctrl-C


def test_a_misspelt_analysis_field_is_refused_with_the_valid_ones():
    """``analysis: {by: [model.nrom]}`` passed and the tables silently lost their grouping."""
    spec = {"base": {}, "grid": {"lr": [0.1]}}
    with pytest.raises(ValueError, match="unknown analysis 'by' field 'model.nrom'; valid fields: .*model.norm"):
        Sweep.from_dict({**spec, "analysis": {"by": ["model.nrom"]}})
    with pytest.raises(ValueError, match="analysis 'lr_by' expects a list of config fields"):
        Sweep.from_dict({**spec, "analysis": {"lr_by": "optimizer"}})
    assert Sweep.from_dict({**spec, "analysis": {"by": ["model.norm", "model.norm_options.groups"],
                                                 "lr_by": ["optimizer"]}}).analysis["lr_by"] == ["optimizer"]
