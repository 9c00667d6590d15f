"""``run_sweep``: train every run of a sweep on an executor, saving each to the store as it ends.

Resumable and lossless:

* every run that comes back is saved atomically (``RunStore.save``) before the next is looked at,
  so killing the sweep loses only the runs still in flight;
* a rerun skips the run ids already stored as finished, diverged or failed (``retry_failed=True``
  trains the failed ones again); a run stored as cancelled, or failed because its worker died or
  the executor lost it (not the config's fault), is trained again;
* only this process writes the store: workers return their ``Run``, so nothing is saved twice and
  a Dask cluster needs no shared file system.

Every submission and save is appended to ``<store>/.sweep-journal.jsonl`` (one JSON object per
line), which says which runs were in flight when a sweep was killed.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import time
from collections import Counter
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..store import Run, RunStore
from .executors import make_executor
from .sweep import Sweep

JOURNAL = ".sweep-journal.jsonl"
DONE_STATUSES = ("finished", "diverged", "failed")


def _run_one(config: dict, threads: int = 1) -> Run:
    """Train one config (in a worker) and return its Run without the live model and data (its
    weights on the CPU instead, for the store)."""
    import torch

    from ..train import TrainConfig, train

    before = torch.get_num_threads()
    if threads and before != threads:
        torch.set_num_threads(threads)  # same thread count everywhere: same results everywhere
    try:
        run = train(TrainConfig.from_dict(config))
    finally:
        if threads and before != threads:
            torch.set_num_threads(before)
    run.weights, run.model, run.dataset = run.state_dict(), None, None
    run.meta["worker_pid"] = os.getpid()
    return run


class Journal:
    """Append-only log of sweep events; each line is flushed to the OS before the call returns."""

    def __init__(self, path: Path | None):
        self._f = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(path, "a", buffering=1)  # noqa: SIM115 - closed in close()

    def write(self, event: str, **fields) -> None:
        if self._f is not None:
            now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")
            self._f.write(json.dumps({"time": now, "event": event, "pid": os.getpid(), **fields}) + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def read_journal(store: RunStore | str) -> pd.DataFrame:
    """The journal as a frame: ``time, event, pid, sweep, run_id, status`` (events in order)."""
    root = store.root if isinstance(store, RunStore) else Path(store)
    path = root / JOURNAL
    if not path.exists():
        return pd.DataFrame(columns=["time", "event", "pid", "sweep", "run_id", "status"])
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows)


@dataclass
class SweepResult:
    """What a sweep did: counts by status, skipped (already stored) runs, errors, wall time."""

    name: str
    run_ids: list
    executor: str
    counts: Counter = field(default_factory=Counter)
    skipped: int = 0
    errors: dict = field(default_factory=dict)
    wall_time: float = 0.0
    interrupted: bool = False

    @property
    def total(self) -> int:
        return len(self.run_ids)

    def summary(self) -> str:
        ran = sum(self.counts.values())
        parts = [f"{self.counts.get(s, 0)} {s}" for s in ("finished", "diverged", "failed", "cancelled")
                 if self.counts.get(s, 0)]
        line = (f"sweep {self.name!r} ({self.executor}): {self.total} runs; {self.skipped} already "
                f"stored, {ran} trained in {self.wall_time:.1f}s" + (": " + ", ".join(parts) if parts else ""))
        if self.interrupted:
            line += f"; interrupted with {self.total - self.skipped - ran} not run (rerun to resume)"
        for run_id, err in list(self.errors.items())[:10]:
            line += f"\n  {run_id} failed: {err}"
        if len(self.errors) > 10:
            line += f"\n  ... and {len(self.errors) - 10} more failed runs"
        return line


def _stored_status(store: RunStore, run_id: str) -> str | None:
    """The stored run's status (None: not stored; ``retry``: failed by the executor, not the config)."""
    if not store.has(run_id):
        return None
    meta = json.loads((store.root / run_id / "meta.json").read_text())  # no need to read the rows
    return "retry" if meta.get("executor_error") else meta.get("status")


