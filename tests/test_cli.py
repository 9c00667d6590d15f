"""The CLI trains, saves and lists runs, and turns bad input into one line and exit status 2."""
import subprocess
import sys

import pytest

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


def test_norm_options_and_ws(tmp_path, capsys):
    rc = main(["train", "--model", "convnet", "--norm", "group", "--norm-option", "groups=4",
               "--ws", "--width", "8", "--depth", "1", "--steps", "3", "--n-train", "64",
               "--batch-size", "8", "--store", str(tmp_path), "--no-progress"])
    assert rc == 0, capsys.readouterr()
    run = RunStore(tmp_path).get(RunStore(tmp_path).run_ids()[0])
    assert run.config["model"]["norm_options"] == {"groups": 4} and run.config["model"]["ws"]


@pytest.mark.parametrize("argv, message", [
    (["train", "--norm", "bachnorm"], "unknown norm 'bachnorm'"),
    (["train", "--model", "resnet"], "unknown model 'resnet'"),
    (["train", "--batch-size", "0"], "batch_size must be > 0"),
    (["train", "--micro-batch", "5"], "micro_batch=5 does not divide batch_size=32"),
    (["train", "--norm", "group", "--norm-option", "groups=5"], "groups=5 does not divide"),
    (["train", "--model", "transformer", "--norm", "group"], "unknown transformer norm 'group'"),
    (["train", "--dataset", "markov"], "cannot take data set 'markov'"),
    (["train", "--optimizer", "adagrad"], "unknown optimizer 'adagrad'"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    assert main(argv + ["--store", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_module_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "workbench", "train", "--norm", "nope",
                           "--store", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown norm 'nope'" in proc.stderr and "Traceback" not in proc.stderr
