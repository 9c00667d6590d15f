"""README.md's examples run as written: its Python snippets as scripts (in a scratch folder, so
their ``data/runs`` store lands there), its sweep file through the sweep parser. An audit found
eleven stale statements and two snippets that failed or printed nothing useful; this keeps the
runnable ones honest."""
from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def _snippet(marker: str) -> str:
    (block,) = [b for b in _blocks("python") if marker in b]
    return block


def _run(code: str, cwd: Path) -> str:
    script = cwd / "snippet.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_every_python_snippet_compiles():
    blocks = _blocks("python")
    assert len(blocks) >= 3
    for block in blocks:
        compile(block, "README.md", "exec")


def test_the_first_example_trains_and_stores_a_run(tmp_path):
    code = _snippet("train(cfg, probes=")
    _run(code + "\nprint(run.status, len(run.frame))\n", tmp_path)
    runs = [p for p in (tmp_path / "data" / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1 and (runs[0] / "weights.pt").exists()


def test_the_python_sweep_runs_and_fits_a_critical_batch(tmp_path):
    out = _run(_snippet("run_sweep(sweep"), tmp_path)
    assert "12 trained" in out and "12 finished" in out
    # the analysis table: every norm's fit from its three batch sizes, a finite b_crit
    rows = [line.split() for line in out.splitlines() if re.match(r"\d+\s+(none|batch)\s", line)]
    assert sorted(r[1] for r in rows) == ["batch", "none"]
    for r in rows:
        b_crit, n_points = float(r[4]), int(r[6])
        assert math.isfinite(b_crit) and b_crit > 0 and n_points == 3, out


def test_the_sweep_file_example_is_a_valid_sweep(tmp_path):
    from workbench.sweeps import Sweep

    (block,) = [b for b in _blocks("yaml") if "grid:" in b]
    path = tmp_path / "my_sweep.yaml"
    path.write_text(block)
    sweep = Sweep.from_yaml(path)
    assert len(sweep.configs()) == (3 * 3 * 2 + 1) * 2
    assert all(c.eval_every == 10 for c in sweep.configs())


@pytest.mark.skipif(importlib.util.find_spec("dask_jobqueue") is None,
                    reason="dask-jobqueue is not installed (the SLURM example only compiles)")
def test_the_slurm_example_imports():
    code = _snippet("SLURMCluster")
    head = "\n".join(line for line in code.splitlines() if line.startswith(("from ", "import ")))
    exec(compile(head, "README.md", "exec"), {})
