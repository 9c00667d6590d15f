"""The CLI trains, saves and lists runs, and turns bad input into one line and exit status 2."""
import subprocess
import sys

import pandas as pd
import pytest
import torch

from workbench.cli import main
from workbench.store import RunStore


def test_train_then_runs(tmp_path, capsys):
    store = str(tmp_path / "runs")
    rc = main(["train", "--model", "mlp", "--norm", "batch", "--batch-size", "16", "--steps", "20",
               "--n-train", "256", "--store", store, "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "finished after 20 steps" in out
    (run_id,) = RunStore(store).run_ids()
    assert main(["runs", "--store", store]) == 0
    listing = capsys.readouterr().out
    assert run_id in listing and "batch" in listing


def test_threads_are_set_and_recorded(tmp_path, capsys):
    """--threads sets torch's CPU thread count for the run (its numbers depend on it), and every
    run records the count it trained with."""
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["train", "--steps", "2", "--n-train", "64", "--threads", "1", "--store",
                     str(tmp_path), "--no-progress"]) == 0
        run = RunStore(tmp_path).get(RunStore(tmp_path).run_ids()[0])
        assert run.meta["torch_threads"] == 1
    finally:
        torch.set_num_threads(before)
    assert main(["train", "--threads", "0", "--store", str(tmp_path), "--no-progress"]) == 2
    _one_line_error(capsys, "--threads must be a positive number of threads, got 0")


def test_norm_options_and_ws(tmp_path, capsys):
    rc = main(["train", "--model", "convnet", "--norm", "group", "--norm-option", "groups=4",
               "--ws", "--width", "8", "--depth", "1", "--steps", "3", "--n-train", "64",
               "--batch-size", "8", "--store", str(tmp_path), "--no-progress"])
    assert rc == 0, capsys.readouterr()
    run = RunStore(tmp_path).get(RunStore(tmp_path).run_ids()[0])
    assert run.config["model"]["norm_options"] == {"groups": 4} and run.config["model"]["ws"]


def test_eval_probe_and_growth_intervals(tmp_path, capsys):
    rc = main(["train", "--steps", "12", "--n-train", "256", "--eval-every", "5", "--probes",
               "layer_norms", "--probe-every", "4", "--batch-schedule", "step",
               "--max-batch-size", "64", "--growth-every", "6", "--store", str(tmp_path),
               "--no-progress"])
    assert rc == 0, capsys.readouterr()
    run = RunStore(tmp_path).get(RunStore(tmp_path).run_ids()[0])
    steps = run.frame.groupby("probe").step.unique()
    assert sorted(steps["eval"]) == [5, 10, 12] and sorted(steps["layer_norms"]) == [0, 4, 8, 11]
    assert run.metric("batch_size").tolist() == [32] * 6 + [64] * 6
    assert run.config["growth_every"] == 6 and run.config["eval_every"] == 5


@pytest.mark.parametrize("argv, fields", [
    (["--optimizer", "sgd", "--nesterov"], {"nesterov": True, "optimizer": "sgd"}),
    (["--optimizer", "lars", "--nesterov", "--trust-coefficient", "0.02"],
     {"nesterov": True, "trust_coefficient": 0.02}),
    (["--optimizer", "lamb", "--betas", "0.8", "0.99", "--eps", "1e-6"], {"betas": (0.8, 0.99), "eps": 1e-6}),
    (["--batch-schedule", "step", "--max-batch-size", "256", "--growth-factor", "4", "--growth-every", "7"],
     {"growth_factor": 4, "growth_every": 7}),
    (["--batch-schedule", "norm_test", "--max-batch-size", "256", "--norm-test-theta", "0.3",
      "--norm-test-every", "5", "--growth-factor", "3"],
     {"norm_test_theta": 0.3, "norm_test_every": 5, "growth_factor": 3}),
    (["--shuffle", "single"], {"shuffle": "single"}),
    ([], {"nesterov": False, "betas": (0.9, 0.999), "eps": 1e-8, "trust_coefficient": 0.001,
          "growth_factor": 2, "shuffle": "reshuffle"}),
])
def test_optimizer_and_schedule_flags_reach_the_config(argv, fields):
    from workbench.cli import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["train", *argv]))
    assert {k: getattr(cfg, k) for k in fields} == fields