def run_sweep(sweep: Sweep, store: RunStore | str = "data/runs", executor="local", *,
              workers: int | None = None, scheduler: str | None = None, retry_failed: bool = False,
              progress: bool = True, threads_per_run: int = 1, journal: bool = True) -> SweepResult:
    """Train every run of ``sweep`` not already in ``store``.

    Args:
        sweep: the grid.
        store: a RunStore or its root folder; each run is saved there as soon as it returns.
        executor: ``"local"`` (process pool), ``"serial"``, ``"dask"``, or an executor object
            (see :mod:`workbench.sweeps.executors`; not closed here).
        workers: processes for ``local``, or LocalCluster workers for ``dask`` without a scheduler.
        scheduler: a Dask scheduler address (``tcp://host:8786``).
        retry_failed: train runs stored as ``failed`` again.
        progress: show a progress bar with finished / running / failed counts.
        threads_per_run: torch threads per run (1: N workers use N cores).
        journal: append submissions and saves to ``<store>/.sweep-journal.jsonl``.

    Returns:
        A :class:`SweepResult`; ``result.summary()`` is a printable report. Ctrl-C stops
        submitting, keeps every saved run and returns with ``interrupted=True``.

    Note:
        A run that raises in a worker, or whose worker process dies twice, is saved as ``failed``
        with the error; a run whose loss turns NaN is saved as ``diverged``. The sweep goes on.
    """
    store = store if isinstance(store, RunStore) else RunStore(store)
    configs = sweep.configs()
    skip = {"finished", "diverged"} | (set() if retry_failed else {"failed"})
    todo = [c for c in configs if _stored_status(store, c.run_id) not in skip]
    own = isinstance(executor, str)
    ex = make_executor(executor, workers=workers, scheduler=scheduler,
                       threads_per_run=threads_per_run) if own else executor
    result = SweepResult(name=sweep.name, run_ids=[c.run_id for c in configs], executor=ex.name,
                         skipped=len(configs) - len(todo))
    log = Journal(store.root / JOURNAL if journal else None)
    log.write("sweep_start", sweep=sweep.name, runs=len(configs), todo=len(todo), executor=ex.name)
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"sweep {sweep.name}", unit="run")
    queue = list(reversed(todo))  # pop() from the end: grid order
    pending: dict = {}
    attempts: Counter = Counter()
    broken = 0  # worker deaths since the last run came back: many in a row means they cannot start
    t0 = time.perf_counter()
    try:
        while queue or pending:
            slots = ex.slots()
            while queue and len(pending) < slots:
                cfg = queue.pop()
                attempts[cfg.run_id] += 1
                pending[ex.submit(_run_one, cfg.to_dict(), threads_per_run,
                                  key=f"train-{cfg.run_id}-{attempts[cfg.run_id]}")] = cfg
                log.write("submit", sweep=sweep.name, run_id=cfg.run_id)
            if bar is not None:
                bar.set_postfix_str(_postfix(result.counts, _running(ex, pending)), refresh=True)
            for fut in ex.wait(set(pending), timeout=1.0):
                cfg = pending.pop(fut)
                try:
                    run = ex.result(fut)
                except BrokenProcessPool as exc:  # a worker died (OOM, segfault): retry once
                    broken += 1
                    if broken > 2 * slots + 2:
                        raise RuntimeError(
                            f"worker processes keep dying before returning a run ({exc}); a script "
                            f"that calls run_sweep must guard it with if __name__ == '__main__':, and "
                            f"the workers must be able to import workbench") from None
                    if attempts[cfg.run_id] < 2:
                        queue.append(cfg)
                        log.write("requeue", sweep=sweep.name, run_id=cfg.run_id, error=str(exc))
                        continue
                    run = _failed(cfg, f"worker process died twice: {exc}")
                except Exception as exc:  # noqa: BLE001 - recorded on the run, the sweep goes on
                    run = _failed(cfg, f"{type(exc).__name__}: {exc}")
                else:
                    broken = 0
                store.save(run)
                log.write("saved", sweep=sweep.name, run_id=run.run_id, status=run.status)
                result.counts[run.status] += 1
                if run.status == "failed":
                    result.errors[run.run_id] = run.error
                if bar is not None:
                    bar.set_postfix_str(_postfix(result.counts, _running(ex, pending)), refresh=False)
                    bar.update(1)
    except KeyboardInterrupt:
        result.interrupted = True
        log.write("interrupted", sweep=sweep.name, in_flight=[c.run_id for c in pending.values()])
    finally:
        result.wall_time = time.perf_counter() - t0
        if bar is not None:
            bar.set_postfix_str(_postfix(result.counts, 0), refresh=True)
            bar.close()
        if own:
            ex.close()
        log.write("sweep_end", sweep=sweep.name, counts=dict(result.counts), interrupted=result.interrupted)
        log.close()
    return result


def _failed(cfg, error: str) -> Run:
    """A run the executor lost: stored as failed, and trained again by the next rerun."""
    return Run(run_id=cfg.run_id, config=cfg.to_dict(), status="failed", error=error,
               started_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               meta={"executor_error": True})


def _running(ex, pending) -> int:
    """Runs in flight that a worker is training (the rest wait in the executor's queue)."""
    return min(len(pending), getattr(ex, "workers", None) or len(pending))


def _postfix(counts: Counter, running: int) -> str:
    return (f"finished={counts.get('finished', 0)} running={running} failed={counts.get('failed', 0)} "
            f"diverged={counts.get('diverged', 0)}")
