"""Where a dashboard job's training runs: the job's work, in this process or in a child process.

:func:`run_job` is a job's work wherever it runs: train, then the ``after`` step on a finished run.
:func:`child_main` runs it in a child process and sends what happens over a pipe: per-step points in
batches (every :data:`FLUSH_S` seconds), probe frames as they come, state changes, then the run
(without its live model and data set; before the ``after`` step, when there is one) and the
``after`` frame, or an error. Children are forked
from a forkserver (:func:`context`) that has imported torch, the trainer and the probes once, so
starting one costs tens of milliseconds; this module imports no dashboard code (no panel), which
keeps that server and every child light. The after-training probes the dashboards use live here
too, as module-level functions, so that ``functools.partial`` of them pickles.
"""
from __future__ import annotations

import multiprocessing
import threading
import time

from .hooks import CancelToken, every
from .trainer import train

FLUSH_S = 0.05  # a training process sends its buffered points this often
# "__main__" first: the forkserver imports the main script once (``panel serve``'s, pytest's);
# without it every child would import it again (multiprocessing's spawn rule), e.g. all of panel.
# As with any multiprocessing start method but fork, a script that starts jobs needs the
# ``if __name__ == "__main__":`` guard.
PRELOAD = ["__main__", "workbench.train.worker", "workbench.probes"]


class ChildFailed(RuntimeError):
    """A training process failed; the message is its error (``"Type: message"``) or how it ended."""


def run_job(cfg, probes, probe_every, after, cancel, on_step, on_probe, set_state,
            on_trained=None):
    """What a job does wherever it runs: train, then ``after`` on a finished run.
    ``on_trained(run)`` is told the run before ``after`` starts (a measurement that is stopped
    must not take the trained run with it)."""
    schedule = every(probe_every) if probes and probe_every else None
    run = train(cfg, probes=probes or None, schedule=schedule, cancel=cancel, callback=on_step,
                probe_callback=on_probe)
    extra = None
    if after is not None and run.status == "finished" and not cancel.cancelled:
        if on_trained is not None:
            on_trained(run)
        set_state("probing")
        extra = after(run, cancel)
    return run, extra


def _portable(run):
    """The run without its live model and data set, its weights as a state dict: what a
    training process sends back (and the store saves)."""
    import dataclasses

    return dataclasses.replace(run, weights=run.state_dict(), model=None, dataset=None)


def child_main(cfg, probes, probe_every, after, threads, conn, stop) -> None:
    """A training process: the job's work, with its points sent in batches over ``conn``."""
    import torch

    torch.set_num_threads(threads)
    points: list = []
    last = [time.monotonic()]

    def flush() -> None:
        if points:
            conn.send(("points", list(points)))
            points.clear()
        last[0] = time.monotonic()

    def on_step(step, metrics) -> None:
        points.append((step, metrics))
        if time.monotonic() - last[0] >= FLUSH_S:
            flush()

    def on_probe(step, frame) -> None:
        flush()  # the probe's step after the points before it
        conn.send(("frame", step, frame))

    def set_state(state) -> None:
        flush()
        conn.send(("state", state))

    sent = []  # the run, once sent before a measurement ("trained")

    def on_trained(run) -> None:
        flush()
        conn.send(("trained", _portable(run)))
        sent.append(run)

    try:
        run, extra = run_job(cfg, probes, probe_every, after, CancelToken(stop), on_step, on_probe,
                             set_state, on_trained)
        flush()
        # live objects stay here; the frame and the weights (for the store) are the result,
        # sent once: after a measurement only its frame follows
        conn.send(("done", None if sent else _portable(run), extra))
    except BaseException as exc:  # noqa: BLE001  (report, never hang the worker)
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except (OSError, ValueError):
            pass
    finally:
        conn.close()


_CONTEXT = None
_CONTEXT_LOCK = threading.Lock()


def available() -> bool:
    """Whether training processes can be forked from a forkserver here (POSIX; not Windows)."""
    return "forkserver" in multiprocessing.get_all_start_methods()


def context():
    """The forkserver context, its server preloaded with the workbench (started on first use)."""
    global _CONTEXT
    with _CONTEXT_LOCK:
        if _CONTEXT is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(PRELOAD)
            _CONTEXT = ctx
        return _CONTEXT


def warm_up() -> None:
    """Start the forkserver that training processes fork from (imports torch once, ~2 s), so
    that the first job does not wait for it. Safe to call more than once."""
    from multiprocessing import forkserver

    if not available():
        return
    context()
    forkserver.ensure_running()


# -- after-training probes of the dashboards (picklable with functools.partial) ----------------
def hessian_vs_batch_size_after(run, cancel, *, batch_sizes, **kwargs):
    """``probes.hessian_vs_batch_size`` on the trained model and its training set (the sizes
    below the training set's size). The largest stable learning rates are for the run's own
    optimizer (:func:`~workbench.probes.hessian_vs_batch_size.optimizer_lr_options`; the
    Adam-preconditioned Hessian only for Adam/AdamW); ``kwargs`` take precedence."""
    from ..probes import hessian_vs_batch_size
    from ..probes.hessian_vs_batch_size import optimizer_lr_options

    kwargs = {"adam": False, **optimizer_lr_options(run.config), **kwargs}
    sizes = sorted(b for b in batch_sizes if b < run.dataset.n_train)
    return hessian_vs_batch_size(run.model, run.dataset, run.dataset.loss_fn, batch_sizes=sizes,
                                 **kwargs)


def landscape_after(run, cancel, *, examples, other_run=None, store_root=None, **kwargs):
    """``probes.landscape`` of the trained model on its first ``examples`` training examples;
    with ``other_run`` (a run id in the store at ``store_root``) the checkpoint of
    ``direction="checkpoint"`` is that run's stored weights."""
    from ..probes import landscape
    from ..store import RunStore

    n = min(examples, run.dataset.n_train)
    batch = (run.dataset.x_train[:n], run.dataset.y_train[:n])
    if other_run is not None:
        kwargs["other"] = RunStore(store_root).weights(other_run)
    return landscape(run.model, batch, run.dataset.loss_fn, **kwargs)
