"""Sweep throughput: ``local`` with N workers against ``serial``, and Dask's overhead per run.

Every executor trains the same grid into a fresh store (nothing skipped). Pools and clusters are
started and warmed up before the clock starts; their start-up time is reported on its own line.

* throughput: runs/s of ``local`` with 1..N workers over ``serial`` (target: near-linear speedup
  up to the core count);
* overhead: the same for runs of a single step, where per-run cost is all executor: seconds per
  run of ``local`` and ``dask`` (LocalCluster of worker processes), and their difference.

    python benchmarks/bench_sweep.py [--runs 24] [--steps 200] [--workers 2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from workbench.models import MLPConfig
from workbench.sweeps import Sweep, run_sweep
from workbench.sweeps.executors import DaskExecutor, LocalExecutor
from workbench.train import TrainConfig


def grid(runs: int, steps: int, tag: str) -> Sweep:
    base = TrainConfig.smoke().replace(model=MLPConfig(depth=2, width=64, norm="batch"), steps=steps,
                                       batch_size=32, eval_every=0)
    lrs = [round(0.01 + 0.001 * i, 6) for i in range(runs)]
    return Sweep(base=base, grid={"lr": lrs}, name=tag)


def timed(sweep: Sweep, executor) -> float:
    """Seconds to train ``sweep`` into an empty store."""
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        result = run_sweep(sweep, root, executor, progress=False, journal=False)
        wall = time.perf_counter() - t0
    assert result.counts["finished"] == len(sweep.configs()), result.summary()
    return wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=24)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rounds", type=int, default=3, help="interleaved repeats; the best is kept")
    a = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    work, tiny, warm = grid(a.runs, a.steps, "work"), grid(a.runs, 1, "tiny"), grid(2 * a.workers, 1, "warm")
    print(f"{a.runs} runs of {a.steps} steps (MLP 2x64, BatchNorm, B=32); {os.cpu_count()} cores; "
          f"best of {a.rounds} interleaved rounds")

    executors, starts = {"serial": "serial"}, {}
    for n in sorted({1, a.workers}):
        executors[f"local {n}"] = LocalExecutor(n)
    executors[f"dask {a.workers}"] = None
    for name in executors:  # start and warm up everything before the clock runs
        t0 = time.perf_counter()
        if name.startswith("dask"):
            executors[name] = DaskExecutor(workers=a.workers)
        timed(warm, executors[name])
        starts[name] = time.perf_counter() - t0
    best = {(name, g): float("inf") for name in executors for g in ("work", "tiny")}
    try:
        for _ in range(a.rounds):
            for name, ex in executors.items():
                for g, sweep in (("work", work), ("tiny", tiny)):
                    best[name, g] = min(best[name, g], timed(sweep, ex))
    finally:
        for ex in executors.values():
            if not isinstance(ex, str):
                ex.close()

    t_serial = best["serial", "work"]
    for name in executors:
        t = best[name, "work"]
        n = 1 if name == "serial" else int(name.split()[1])
        print(f"{name:9s} {a.runs / t:6.1f} runs/s  speedup vs serial x{t_serial / t:4.2f} "
              f"(per worker {t_serial / t / n:4.0%}); 1-step runs {best[name, 'tiny'] / a.runs * 1e3:5.1f} "
              f"ms/run; start-up {starts[name]:.1f}s")
    local, dask = f"local {a.workers}", f"dask {a.workers}"
    per = (best[dask, "tiny"] - best[local, "tiny"]) / a.runs * 1e3
    print(f"dask overhead per run vs local ({a.workers} workers): {per:+.1f} ms on 1-step runs; "
          f"dask/local wall time on the {a.steps}-step grid: x{best[dask, 'work'] / best[local, 'work']:.2f}")


if __name__ == "__main__":
    main()