@pytest.mark.parametrize("argv, message", [
    (["train", "--nesterov", "--optimizer", "adam"], "nesterov=True applies to optimizers sgd, lars; got 'adam'"),
    (["train", "--betas", "0.9", "0.99"], "--betas and --eps apply to optimizers adam, adamw, lamb, not 'sgd'"),
    (["train", "--optimizer", "adam", "--betas", "0.9", "1.0"], "betas must be two numbers in [0, 1)"),
    (["train", "--trust-coefficient", "0.01"], "--trust-coefficient applies to optimizer lars, not 'sgd'"),
    (["train", "--growth-factor", "3"], "--growth-factor applies to --batch-schedule step or norm_test"),
    (["train", "--batch-schedule", "step", "--max-batch-size", "64", "--norm-test-theta", "0.2"],
     "--norm-test-theta applies to --batch-schedule norm_test, not 'step'"),
    (["train", "--batch-schedule", "step", "--max-batch-size", "64", "--growth-factor", "1"],
     "growth_factor must be an integer >= 2, got 1"),
    (["train", "--shuffle", "sometimes"], "unknown shuffle 'sometimes'"),
    (["train", "--probes", "cheap", "--probe-every", "0"],
     "--probe-every must be a positive number of steps, got 0"),
    (["train", "--probe-every", "5"], "--probe-every sets when the probes run: name them with --probes"),
    (["train", "--growth-every", "5"], "--growth-every applies to --batch-schedule step, not 'constant'"),
    (["train", "--eval-every", "-1"], "eval_every must be >= 0"),
    (["train", "--norm", "bachnorm"], "unknown norm 'bachnorm'"),
    (["train", "--model", "resnet"], "unknown model 'resnet'"),
    (["train", "--batch-size", "0"], "batch_size must be > 0"),
    (["train", "--micro-batch", "5"], "micro_batch=5 does not divide batch_size=32"),
    (["train", "--norm", "group", "--norm-option", "groups=5"], "groups=5 does not divide"),
    (["train", "--model", "transformer", "--norm", "group"], "unknown transformer norm 'group'"),
    (["train", "--dataset", "markov"], "cannot take data set 'markov'"),
    (["train", "--optimizer", "adagrad"], "unknown optimizer 'adagrad'"),
    (["train", "--n-train", str(10**13)], "n_train=10000000000000 and n_test=512 needs at least"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    assert main(argv + ["--store", str(tmp_path), "--no-progress"]) == 2
    _one_line_error(capsys, message)


def _one_line_error(capsys, message):
    """The captured output, after checking stderr is ``message`` on one line, no traceback."""
    captured = capsys.readouterr()
    assert message in captured.err, captured.err
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1
    return captured


def test_module_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "workbench", "train", "--norm", "nope",
                           "--store", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown norm 'nope'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def stored_run(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("runs"))
    assert main(["train", "--norm", "batch", "--width", "16", "--depth", "2", "--steps", "20",
                 "--n-train", "256", "--store", store, "--no-progress"]) == 0
    (run_id,) = RunStore(store).run_ids()
    return store, run_id


def test_cli_bad_device_is_one_line(stored_run, tmp_path, capsys):
    store, run_id = stored_run
    assert main(["train", "--steps", "2", "--store", str(tmp_path), "--no-progress",
                 "--device", "nonsense"]) == 2
    _one_line_error(capsys, "unknown device 'nonsense'")
    assert main(["probe", run_id, "layer_norms", "--store", store, "--device", "nonsense"]) == 2
    _one_line_error(capsys, "unknown device 'nonsense'")


def test_cli_scalar_for_a_list_option_is_one_line(stored_run, capsys):
    store, run_id = stored_run
    assert main(["probe", run_id, "hessian_vs_batch_size", "--store", store, "--examples", "32",
                 "--option", "batch_sizes=8"]) == 2
    _one_line_error(capsys, "batch_sizes must be a list of mini-batch sizes (e.g. [8, 16])")


def test_cli_out_is_checked_before_the_probe_runs(stored_run, tmp_path, capsys):
    store, run_id = stored_run
    missing = tmp_path / "no_such_dir" / "rows.parquet"
    assert main(["probe", run_id, "layer_norms", "--store", store, "--out", str(missing)]) == 2
    captured = _one_line_error(capsys, "does not exist")
    assert "rows" not in captured.out  # refused before the probe ran
    assert main(["probe", run_id, "layer_norms", "--store", store, "--out", str(tmp_path)]) == 2
    _one_line_error(capsys, "is a folder")
    out = tmp_path / "rows.parquet"
    assert main(["probe", run_id, "layer_norms", "--store", store, "--out", str(out)]) == 0
    assert out.exists()


def test_probe_a_stored_run(stored_run, tmp_path, capsys):
    from workbench.probes import hessian_top_eigs

    store, run_id = stored_run
    capsys.readouterr()
    out = tmp_path / "eigs.parquet"
    assert main(["probe", run_id, "hessian_top_eigs", "--option", "k=2", "--examples", "100",
                 "--store", store, "--out", str(out)]) == 0
    assert f"hessian_top_eigs on run {run_id} (finished after 20 steps), 100 train" in capsys.readouterr().out
    rows = pd.read_parquet(out)
    assert set(rows.run_id) == {run_id} and set(rows.step) == {20}
    # the same numbers as the probe on the model that training left, on the same examples
    run = RunStore(store).restore(run_id)
    ref = hessian_top_eigs(run.model, (run.dataset.x_train[:100], run.dataset.y_train[:100]),
                           run.dataset.loss_fn, k=2)
    assert rows.value.tolist() == pytest.approx(ref.value.tolist(), rel=1e-6)
    assert (rows.metric == "eigenvalue").sum() == 2


@pytest.mark.parametrize("args, message", [
    (["nope"], "unknown probe 'nope'; choose one of: layer_norms"),
    (["landscape", "--option", "kk=1"], "unknown option of landscape 'kk'; choose one of: direction"),
    (["landscape", "--option", "steps"], "--option expects KEY=VALUE, got 'steps'"),
    (["landscape", "--examples", "0"], "--examples must be at least 1, got 0"),
])
def test_probe_bad_input(stored_run, capsys, args, message):
    store, run_id = stored_run
    assert main(["probe", run_id, *args, "--store", store]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_probe_on_a_diverged_run_says_so(tmp_path, capsys):
    """A diverged run's stored weights give a NaN loss: a curvature probe on them is a one-line
    error that says the model diverged (was numpy's "Eigenvalues did not converge"), after a
    note naming the step; a probe whose rows can hold NaN still prints them."""
    store = str(tmp_path)
    assert main(["train", "--lr", "1e6", "--steps", "50", "--n-train", "256", "--store", store,
                 "--no-progress"]) == 0
    (run_id,) = RunStore(store).run_ids()
    run = RunStore(store).get(run_id)
    assert run.status == "diverged"
    capsys.readouterr()
    assert main(["probe", run_id, "hessian_top_eigs", "--store", store]) == 2
    err = capsys.readouterr().err
    assert f"note: run {run_id} diverged at step {run.diverged_step}" in err
    assert "error: the loss at the current weights is nan on this batch: the model has diverged" in err
    assert "Traceback" not in err and err.count("\n") == 2
    assert main(["probe", run_id, "layer_norms", "--store", store]) == 0


def test_probe_unknown_run_or_no_weights(stored_run, tmp_path, capsys):
    store, run_id = stored_run
    assert main(["probe", "abcdef", "landscape", "--store", store]) == 2
    assert f"no run 'abcdef' in {store}; stored runs: {run_id}" in capsys.readouterr().err
    legacy = RunStore(tmp_path)
    run = RunStore(store).get(run_id)  # without its model: as runs were stored before weights
    legacy.save(run)
    assert main(["probe", run_id, "landscape", "--store", str(tmp_path)]) == 2
    assert "stored without weights" in capsys.readouterr().err


def test_a_rerun_that_does_not_finish_keeps_the_stored_finished_run(tmp_path, capsys, monkeypatch):
    """Nothing already computed is lost: a failed (bad device) or Ctrl-C'd rerun of a stored
    config is returned and reported, not saved over the finished run and its weights."""
    store = str(tmp_path / "runs")
    argv = ["train", "--steps", "20", "--n-train", "256", "--store", store, "--no-progress"]
    assert main(argv) == 0
    (run_id,) = RunStore(store).run_ids()
    weights = RunStore(store).weights(run_id)
    capsys.readouterr()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    trainer = sys.modules["workbench.train.trainer"]
    monkeypatch.setattr(trainer, "evaluate", interrupted)
    with pytest.warns(RuntimeWarning, match="cancelled, not saved: the store .* keeps the finished run"):
        assert main(argv + ["--eval-every", "5"]) == 130  # another config: saved, cancelled
        assert main(argv) == 130
    out = capsys.readouterr().out
    assert "not saved: the store" in out and "saved to" in out
    kept = RunStore(store).get(run_id)
    assert kept.status == "finished" and kept.steps_done == 20
    assert all(torch.equal(weights[k], v) for k, v in RunStore(store).weights(run_id).items())
    assert sorted(r.status for r in RunStore(store).runs(rows=False)) == ["cancelled", "finished"]
