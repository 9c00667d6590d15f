"""Dashboard jobs: training in a child process (the default) and in the worker thread."""
import os
import time

import pandas as pd
import pytest
import torch

from workbench.dashboard._jobs import Job
from workbench.data import DataConfig
from workbench.models import MLPConfig
from workbench.probes import PROBES
from workbench.train import TrainConfig


def cfg(steps=60, model=None):
    return TrainConfig(model=model or MLPConfig(depth=2, width=16),
                       data=DataConfig(name="gaussian_mixture"), steps=steps, batch_size=32,
                       eval_every=0)


def pid_probe(model, batch, loss_fn):
    """A picklable probe that says which process it ran in."""
    return pd.DataFrame({"metric": ["pid"], "value": [float(os.getpid())]})


def exit_probe(model, batch, loss_fn):
    os._exit(3)  # the training process dies without a word


def stuck_probe(model, batch, loss_fn):
    """A probe that keeps the process busy outside the steps (as its start-up does: torch's first
    run in a fresh process takes seconds), where no cancel is checked."""
    time.sleep(60)
    return pd.DataFrame({"metric": ["never"], "value": [0.0]})


def stuck_after(run, cancel):
    """A measurement of the trained model that does not look at ``cancel``."""
    time.sleep(60)


def run_job(job, timeout=60.0):
    job.start()
    points, frames = [], []
    deadline = time.monotonic() + timeout
    while not job.done:
        assert time.monotonic() < deadline, "job did not end"
        p, f = job.drain()
        points += p
        frames += f
        time.sleep(0.01)
    p, f = job.drain()
    return points + p, frames + f


def test_process_and_thread_jobs_stream_the_same_run(one_thread):
    # one_thread: the thread job at the training process's thread count, so the same bits
    probes = {"channel_health": PROBES["channel_health"], "smoothness_small": PROBES["smoothness_small"],
              "pid": pid_probe}
    out = {}
    for isolation in ("process", "thread"):
        job = Job(cfg(), probes=probes, probe_every=20, isolation=isolation)
        assert job.isolation == isolation
        out[isolation] = (job, *run_job(job))
    (pjob, ppoints, pframes), (tjob, tpoints, tframes) = out["process"], out["thread"]
    assert pjob.result.status == tjob.result.status == "finished"
    assert [s for s, _ in ppoints] == [s for s, _ in tpoints] == list(range(60))
    assert [m["loss"] for _, m in ppoints] == [m["loss"] for _, m in tpoints]  # same seed, same run
    cols = ["step", "probe", "metric", "layer", "value"]
    strip = [f for f in pframes if "pid" not in set(f.metric)]
    tstrip = [f for f in tframes if "pid" not in set(f.metric)]
    pd.testing.assert_frame_equal(pd.concat(strip)[cols].reset_index(drop=True),
                                  pd.concat(tstrip)[cols].reset_index(drop=True))
    # the fused in-step probes stayed fused after pickling (one frame per probe step, not two)
    assert len(strip) == len(tstrip) == 4  # steps 0, 20, 40 and the last
    pids = {isolation: {f.value.iloc[0] for f in frames if "pid" in set(f.metric)}
            for isolation, frames in (("process", pframes), ("thread", tframes))}
    assert pids["thread"] == {float(os.getpid())}
    assert len(pids["process"]) == 1 and pids["process"] != pids["thread"]
    drop = ["wall_time", "pid"]  # timings and pids differ; everything else is the same run
    a, b = (j.result.frame for j in (pjob, tjob))
    pd.testing.assert_frame_equal(a[~a.metric.isin(drop)].reset_index(drop=True),
                                  b[~b.metric.isin(drop)].reset_index(drop=True))
    # the process sends the trained weights back (for the store), the thread keeps the model
    pw, tw = pjob.result.state_dict(), tjob.result.state_dict()
    assert pjob.result.model is None and pw.keys() == tw.keys()
    assert all(torch.equal(pw[k], tw[k]) for k in pw)


def test_unpicklable_parts_fall_back_to_the_thread():
    job = Job(cfg(steps=5), probes={"lam": lambda model, batch, loss_fn: pd.DataFrame()}, isolation="process")
    assert job.isolation == "thread"
    run_job(job)
    assert job.result.status == "finished"


def test_after_runs_in_the_training_process():
    import functools

    from workbench.train.worker import landscape_after

    after = functools.partial(landscape_after, examples=64, dims=1, steps=5)
    job = Job(cfg(steps=10), after=after, isolation="process")
    run_job(job)
    assert job.result.status == "finished" and job.error is None
    assert set(job.extra.probe) == {"landscape"} and len(job.extra) > 0


