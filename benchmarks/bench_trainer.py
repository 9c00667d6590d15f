"""Trainer overhead: ``workbench.train`` per-step time against a bare torch loop, same model and data.

Both loops run in this process, interleaved over several rounds, on the same model config, data,
batch indices and optimizer; the bare loop only does what any training loop must (index a batch,
forward, backward, step, read the loss). The trainer also records eight metrics per step (loss,
accuracy, lr, batch size, examples, gradient norm, weight norm, wall time) with one device sync.
Target: overhead under 5% with no probes.

How the trainer gets there (:mod:`workbench.train.flat`): parameters and gradients live in one
flat buffer per optimizer group, so the two norms are one reduction each and SGD/Adam/AdamW step
one tensor per group instead of every tensor (torch's CPU optimizers loop over tensors: ~80 us
for the 14 tensors of the default MLP). On a sub-millisecond toy step that saving pays for the
metrics; on larger steps both are small. The column ``per-tensor`` runs the trainer with
``flat_params=False`` (the model's own tensors, a fused ``_foreach_norm`` for the norms) to show
what the flat buffers buy; ``vs bare+metrics`` compares with a bare loop that computes the same
metrics the usual way.

    python benchmarks/bench_trainer.py [--steps 300] [--rounds 5]
"""
from __future__ import annotations

import argparse
import time

import torch

from workbench.data import BatchSampler, DataConfig, make_dataset
from workbench.models import ConvNetConfig, MLPConfig, build_model, fit_to_data
from workbench.train import TrainConfig, build_optimizer, train
from workbench.utils import seed_everything

CASES = {
    "mlp d3 w64 B32 (default)": TrainConfig(model=MLPConfig(depth=3, width=64, norm="batch"),
                                            batch_size=32),
    "mlp d4 w256 B128": TrainConfig(model=MLPConfig(depth=4, width=256, norm="batch"), batch_size=128),
    "convnet c16 B32 shapes": TrainConfig(model=ConvNetConfig(stages=2, channels=16, norm="group",
                                                              norm_options={"groups": 4}),
                                          data=DataConfig(name="shapes"), batch_size=32),
}


def bare_loop(cfg: TrainConfig, steps: int, metrics: bool = False) -> float:
    """Seconds per step of the plainest loop that trains the same thing.

    With ``metrics=True`` the loop also computes, by hand, what the trainer records every step
    (accuracy, gradient norm, weight norm): the difference to the trainer is then the engine's
    own cost (schedules, sampler bookkeeping, row recording, callbacks).
    """
    seed_everything(cfg.seed)
    ds = make_dataset(cfg.data)
    model = build_model(fit_to_data(cfg.model, ds.input_shape, ds.num_outputs, ds.task)).train()
    opt = build_optimizer(cfg.optimizer, model, lr=cfg.lr, momentum=cfg.momentum)
    sampler = BatchSampler(ds.n_train, seed=cfg.seed)
    params = list(model.parameters())
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = sampler.next(cfg.batch_size)
        x, y = ds.x_train[idx], ds.y_train[idx]
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = ds.loss_fn(out, y)
        loss.backward()
        if metrics:  # the same numbers the trainer records, computed the usual way
            with torch.no_grad():
                acc = (out.argmax(-1) == y).float().mean()
                gn = torch.nn.utils.get_total_norm([p.grad for p in params])
                wn = torch.nn.utils.get_total_norm(params)
                torch.stack([loss.detach(), acc, gn, wn]).tolist()
        else:
            loss.item()  # every real loop reads its loss
        opt.step()
    return (time.perf_counter() - t0) / steps


def trainer_loop(cfg: TrainConfig, steps: int, flat: bool = True) -> float:
    run = train(cfg.replace(steps=steps, eval_every=0), flat_params=flat)
    return run.metric("wall_time").iloc[-1] / steps  # time spent in the step loop only


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, steps {args.steps}, "
          f"rounds {args.rounds} (best of rounds: least disturbed by other load)")
    print(f"{'case':28s} {'bare ms/step':>13s} {'trainer ms/step':>16s} {'us/step':>8s} "
          f"{'overhead':>9s} {'per-tensor':>11s} {'vs bare+metrics':>16s}")
    worst = -float("inf")
    for name, cfg in CASES.items():
        bare_loop(cfg, 20), bare_loop(cfg, 20, metrics=True), trainer_loop(cfg, 20)  # warm-up
        trainer_loop(cfg, 20, flat=False)
        bare, bare_m, ours, per_tensor = [], [], [], []
        for _ in range(args.rounds):
            bare.append(bare_loop(cfg, args.steps))
            bare_m.append(bare_loop(cfg, args.steps, metrics=True))
            ours.append(trainer_loop(cfg, args.steps))
            per_tensor.append(trainer_loop(cfg, args.steps, flat=False))
        b, bm, o, pt = min(bare), min(bare_m), min(ours), min(per_tensor)
        worst = max(worst, o / b - 1)
        print(f"{name:28s} {b * 1e3:13.3f} {o * 1e3:16.3f} {(o - b) * 1e6:8.0f} {100 * (o / b - 1):8.1f}% "
              f"{100 * (pt / b - 1):10.1f}% {100 * (o / bm - 1):15.1f}%")
    print(f"worst overhead against the bare loop {100 * worst:.1f}% (target < 5%: "
          f"{'met' if worst < 0.05 else 'NOT met'}); per-tensor: the trainer without flat buffers; "
          "the last column: against a bare loop computing the same metrics")


if __name__ == "__main__":
    main()
