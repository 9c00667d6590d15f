"""parallel_map: the same results as a loop in this process, bit for bit, from worker processes."""
import pandas as pd
import pytest
import torch

from workbench import DataConfig, MLPConfig, TrainConfig, train
from workbench.parallel import parallel_map
from workbench.probes import layer_norms, on_batch
from workbench.train import every

DATA = DataConfig(name="gaussian_mixture", n_train=128, n_test=64)
HELD = (torch.randn(16, 32, generator=torch.Generator().manual_seed(3)), torch.arange(16) % 10)


def _frame(norm):
    """A notebook-style function: closes over module globals and a probe on a fixed batch."""
    cfg = TrainConfig(model=MLPConfig(depth=2, width=16, norm=norm), data=DATA, steps=12,
                      batch_size=16, micro_batch=4 if norm == "batch" else None, lr=0.1,
                      eval_every=0, seed=1)
    run = train(cfg, probes={"held": on_batch(layer_norms, HELD)}, schedule=every(5))
    f = run.frame.drop(columns="run_id")
    return f[f.metric != "wall_time"].reset_index(drop=True)  # the one row that is a clock


def test_workers_give_the_serial_numbers_bit_for_bit():
    norms = ["batch", "group", "none"]
    serial = [_frame(n) for n in norms]
    before = (torch.get_num_threads(), torch.get_rng_state())
    parallel = parallel_map(_frame, norms, workers=2)
    assert (torch.get_num_threads(), torch.equal(torch.get_rng_state(), before[1])) == (before[0], True)
    for s, p in zip(serial, parallel):
        pd.testing.assert_frame_equal(s, p, check_exact=True)
    assert (parallel[0].probe == "layer_norms").any()  # the probe ran in the workers
    # a lambda defined here travels too (cloudpickle), results in item order
    assert parallel_map(lambda k: k * k, [3, 1, 2], workers=2) == [9, 1, 4]


def _fail_on_two(k):
    if k == 2:
        raise ValueError(f"bad item {k}")
    return k


def test_errors_and_bad_input():
    with pytest.raises(ValueError, match="bad item 2"):
        parallel_map(_fail_on_two, [1, 2, 3], workers=2)
    assert parallel_map(_fail_on_two, [1, 3], workers=2) == [1, 3]  # the pool still works
    with pytest.raises(ValueError, match="workers must be"):
        parallel_map(abs, [1], workers=0)
    lock = __import__("threading").Lock()
    with pytest.raises(ValueError, match="cannot send fn='<lambda>' with item 0"):
        parallel_map(lambda k: k, [lock, lock], workers=2)
    assert parallel_map(abs, [-1, -2], workers=1) == [1, 2]  # one worker: this process


def test_an_interrupt_stops_the_calls_in_flight():
    """Ctrl-C (or a notebook's stop button) while workers run: they are terminated at once."""
    import signal
    import time

    from workbench import parallel

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 3.0)  # after the workers started (about a second)
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            parallel_map(time.sleep, [60, 60, 60], workers=2)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - t0 < 20
    assert "pool" not in parallel._POOL  # the next call starts a fresh pool
    assert parallel_map(abs, [-4, -5], workers=2) == [4, 5]
