"""Independent experiments on several CPU cores, with the numbers one process would give.

``parallel_map(fn, items, workers=2)`` calls ``fn(item)`` for every item in worker processes and
returns the results in order. It is for notebooks and scripts whose loops train small models one
after another (a learning-rate search per batch size, one run per normalization): the runs are
independent, so two cores finish them in about half the time.

Each worker runs at the caller's torch thread count and deterministic-algorithms setting, and
starts from the caller's environment (so a notebook's pinned CPU kernels hold there too): a run
gives bit for bit what it gives in the caller. ``fn`` and the items travel with cloudpickle, so
functions defined in a notebook work, along with the tensors and configs they use.
"""
from __future__ import annotations

import atexit
import concurrent.futures as cf
from collections.abc import Callable, Iterable

from ._validate import check_positive
from .sweeps.executors import init_worker, worker_context

__all__ = ["parallel_map"]

_POOL: dict = {}  # the one pool: "key" (workers, threads, deterministic) and "pool" (the executor)


def _pool(workers: int, threads: int, deterministic: bool) -> cf.ProcessPoolExecutor:
    """The worker pool, kept between calls (workers start once per notebook, not per call);
    a new one when the worker count or this process's torch settings changed."""
    key = (workers, threads, deterministic)
    if _POOL.get("key") != key or getattr(_POOL.get("pool"), "_broken", False):
        _close_pool(terminate=False)
        _POOL["pool"] = cf.ProcessPoolExecutor(workers, mp_context=worker_context(["workbench.parallel"]),
                                               initializer=init_worker, initargs=(threads, deterministic))
        _POOL["key"] = key
    return _POOL["pool"]


def _close_pool(terminate: bool) -> None:
    pool = _POOL.pop("pool", None)
    _POOL.pop("key", None)
    if pool is None:
        return
    if terminate:
        for proc in list(getattr(pool, "_processes", {}).values()):  # private, but the only way
            proc.terminate()
    pool.shutdown(wait=not terminate, cancel_futures=True)


atexit.register(_close_pool, terminate=False)


def _call(payload: bytes):
    import cloudpickle

    fn, item = cloudpickle.loads(payload)
    return fn(item)


def _bar(progress: bool, total: int):
    """A tqdm bar over ``total`` calls, or None."""
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total)


def _counted(value, bar):
    """``value``, with one more call counted on the progress bar (if any)."""
    if bar is not None:
        bar.update()
    return value


def parallel_map(fn: Callable, items: Iterable, *, workers: int = 2, progress: bool = False) -> list:
    """``[fn(item) for item in items]``, computed in ``workers`` processes (in this one if 1).

    Args:
        fn: any callable, a notebook's own function included; it must not rely on state that
            only exists in this process (open files, a live dashboard).
        items: the inputs; each call gets one.
        workers: processes at once. The pool is kept for the next call with the same
            ``workers`` (and torch thread settings), so its start-up is paid once.
        progress: a tqdm bar over the finished calls.

    Returns:
        The results, in the order of ``items``. They come back pickled: a trained model is a
        copy (return what you need from it, e.g. a number or a frame, rather than the model).

    Raises:
        ValueError: ``workers`` is not a positive integer, or ``fn`` / an item cannot be pickled.
        Whatever ``fn`` raised for the first failing item (in item order); the others still run.

    Note:
        Each call costs its pickling; the pool, once, a few seconds to start (about 4 s on a
        2-core machine here: a server imports torch and the workbench, the workers fork from
        it), so runs of a few seconds each gain little. Interrupting (Ctrl-C, a notebook's stop
        button) terminates the calls in flight.
    """
    check_positive("workers", workers, integer=True)
    items = list(items)
    if workers == 1 or len(items) <= 1:
        bar = _bar(progress, len(items))
        try:
            return [_counted(fn(item), bar) for item in items]
        finally:
            if bar is not None:
                bar.close()
    import cloudpickle
    import torch

    payloads = []
    for i, item in enumerate(items):
        try:
            payloads.append(cloudpickle.dumps((fn, item)))
        except Exception as err:  # noqa: BLE001  (pickling raises many kinds)
            raise ValueError(f"parallel_map: cannot send fn={getattr(fn, '__name__', fn)!r} with item "
                             f"{i} ({item!r:.60}) to a worker process: {err}") from err
    pool = _pool(workers, torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    bar = _bar(progress, len(items))
    results: list = [None] * len(items)
    errors: dict[int, BaseException] = {}
    futures = {}
    try:
        futures = {pool.submit(_call, p): i for i, p in enumerate(payloads)}
        for fut in cf.as_completed(futures):
            i = futures[fut]
            try:
                results[i] = _counted(fut.result(), bar)
            except cf.process.BrokenProcessPool:
                raise
            except Exception as err:  # noqa: BLE001  (re-raised below, first in item order)
                errors[i] = _counted(err, bar)
    except BaseException:
        # interrupted (Ctrl-C, the notebook's stop button) or a worker died: stop the runs in
        # flight now rather than after they finish, and start a fresh pool next time
        for fut in futures:
            fut.cancel()
        _close_pool(terminate=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    if errors:
        raise errors[min(errors)]
    return results
