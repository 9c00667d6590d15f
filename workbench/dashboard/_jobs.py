"""Training jobs for the dashboards: worker threads, a server-wide cap on trainings, session limits.

A :class:`Job` trains one :class:`~workbench.train.TrainConfig` from a daemon worker thread. The
worker only appends to a lock-protected buffer (per-step metrics, probe frames) and never touches a
widget; the session's periodic callback ``drain()``s the buffer on the event loop. Before training,
a job waits for one of the server's :data:`SLOTS` (``NORMLAB_MAX_TRAININGS``, default 4), so a
crowd of sessions queues instead of starving the machine; while it waits its state is ``"queued"``.

Where the training itself runs (``isolation``, default ``NORMLAB_JOB_ISOLATION`` or
``"process"``): in a child process that the worker thread starts and reads from, or in the worker
thread itself (``"thread"``). A training thread shares the server's GIL with the Bokeh/Tornado
event loop and every other session's training: each time a torch op releases the GIL, the event
loop may take it and the training waits (measured: 20% fewer steps per second inside the
dashboard than in a plain loop, and two sessions' trainings serialize on one GIL). A child process
has its own interpreter (bench_dashboard: within 3% of a plain loop when it has a core to
itself) and sends its points in batches every ``train.worker.FLUSH_S`` seconds over a pipe.
Children are forked from a *forkserver* that has imported torch and the workbench once
(``train.worker.warm_up()``, called when the server starts), so a job starts in tens of
milliseconds, not seconds. Probes and the ``after`` step must then be picklable (module-level
functions, ``functools.partial`` of them); a job whose parts are not, or on a system without
the forkserver start method (Windows), falls back to the thread.
"""
from __future__ import annotations

import math
import os
import pickle
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from .._validate import check_choice
from ..data import DATASETS, DataConfig
from ..models import MODELS
from ..norms import NORMS, norm_layouts
from ..store import Run, RunStore
from ..train import CancelToken, TrainConfig
from ..train.config import DATASET_INPUTS, MODEL_INPUTS
from ..train.worker import ChildFailed, child_main, context, run_job
from ..train.worker import available as worker_available

# Per-session limits: one user cannot hold the server for long or build a huge model.
MAX_STEPS = 2000
MAX_BATCH = 1024
MAX_WIDTH = 256   # MLP width, ConvNet channels, transformer d_model
MAX_DEPTH = 8     # MLP layers, ConvNet stages, transformer blocks
# Width and depth alone do not bound a model: a ConvNet doubles its channels every stage, so
# width 256 at 8 stages asks for ~10^10 parameters (it froze a 24 GB machine). A Pre-LN
# transformer at the width and depth limits has ~6.3M.
MAX_PARAMS = 8_000_000
REFRESH_MS = 200  # 5 plot updates a second
TESTS_PER_RUN = 10  # test-set evaluations of a dashboard run, at most
ISOLATIONS = ("process", "thread")
# after Stop, how long a training process may take to end by itself (it checks between steps)
# before it is terminated: while starting up or measuring it checks nothing
STOP_GRACE_S = 0.5
SAVED_STATUSES = ("finished", "diverged")  # complete results; cancelled/failed runs are not kept
DEFAULT_NORM = {"mlp": "batch", "convnet": "batch", "transformer": "layer"}
DEFAULT_DATA = {"mlp": "gaussian_mixture", "convnet": "shapes", "transformer": "markov"}


