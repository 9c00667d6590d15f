"""Executors: where a sweep's runs execute, behind one small interface.

* ``serial``: one run after another in this process (debugging, tiny grids).
* ``local``: a process pool on this machine (the default); workers are started by ``forkserver``
  (Linux: torch is imported once in the server and each worker forks from it) or ``spawn``, never
  plain ``fork`` of a process whose torch may hold threads.
* ``dask``: a ``dask.distributed`` client, on a scheduler address (a real cluster:
  ``dask scheduler`` + ``dask worker``, or ``dask-jobqueue``) or on a ``LocalCluster`` it starts.

Interface: ``slots()`` (runs to keep in flight), ``submit(fn, *args, key=)`` -> future,
``wait(pending, timeout)`` -> the done futures, ``result(future)`` (raises what the task raised),
``close()``. Results come back to the caller, which alone writes the run store: workers need no
shared file system and a run is saved exactly once.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os

from .._validate import check_choice, check_positive

EXECUTORS = ("local", "serial", "dask")


def init_worker(threads: int, deterministic: bool | None = None) -> None:
    """Pool initializer: ``threads`` torch threads per worker (1: N workers use N cores, not
    N*N), and torch's deterministic-algorithms setting where one is given."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    if deterministic is not None:
        torch.use_deterministic_algorithms(deterministic)


def pick_start_method(start_method: str | None = None) -> str:
    """``start_method`` checked, or ``forkserver`` where the platform has it (the server imports
    torch once, each worker forks from it), else ``spawn``; never ``fork`` (a copy of a process
    with threads)."""
    methods = multiprocessing.get_all_start_methods()
    start_method = start_method or ("forkserver" if "forkserver" in methods else "spawn")
    check_choice("start method", start_method, [m for m in methods if m != "fork"])
    return start_method


def worker_context(preload: list[str], start_method: str | None = None):
    """The multiprocessing context of a worker pool; a forkserver imports ``preload`` first."""
    start_method = pick_start_method(start_method)
    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        ctx.set_forkserver_preload(preload)
    return ctx


class SerialExecutor:
    """Runs each task in this process when it is waited on, one at a time."""

    name = "serial"
    workers = 1

    def slots(self) -> int:
        return 1

    def submit(self, fn, *args, key: str | None = None) -> cf.Future:
        fut = cf.Future()
        fut._task = (fn, args)  # deferred: run in wait() so progress shows it as running first
        return fut

    def wait(self, pending, timeout: float | None = None) -> set:
        done = {f for f in pending if f.done()}
        if done:
            return done
        fut = next(iter(pending))
        fn, args = fut._task
        try:
            run = fn(*args)
        except Exception as exc:  # handed to the runner through result(), as a pool would
            fut.set_exception(exc)
            return {fut}
        if getattr(run, "meta", {}).get("interrupted"):
            # train() caught the Ctrl-C and returned the run cancelled: in this process it is
            # the sweep's Ctrl-C too, which stops it (the run is in flight, not stored)
            raise KeyboardInterrupt
        fut.set_result(run)
        return {fut}

    def result(self, fut):
        return fut.result()

    def close(self) -> None:
        pass


class LocalExecutor:
    """A process pool of ``workers`` processes (default: the CPU count).

    Note:
        Each worker imports torch and the workbench once (about 2 s with ``spawn``, less with a
        preloaded ``forkserver``); tiny runs are then a few milliseconds of overhead each.
    """

    name = "local"

    def __init__(self, workers: int | None = None, *, start_method: str | None = None,
                 threads_per_run: int = 1):
        self.workers = workers or os.cpu_count() or 1
        check_positive("workers", self.workers, integer=True)
        self.start_method = pick_start_method(start_method)
        self.threads = threads_per_run
        self._pool = None

    def _ensure_pool(self) -> cf.ProcessPoolExecutor:
        if self._pool is None or getattr(self._pool, "_broken", False):
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            ctx = worker_context(["workbench.sweeps.runner"], self.start_method)
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=init_worker,
                                                initargs=(self.threads,))
        return self._pool

    def slots(self) -> int:
        return 2 * self.workers  # one queued behind each running task: no idle gap between runs

    def submit(self, fn, *args, key: str | None = None) -> cf.Future:
        return self._ensure_pool().submit(fn, *args)

    def wait(self, pending, timeout: float | None = None) -> set:
        return cf.wait(pending, timeout=timeout, return_when=cf.FIRST_COMPLETED).done

    def result(self, fut):
        return fut.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class DaskExecutor:
    """Tasks on a ``dask.distributed`` cluster.

    Args:
        scheduler: a scheduler address (``tcp://host:8786``); None starts a ``LocalCluster``
            with ``workers`` single-threaded worker processes (or threads with ``processes=False``).
        client: an existing ``distributed.Client`` to use instead (not closed by :meth:`close`).

    Workers must be able to import ``workbench`` (same environment as the client).
    """

    name = "dask"

    def __init__(self, scheduler: str | None = None, *, workers: int | None = None,
                 processes: bool = True, client=None):
        try:
            import distributed
        except ImportError:  # pragma: no cover - dask is an optional dependency
            raise ValueError("executor 'dask' needs dask.distributed: pip install 'dask[distributed]'") from None
        self._distributed = distributed
        self._own_client, self._cluster = client is None, None
        if client is not None:
            self.client = client
        elif scheduler:
            try:
                self.client = distributed.Client(scheduler, timeout="20s")
            except (OSError, TimeoutError) as exc:
                raise ValueError(f"cannot reach the Dask scheduler {scheduler!r} ({exc}); start one with "
                                 f"'dask scheduler' and workers with 'dask worker {scheduler}'") from None
        else:
            n = workers or os.cpu_count() or 1
            check_positive("workers", n, integer=True)
            self._cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=processes,
                                                     dashboard_address=None)
            self.client = distributed.Client(self._cluster)
        self.workers = workers

    def slots(self) -> int:
        threads = sum(self.client.nthreads().values())  # re-read: adaptive clusters grow and shrink
        return 2 * max(threads, 1)

    def submit(self, fn, *args, key: str | None = None):
        return self.client.submit(fn, *args, key=key, pure=False, retries=0)

    def wait(self, pending, timeout: float | None = None) -> set:
        try:
            return set(self._distributed.wait(list(pending), timeout=timeout,
                                              return_when="FIRST_COMPLETED").done)
        except TimeoutError:
            return set()

    def result(self, fut):
        try:
            return fut.result()
        finally:
            fut.release()

    def close(self) -> None:
        if self._own_client:
            self.client.close()
            if self._cluster is not None:
                self._cluster.close()


def make_executor(name: str = "local", *, workers: int | None = None, scheduler: str | None = None,
                  threads_per_run: int = 1, **options):
    """``make_executor("local", workers=4)``, ``make_executor("dask", scheduler="tcp://...:8786")``."""
    check_choice("executor", name, EXECUTORS)
    if scheduler and name != "dask":
        raise ValueError(f"--scheduler applies to executor 'dask', not {name!r}")
    if name == "serial":
        return SerialExecutor()
    if name == "local":
        return LocalExecutor(workers, threads_per_run=threads_per_run, **options)
    return DaskExecutor(scheduler, workers=workers, **options)
