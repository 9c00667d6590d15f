"""Probe costs: each probe in training steps, the 2-D landscape against ``loss-landscapes``, and
the overhead of the ``standard`` preset on a training run at its default schedule.

1. Every registered probe on one model and batch (a residual BatchNorm MLP on digits, so every
   probe applies), median seconds per call divided by the median seconds of one SGD training
   step (forward, backward, update) on the same model and batch.
2. A 41x41 filter-normalized random plane on the digits MLP in eval mode: ``landscape`` (one point
   per call, and batched) against ``loss_landscapes.random_plane`` (marcellodebernardi/
   loss-landscapes) on the same model, batch and grid, interleaved. The peer is never installed
   in the project venv: ``--peer-site`` (default ``$NORMLAB_PEER_SITE``) names the site-packages of
   a venv holding it; ``make bench`` builds ``.venv-peers`` (``make bench-peers``) and passes its
   site-packages. Without it this part prints a note.
3. ``train(cfg)`` against ``train(cfg, probes="standard")`` (default schedule: every steps//10),
   interleaved rounds, medians of the step-loop wall time (and of the whole ``train()`` call,
   which adds building the run's frame after the loop); then the preset's probes one by one
   (as plain callables, so the trainer neither runs them together nor inside the step) and each
   alone (inside the step, as the trainer runs a registered one), to attribute the overhead; and
   the same cost attributed within each run (its probe steps against its ordinary steps: steadier
   than comparing runs on a shared machine). Target: under 10%. The preset runs as one probe that
   reuses the training step's forward pass and gradient (``workbench.probes.together``): its
   cost is the two smoothness passes plus bookkeeping. The floor those two passes set is printed.
   3a. the same MLP at other run lengths (the default schedule probes ~11 times per run, so the
   overhead is about a fixed cost per run). 3b. the same on the ConvNet (GN+WS) and the Pre-LN
   transformer (``--no-cases`` skips 3a and 3b).

One torch thread (peers.md §5: two threads are erratic on this machine kind).

    python benchmarks/bench_probes.py [--reps 5] [--steps 400] [--rounds 5] [--peer-site PATH]
"""
from __future__ import annotations

import argparse
import copy
import functools
import os
import statistics
import sys
import time

import numpy as np
import torch

from workbench.data import DataConfig, make_dataset
from workbench.models import ConvNetConfig, MLPConfig, TransformerConfig, build_model, fit_to_data
from workbench.probes import PRESETS, PROBES
from workbench.probes.landscape import landscape
from workbench.train import TrainConfig, every, train

DIGITS = DataConfig(name="digits", n_train=1438, n_test=359)