def test_a_dying_training_process_is_reported_not_hung():
    job = Job(cfg(steps=50), probes={"exit": exit_probe}, probe_every=10, isolation="process")
    run_job(job)
    assert job.result.status == "failed"
    assert "training process ended without a result" in job.error


def test_cancel_reaches_the_process_within_a_second():
    job = Job(cfg(steps=2000, model=MLPConfig(depth=4, width=128)), isolation="process")
    job.start()
    deadline = time.monotonic() + 60
    while not job.drain()[0]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    t0 = time.monotonic()
    job.cancel()
    job.join(5)
    assert job.done and time.monotonic() - t0 < 1.0
    assert job.result.status == "cancelled" and 0 < job.result.steps_done < 2000


def _cancel_when(job, ready, timeout=60.0) -> float:
    """Start the job, wait for ``ready(job)``, cancel, wait for the end; the seconds it took."""
    job.start()
    deadline = time.monotonic() + timeout
    while not ready(job):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    t0 = time.monotonic()
    job.cancel()
    job.join(10)
    assert job.done
    return time.monotonic() - t0


def test_cancel_ends_a_process_busy_outside_the_steps_within_a_second():
    """Stop before the first step (here a probe stuck at step 0, as a process starting up is):
    the process is ended after a short grace, the run is cancelled, nothing is kept."""
    job = Job(cfg(steps=50), probes={"stuck": stuck_probe}, probe_every=10, isolation="process")
    took = _cancel_when(job, lambda j: j.state == "training")
    assert took < 1.5 and job.result.status == "cancelled" and job.result.steps_done == 0
    assert job.error is None and not job.measurement_stopped


def test_cancel_during_the_measurement_keeps_the_trained_run(tmp_path):
    """Stop while ``after`` measures the trained model: the measurement is ended within a
    second, the trained run comes back finished, with its rows and weights, and is stored."""
    from workbench.store import RunStore

    store = RunStore(tmp_path)
    job = Job(cfg(steps=30), after=stuck_after, store=store, isolation="process")
    took = _cancel_when(job, lambda j: j.state == "probing")
    assert took < 1.5 and job.measurement_stopped and job.extra is None and job.error is None
    run = job.result
    assert run.status == "finished" and run.steps_done == 30 and len(run.metric("loss")) == 30
    assert store.has_weights(run.run_id) and job.saved == f"saved as `{run.run_id}`"
    # without Stop, the run is sent once (before the measurement) and comes back with its frame
    quick = Job(cfg(steps=10), after=_after_frame, isolation="process")
    run_job(quick)
    assert quick.result.status == "finished" and len(quick.result.metric("loss")) == 10
    assert list(quick.extra.metric) == ["steps"] and not quick.measurement_stopped


def _after_frame(run, cancel):
    return pd.DataFrame({"metric": ["steps"], "value": [float(run.steps_done)]})


def test_bad_isolation_is_a_value_error():
    with pytest.raises(ValueError, match="isolation.*process.*thread"):
        Job(cfg(), isolation="fork")


def test_an_error_in_the_training_process_reads_like_one_in_the_thread():
    errors = {}
    for isolation in ("process", "thread"):
        # an error outside the trainer (which turns a failing probe into a failed run)
        job = Job(cfg(steps=3), after=raise_after, isolation=isolation)
        run_job(job)
        errors[isolation] = (job.result.status, job.error)
    assert errors["process"] == errors["thread"] == ("failed", "ValueError: bad after step")


def raise_after(run, cancel):
    raise ValueError("bad after step")


def test_no_forkserver_means_the_thread(monkeypatch):
    from workbench.dashboard import _jobs

    monkeypatch.setattr(_jobs, "worker_available", lambda: False)
    assert Job(cfg(steps=3), isolation="process").isolation == "thread"
    monkeypatch.setenv("NORMLAB_JOB_ISOLATION", "thread")
    monkeypatch.setattr(_jobs, "worker_available", lambda: True)
    assert Job(cfg(steps=3)).isolation == "thread"


def test_a_reserved_job_takes_its_slot_at_once_and_gives_it_back():
    from workbench.dashboard._jobs import TrainingSlots

    slots = TrainingSlots(1)
    job = Job(cfg(steps=5), slots=slots)
    assert job.reserve() and slots.in_use == 1
    assert not Job(cfg(steps=5), slots=slots).reserve()  # busy: no queueing
    run_job(job)
    assert job.result.status == "finished" and slots.in_use == 0