class TrainingSlots:
    """A counting semaphore that a waiting job can give up on (its cancel token) and report on."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._cond = threading.Condition()
        self.in_use = 0
        self.waiting = 0

    def acquire(self, cancel: CancelToken, poll: float = 0.05) -> bool:
        """Take a slot; False if ``cancel`` fired while waiting."""
        with self._cond:
            self.waiting += 1
            try:
                while self.in_use >= self.capacity:
                    if cancel.cancelled:
                        return False
                    self._cond.wait(poll)
                if cancel.cancelled:
                    return False
                self.in_use += 1
                return True
            finally:
                self.waiting -= 1

    def try_acquire(self) -> bool:
        """Take a slot if one is free now (never waits)."""
        with self._cond:
            if self.in_use >= self.capacity:
                return False
            self.in_use += 1
            return True

    def release(self) -> None:
        with self._cond:
            self.in_use -= 1
            self._cond.notify()

    def describe(self) -> str:
        return (f"queued: {self.in_use} of {self.capacity} training slots on this server are busy "
                f"({self.waiting} waiting); starts when one frees up")


def default_isolation() -> str:
    """Where jobs train unless told: ``NORMLAB_JOB_ISOLATION`` (``process`` or ``thread``),
    ``process`` by default."""
    return os.environ.get("NORMLAB_JOB_ISOLATION", "process")


def _capacity() -> int:
    try:
        return max(1, int(os.environ.get("NORMLAB_MAX_TRAININGS", "4")))
    except ValueError:
        return 4


SLOTS = TrainingSlots(_capacity())


# -- choices -----------------------------------------------------------------------------------
def norms_for(kind: str) -> list[str]:
    """The norms a model kind can use: those with its layout that its config accepts."""
    config_cls = MODELS[kind][0]
    out = []
    for name in NORMS:
        if config_cls.layout not in norm_layouts(name):
            continue
        try:
            config_cls(norm=name)
        except ValueError:  # e.g. a transformer takes only some token norms
            continue
        out.append(name)
    return out


def datasets_for(kind: str) -> list[str]:
    """The data sets whose inputs (features, images, tokens) a model kind can take."""
    return [d for d in DATASETS if DATASET_INPUTS[d] in MODEL_INPUTS[kind]]


def data_config(name: str) -> DataConfig:
    """Default sizes (2048 train, 512 test), or an 80/20 split of a data set that has fewer."""
    cap, default = DATASETS[name].max_examples, DataConfig()
    if cap is not None and cap < default.n_train + default.n_test:
        n_train = round(cap * 0.8)
        return DataConfig(name=name, n_train=n_train, n_test=cap - n_train)
    return DataConfig(name=name)


def check_limits(*, steps=None, batch_size=None, width=None, depth=None) -> None:
    """Raise ValueError naming the first value over a per-session limit."""
    for name, value, top in (("steps", steps, MAX_STEPS), ("batch size", batch_size, MAX_BATCH),
                             ("width", width, MAX_WIDTH), ("depth", depth, MAX_DEPTH)):
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if value > top:
            raise ValueError(f"{name} must be at most {top} in the dashboard, got {value}")


def count_parameters(cfg: TrainConfig) -> int:
    """The parameters of the model ``cfg`` trains, counted on the meta device (no memory, no
    initialization): the input and output sizes from a two-example copy of its data set."""
    import dataclasses

    import torch

    from ..data import make_dataset
    from ..models import build_model

    data = make_dataset(dataclasses.replace(cfg.data, n_train=2, n_test=1))
    with torch.device("meta"):
        model = build_model(cfg.model_for(data))
    return sum(p.numel() for p in model.parameters())


def eval_every(steps: int) -> int:
    """``TrainConfig.eval_every`` for a dashboard run of ``steps`` steps: every ceil(steps / 10)
    steps, so at most :data:`TESTS_PER_RUN` evaluations (the last after the last step)."""
    return -(-steps // TESTS_PER_RUN)


def add_test_points(points, metric: str, into: tuple[list, list]) -> None:
    """Append to ``into`` (steps, values) the test-set ``metric`` that the trainer's callback
    carries after an evaluation (``test_<metric>``, of the weights after the step: step + 1)."""
    steps, values = into
    for step, m in points:
        v = m.get(f"test_{metric}")
        if v is not None and math.isfinite(v):
            steps.append(step + 1)
            values.append(v)


def eval_points(run: Run, metric: str) -> tuple[list, list]:
    """(steps, values) of a finished run's every finite test-set ``metric``, the evaluation
    after its last step included."""
    s = run.metric(metric, "eval").sort_index()
    s = s[np.isfinite(s.to_numpy())]
    return s.index.tolist(), s.tolist()


def check_model_size(cfg: TrainConfig) -> TrainConfig:
    """``cfg``, or a ValueError when its model is over :data:`MAX_PARAMS` parameters."""
    n = count_parameters(cfg)
    if n > MAX_PARAMS:
        raise ValueError(f"this model has {n / 1e6:,.1f}M parameters; at most "
                         f"{MAX_PARAMS / 1e6:g}M in the dashboard (a ConvNet doubles its "
                         "channels every stage: lower the width or the depth)")
    return cfg


# -- a training job ----------------------------------------------------------------------------
class Job:
    """One run in a worker thread: queued -> training -> done; drained on the event loop.

    Args:
        cfg: the run.
        probes: ``{name: fn(model, batch, loss_fn) -> frame}`` run every ``probe_every`` steps
            (as :func:`~workbench.train.train` runs them: registered training-time probes run
            together inside the step, ``lr`` is passed where taken); their frames are streamed as
            they arrive, tagged with ``step``, rows named by their own ``probe`` column
            (``smoothness_small``'s rows are ``smoothness``).
        store: where finished and diverged runs are saved (None: nowhere).
        after: ``after(run, cancel) -> frame`` run where the training ran, once it finished
            (e.g. a Hessian probe on the trained model); its frame comes back in ``extra``.
        isolation: ``"process"`` (train in a child process; the default, see the module
            docstring) or ``"thread"`` (train in the worker thread).
        label: a name for the run (the Arena's lane name), kept in its meta and shown by the
            Runs app beside the run id; at most 100 characters are kept.
    """

    def __init__(self, cfg: TrainConfig, *, probes: dict | None = None, probe_every: int = 0,
                 store: RunStore | None = None, after: Callable | None = None,
                 slots: TrainingSlots | None = None, isolation: str | None = None,
                 label: str | None = None):
        self.cfg, self.store, self.after = cfg, store, after
        self.label = (label or "")[:100]
        isolation = isolation or default_isolation()
        check_choice("isolation", isolation, ISOLATIONS)
        if isolation == "process" and not (worker_available() and _picklable((cfg, probes, after))):
            isolation = "thread"  # e.g. a lambda probe (it cannot reach another process), Windows
        self.isolation = isolation
        self.slots = slots or SLOTS
        self.cancel_token = CancelToken()
        self._lock = threading.Lock()
        self._points: list[tuple[int, dict]] = []
        self._frames: list[pd.DataFrame] = []
        self.state = "new"
        self.result: Run | None = None
        self.saved: str | None = None
        self.extra: pd.DataFrame | None = None
        self.error: str | None = None
        self.measurement_stopped = False  # Stop ended the ``after`` step; the run is kept
        self._probes = dict(probes or {})
        self._probe_every = probe_every
        self._reserved = False  # a slot taken by reserve(): the worker does not queue for one
        self.thread = threading.Thread(target=self._work, name=f"train-{cfg.run_id}", daemon=True)

    def reserve(self) -> bool:
        """Take a training slot now if one is free, never waiting (the live app offers no queue);
        the job then starts training at once. False when every slot is busy."""
        self._reserved = self.slots.try_acquire()
        return self._reserved

    def start(self) -> None:
        self.state = "queued"
        try:
            self.thread.start()
        except BaseException:
            if self._reserved:  # no worker will release it
                self.slots.release()
            raise

    def cancel(self) -> None:
        self.cancel_token.cancel()

    def join(self, timeout: float | None = None) -> None:
        if self.thread.is_alive():
            self.thread.join(timeout)

    @property
    def done(self) -> bool:
        return self.state == "done"

    def drain(self) -> tuple[list[tuple[int, dict]], list[pd.DataFrame]]:
        """Points and probe frames that arrived since the last call (event loop side)."""
        with self._lock:
            points, frames = self._points, self._frames
            self._points, self._frames = [], []
        return points, frames

    # -- worker side ---------------------------------------------------------------------------
    def _on_probe(self, step: int, frame: pd.DataFrame) -> None:
        tagged = frame.assign(step=step)
        with self._lock:
            self._frames.append(tagged)

    def _on_step(self, step: int, metrics: dict) -> None:
        with self._lock:
            self._points.append((step, metrics))

    def _work(self) -> None:
        run = None
        try:
            if not self._reserved and not self.slots.acquire(self.cancel_token):
                run = Run(run_id=self.cfg.run_id, config=self.cfg.to_dict(), status="cancelled")
                return
            try:
                self.state = "training"
                if self.isolation == "process":
                    run, self.extra = self._train_in_process()
                else:
                    run, self.extra = run_job(
                        self.cfg, self._probes, self._probe_every, self.after, self.cancel_token,
                        self._on_step, self._on_probe, self._set_state)
            finally:
                self.slots.release()
            if self.label:
                run.meta["label"] = self.label
            if self.store is not None and run.status in SAVED_STATUSES:
                try:
                    self.store.save(run)
                    self.saved = f"saved as `{run.run_id}`"
                except OSError as exc:
                    self.saved = f"not saved: {exc}"
        except Exception as exc:  # noqa: BLE001  (a worker must always report back)
            self.error = str(exc) if isinstance(exc, ChildFailed) else f"{type(exc).__name__}: {exc}"
            run = Run(run_id=self.cfg.run_id, config=self.cfg.to_dict(), status="failed",
                      error=self.error)
        finally:
            with self._lock:
                self.result = run
            self.state = "done"  # last: once done, result (and extra) are final

    def _child_threads(self, threads: int) -> int:
        """Intra-op threads of a training process: the server's, shared among as many trainings
        as may run at once (toy models gain little from more, and 4 processes x all cores would
        oversubscribe the machine)."""
        return max(1, threads // self.slots.capacity)

    def _set_state(self, state: str) -> None:
        self.state = state

    def _train_in_process(self):
        """Train in a child process; relay its messages into the buffer until it is done."""
        import torch

        ctx = context()
        receive, send = ctx.Pipe(duplex=False)
        stop = ctx.Event()
        proc = ctx.Process(target=child_main, name=f"train-{self.cfg.run_id}", daemon=True,
                           args=(self.cfg, self._probes, self._probe_every, self.after,
                                 self._child_threads(torch.get_num_threads()), send, stop))
        proc.start()
        send.close()  # the child holds the only write end: EOF when it exits
        trained, last_step, stopped_at = None, -1, None
        try:
            while True:
                if self.cancel_token.cancelled:
                    stop.set()
                    stopped_at = stopped_at or time.monotonic()
                    if time.monotonic() - stopped_at > STOP_GRACE_S:
                        # not between steps: starting up (torch's first run in a fresh process
                        # takes seconds) or measuring the trained model. Ended here, so Stop
                        # takes effect within a second; a trained run is kept, finished.
                        proc.terminate()
                        if trained is not None:
                            self.measurement_stopped = True
                            return trained, None
                        return Run(run_id=self.cfg.run_id, config=self.cfg.to_dict(),
                                   status="cancelled", steps_done=last_step + 1), None
                if not receive.poll(0.05):
                    continue
                try:
                    msg = receive.recv()
                except EOFError:
                    proc.join(2.0)
                    code = proc.exitcode if proc.exitcode is not None else "unknown"
                    raise ChildFailed("the training process ended without a result "
                                      f"(exit code {code})") from None
                kind = msg[0]
                if kind == "points":
                    with self._lock:
                        self._points.extend(msg[1])
                    last_step = msg[1][-1][0]
                elif kind == "trained":
                    trained = msg[1]
                elif kind == "frame":
                    self._on_probe(msg[1], msg[2])
                elif kind == "state":
                    self.state = msg[1]
                elif kind == "error":
                    raise ChildFailed(msg[1])
                else:  # "done": the run (or None, sent before the measurement) and its frame
                    return msg[1] if msg[1] is not None else trained, msg[2]
        finally:
            stop.set()
            receive.close()
            proc.join(5.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(1.0)


def _picklable(obj) -> bool:
    try:
        pickle.dumps(obj)
        return True
    except Exception:  # noqa: BLE001  (lambdas, closures, bound methods of widgets, ...)
        return False


def store_for(store_root: str | Path | None) -> RunStore | None:
    return RunStore(store_root) if store_root is not None else None


def refresh_callback(callback, period_ms: int = REFRESH_MS):
    """Run ``callback`` every ``period_ms`` on the session's event loop, as *background* work.

    ``pn.state.add_periodic_callback`` marks every call as busy, which flips the template's
    busy spinner on and off (two more messages to the browser) 5 times a second for as long as
    a run lasts: a page that looks busy while it is only streaming points.
    """
    import panel as pn
    from panel.io.callbacks import PeriodicCallback

    cb = PeriodicCallback(callback=callback, period=period_ms, background=True)
    cb.start()
    pn.state._periodic.setdefault(pn.state.curdoc, []).append(cb)  # stopped with the session
    return cb


def session_bound() -> bool:
    import panel as pn

    return pn.state.curdoc is not None and pn.state.curdoc.session_context is not None