def _median_time(fn, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _model(ds, **fields):
    torch.manual_seed(0)
    return build_model(fit_to_data(MLPConfig(**fields), ds.input_shape, ds.num_outputs, ds.task))


def probe_costs(ds, batch_size: int, reps: int) -> None:
    model = _model(ds, depth=3, width=64, norm="batch", residual=True).train()
    batch = (ds.x_train[:batch_size], ds.y_train[:batch_size])
    trained = copy.deepcopy(model)
    opt = torch.optim.SGD(trained.parameters(), lr=0.05, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = ds.loss_fn(trained(batch[0]), batch[1])
        loss.backward()
        opt.step()
        loss.item()

    t_step = _median_time(lambda: [step() for _ in range(20)], reps) / 20
    print(f"\n1. probe cost, residual BN MLP d3 w64 on digits, batch {batch_size}: "
          f"one training step = {t_step * 1e3:.3f} ms (median of {reps})")
    print(f"{'probe':24s} {'ms/call':>10s} {'train steps':>12s}")
    for name, fn in PROBES.items():
        try:
            t = _median_time(lambda fn=fn: fn(model, batch, ds.loss_fn), reps)
        except Exception as err:  # a probe another engineer is still writing must not stop the rest
            print(f"{name:24s} failed: {type(err).__name__}: {err}")
            continue
        print(f"{name:24s} {t * 1e3:10.2f} {t / t_step:12.1f}")


def _sgd(model, ds, steps: int, batch_size: int):
    """A few SGD steps, so the landscape is taken at trained weights (and BN shifts are nonzero:
    loss-landscapes' filter normalization divides by zero on an all-zero 1-D parameter)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, ds.n_train, (batch_size,), generator=g)
        opt.zero_grad(set_to_none=True)
        ds.loss_fn(model(ds.x_train[idx]), ds.y_train[idx]).backward()
        opt.step()
    return model


def landscape_vs_peer(ds, batch_size: int, reps: int, peer_site: str | None) -> None:
    model = _sgd(_model(ds, depth=3, width=64, norm="batch").train(), ds, 100, 32).eval()
    x, y = ds.x_train[:batch_size], ds.y_train[:batch_size]
    steps = 41
    print(f"\n2. 2-D landscape {steps}x{steps}, MLP d3 w64 BN (eval, after 100 SGD steps) on digits, "
          f"batch {batch_size}")
    per_call = {}
    for ppc in ("auto", 1, steps):
        per_call[ppc] = _median_time(lambda ppc=ppc: landscape(
            model, (x, y), ds.loss_fn, steps=steps, mode="eval", points_per_call=ppc), reps)
        label = "default (auto)" if ppc == "auto" else f"{ppc} point(s)/call"
        print(f"  workbench landscape, {label:18s} {per_call[ppc]:8.3f} s  "
              f"({per_call[ppc] / steps**2 * 1e3:.3f} ms/point)")
    if peer_site:
        sys.path.append(peer_site)
    try:
        import loss_landscapes
        import loss_landscapes.metrics
    except ImportError:
        print("  loss-landscapes not importable: no comparison (install it in a scratch venv and "
              "pass --peer-site <its site-packages>)")
        return
    metric = loss_landscapes.metrics.Loss(ds.loss_fn, x, y)

    def peer():
        torch.manual_seed(0)  # it draws its directions from the global RNG
        loss_landscapes.random_plane(model, metric, distance=1, steps=steps,
                                     normalization="filter", deepcopy_model=True)

    rounds = {"ours": [], "peer": []}
    peer()
    for _ in range(2 * reps):  # interleaved
        rounds["ours"].append(_median_time(
            lambda: landscape(model, (x, y), ds.loss_fn, steps=steps, mode="eval"), 1, warmup=0))
        rounds["peer"].append(_median_time(peer, 1, warmup=0))
    o, p = statistics.median(rounds["ours"]), statistics.median(rounds["peer"])
    o_min, p_min = min(rounds["ours"]), min(rounds["peer"])
    print(f"  loss-landscapes random_plane              {p:8.3f} s  ({p / steps**2 * 1e3:.3f} ms/point)")
    print(f"  interleaved, median (min) of {2 * reps}: workbench (default) {o:.3f} s ({o_min:.3f}) vs "
          f"loss-landscapes {p:.3f} s ({p_min:.3f}) -> speed-up {p / o:.2f}x ({p_min / o_min:.2f}x) "
          "(target: > 1)")


def _step_loop_times(cfg, variants: dict, rounds: int, totals: dict | None = None,
                     clocks: dict | None = None) -> dict[str, list[float]]:
    """Step-loop wall times of ``train(cfg, probes=...)`` for every ``{label: probes}``: one
    warm-up run each, then ``rounds`` interleaved rounds (every variant once per round).
    ``totals``: filled with the whole ``train()`` call's times too (data, model, the frame
    built after the loop); ``clocks``: with each run's per-step ``wall_time`` (seconds since the
    loop started, at the end of each step's bookkeeping)."""
    def wall(probes):
        t0 = time.perf_counter()
        run = train(cfg, probes=probes)
        clock = run.metric("wall_time").to_numpy()
        return clock, time.perf_counter() - t0

    for probes in variants.values():
        wall(probes)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for k, probes in variants.items():
            clock, total = wall(probes)
            times[k].append(float(clock[-1]))
            if totals is not None:
                totals.setdefault(k, []).append(total)
            if clocks is not None:
                clocks.setdefault(k, []).append(clock)
    return times


def default_probe_steps(steps: int) -> set[int]:
    """The steps where ``train`` runs probes by default (``every(max(1, steps // 10))``)."""
    schedule = every(max(1, steps // 10))
    return {s for s in range(steps) if schedule(s, steps)}


def probe_step_excess(clock, probe_steps: set[int]) -> tuple[float, float]:
    """``(seconds, share)``: what the probe steps of one run cost beyond ordinary steps, from
    that run's own step clock, so that the machine's drift between runs cancels out.

    The steps where probes ran, and the steps right after them (a probe's work may land in
    either, depending on where the clock is read), are compared with the median of all other
    steps of the same run; ``share`` is the excess over the run's loop time without it."""
    durations = np.diff(np.concatenate([[0.0], clock]))
    touched = sorted({s for p in probe_steps for s in (p, p + 1) if s < len(durations)})
    others = np.delete(durations, touched)
    excess = float(np.sum(durations[touched] - np.median(others)))
    return excess, excess / (float(clock[-1]) - excess)


def preset_overhead(steps: int, rounds: int) -> None:
    cfg = TrainConfig(model=MLPConfig(depth=3, width=64, norm="batch"), data=DIGITS,
                      batch_size=32, steps=steps, eval_every=0)
    preset = PRESETS["standard"]
    print(f"\n3. overhead of the 'standard' preset {preset} on a {steps}-step run "
          f"(MLP d3 w64 BN, digits, B=32, probes every {max(1, steps // 10)} steps)")

    # the preset's probes as plain callables: not run together, each before the step
    one_by_one = {name: functools.partial(PROBES[name]) for name in preset}
    variants = {"none": None, "standard": "standard", "cheap (no smoothness)": "cheap",
                "standard, one by one": one_by_one, **{name: [name] for name in preset}}
    totals: dict[str, list[float]] = {}
    clocks: dict[str, list] = {}
    times = _step_loop_times(cfg, variants, rounds, totals, clocks)
    b_med, b_min = statistics.median(times["none"]), min(times["none"])
    print(f"  {'probes':24s} {'median s':>9s} {'overhead':>9s} {'min s':>7s} {'overhead':>9s}")
    for k, ts in times.items():
        med, lo = statistics.median(ts), min(ts)
        print(f"  {k:24s} {med:9.3f} {100 * (med / b_med - 1):8.1f}% {lo:7.3f} "
              f"{100 * (lo / b_min - 1):8.1f}%")
    # smoothness_small's two extra forward/backward passes alone, at this step's cost, cost
    # (probe steps x 2 / steps) of the run: the part no bookkeeping trim can remove
    scheduled = default_probe_steps(steps)
    probe_steps = len(scheduled)
    print(f"  floor of the two smoothness passes: {probe_steps} probe steps x 2 passes / {steps} "
          f"steps = {100 * 2 * probe_steps / steps:.1f}% (if a pass costs a training step)")
    # the same cost attributed within each run: the probe steps against that run's other steps
    # (the A/B medians above compare runs, whose speed drifts by several percent on a shared
    # machine; this is steadier, but it leaves out any slowing of the steps that follow)
    excess = [probe_step_excess(c, scheduled) for c in clocks["standard"]]
    print(f"  within each 'standard' run: its {probe_steps} probe steps cost "
          f"{1e3 * statistics.median(e for e, _ in excess):.1f} ms more than as many ordinary "
          f"steps -> {100 * statistics.median(r for _, r in excess):.1f}% of the loop "
          f"(median of {rounds} runs; range {100 * min(r for _, r in excess):.1f}–"
          f"{100 * max(r for _, r in excess):.1f}%)")
    whole = {k: statistics.median(totals[k]) for k in ("none", "standard")}
    print(f"  whole train() call (data, model, the frame built after the loop), medians: none "
          f"{whole['none']:.3f} s, standard {whole['standard']:.3f} s -> "
          f"{100 * (whole['standard'] / whole['none'] - 1):.1f}%")
    print("  target: standard under 10% of training time")


def preset_overhead_by_length(lengths: list[int], rounds: int) -> None:
    """The same MLP at other run lengths: the default schedule probes ~11 times whatever the
    length, so the preset's cost is about fixed per run and its share falls like 1/steps."""
    cfg = TrainConfig(model=MLPConfig(depth=3, width=64, norm="batch"), data=DIGITS,
                      batch_size=32, eval_every=0)
    print(f"\n3a. 'standard' by run length, same MLP ({rounds} interleaved rounds, medians)")
    print(f"  {'steps':>6s} {'probe steps':>11s} {'overhead':>9s} {'extra ms/run':>13s}")
    for steps in lengths:
        times = _step_loop_times(cfg.replace(steps=steps), {"none": None, "standard": "standard"},
                                 rounds)
        base, std = statistics.median(times["none"]), statistics.median(times["standard"])
        probe_steps = len(default_probe_steps(steps))
        print(f"  {steps:6d} {probe_steps:11d} {100 * (std / base - 1):8.1f}% "
              f"{1e3 * (std - base):13.1f}")


def preset_overhead_cases(steps: int, rounds: int) -> None:
    """The same comparison (none vs standard) on the other model families, at the same run
    length: the probe's passes grow with the model, its bookkeeping does not."""
    cases = {
        "MLP d3 w64 BN, digits, B=128": TrainConfig(
            model=MLPConfig(depth=3, width=64, norm="batch"), data=DIGITS, batch_size=128),
        "ConvNet GN+WS, shapes, B=32": TrainConfig(
            model=ConvNetConfig(norm="group", ws=True), data=DataConfig(name="shapes"),
            batch_size=32),
        "Transformer Pre-LN, markov, B=16": TrainConfig(
            model=TransformerConfig(), data=DataConfig(name="markov"), batch_size=16,
            optimizer="adam", lr=1e-3),
    }
    print(f"\n3b. 'standard' on other models, {steps}-step runs, probes every "
          f"{max(1, steps // 10)} steps ({rounds} interleaved rounds, medians)")
    print(f"  {'model':34s} {'ms/step':>8s} {'overhead':>9s}")
    for name, cfg in cases.items():
        times = _step_loop_times(cfg.replace(steps=steps, eval_every=0),
                                 {"none": None, "standard": "standard"}, rounds)
        base, std = statistics.median(times["none"]), statistics.median(times["standard"])
        print(f"  {name:34s} {1e3 * base / steps:8.2f} {100 * (std / base - 1):8.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--no-cases", action="store_true",
                    help="skip 3b (the preset's overhead on the ConvNet and transformer)")
    ap.add_argument("--peer-site", default=os.environ.get("NORMLAB_PEER_SITE"),
                    help="site-packages of a scratch venv with loss-landscapes installed "
                         "(default: $NORMLAB_PEER_SITE)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    ds = make_dataset(DIGITS)
    probe_costs(ds, args.batch, args.reps)
    landscape_vs_peer(ds, args.batch, args.reps, args.peer_site)
    preset_overhead(args.steps, args.rounds)
    if not args.no_cases:
        preset_overhead_by_length([200, args.steps * 2, args.steps * 4], args.rounds)
        preset_overhead_cases(args.steps, args.rounds)


if __name__ == "__main__":
    main()
