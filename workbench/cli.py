"""Command line: ``python -m workbench train ...``, ``runs``, ``probe RUN_ID PROBE`` and ``sweep``.

Bad input is reported in one line with exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys

STORE_DEFAULT = "data/runs"


def _parse_value(text: str):
    """``8`` -> 8, ``0.5`` -> 0.5, ``true`` -> True, anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _options(pairs: list[str] | None, flag: str = "--norm-option") -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"{flag} expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = _parse_value(value.strip())
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workbench",
                                description="Normlab workbench: train small models, store tidy runs.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one model and save the run")
    t.add_argument("--model", default="mlp", help="mlp, convnet or transformer")
    t.add_argument("--norm", default=None, help="normalization layer (default: the model's)")
    t.add_argument("--norm-option", action="append", metavar="KEY=VALUE",
                   help="norm option, e.g. groups=4 or virtual_batch_size=8 (repeatable)")
    t.add_argument("--ws", action="store_true", help="Weight Standardization (mlp, convnet)")
    t.add_argument("--residual", action="store_true", help="residual MLP")
    t.add_argument("--depth", type=int, help="hidden layers (mlp) or blocks (transformer)")
    t.add_argument("--width", type=int, help="MLP width, ConvNet base channels or d_model")
    t.add_argument("--placement", help="transformer LN placement: pre, post, mix, ln_scaling")
    t.add_argument("--dataset", default=None,
                   help="gaussian_mixture, teacher, shapes, digits, markov (default fits the model)")
    t.add_argument("--n-train", type=int, default=None,
                   help="training examples (default 2048; digits: 1400 of its 1797)")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--micro-batch", type=int, default=None)
    t.add_argument("--steps", type=int, default=200)
    t.add_argument("--optimizer", default="sgd")
    t.add_argument("--lr", type=float, default=0.05)
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--nesterov", action="store_true", help="Nesterov momentum (sgd, lars)")
    t.add_argument("--betas", type=float, nargs=2, default=None, metavar=("BETA1", "BETA2"),
                   help="Adam/AdamW/LAMB moment decays (default 0.9 0.999)")
    t.add_argument("--eps", type=float, default=None, help="Adam/AdamW/LAMB epsilon (default 1e-8)")
    t.add_argument("--trust-coefficient", type=float, default=None,
                   help="LARS trust coefficient eta (default 0.001)")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--lr-scaling", default="none")
    t.add_argument("--base-batch-size", type=int, default=32)
    t.add_argument("--warmup-steps", type=int, default=0)
    t.add_argument("--lr-decay", default="constant")
    t.add_argument("--batch-schedule", default="constant")
    t.add_argument("--max-batch-size", type=int, default=None)
    t.add_argument("--growth-every", type=int, default=None,
                   help="steps between batch growths (--batch-schedule step; default 100)")
    t.add_argument("--growth-factor", type=int, default=None,
                   help="the batch grows by this factor (--batch-schedule step or norm_test; default 2)")
    t.add_argument("--norm-test-theta", type=float, default=None,
                   help="norm test threshold theta (--batch-schedule norm_test; default 0.5)")
    t.add_argument("--norm-test-every", type=int, default=None,
                   help="steps between norm tests (--batch-schedule norm_test; default 10)")
    t.add_argument("--shuffle", default=None,
                   help="reshuffle (every epoch, default), single (one permutation) or none")
    t.add_argument("--eval-every", type=int, default=50,
                   help="steps between test-set evaluations (0: only after the last step)")
    t.add_argument("--probes", nargs="*", default=None, help="probe names or a preset")
    t.add_argument("--probe-every", type=int, default=None,
                   help="steps between probe measurements (default: steps // 10; the last step "
                        "is measured too)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--store", default=STORE_DEFAULT)
    t.add_argument("--device", default="auto")
    t.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's); CPU numbers are reproducible for "
                        "a fixed count, which the run records as meta torch_threads")
    t.add_argument("--no-progress", action="store_true")

    r = sub.add_parser("runs", help="list stored runs")
    r.add_argument("--store", default=STORE_DEFAULT)

    q = sub.add_parser("probe", help="run a probe on a stored run's final weights")
    q.add_argument("run_id", help="a stored run (python -m workbench runs lists them)")
    q.add_argument("probe", help="a probe name, e.g. hessian_top_eigs, channel_health, landscape")
    q.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="a keyword argument of the probe, e.g. --option k=3 (repeatable)")
    q.add_argument("--examples", type=int, default=256,
                   help="the probe's batch: the first N examples of the split (default 256)")
    q.add_argument("--split", choices=["train", "test"], default="train")
    q.add_argument("--out", default=None, help="also write the tidy rows to this Parquet file")
    q.add_argument("--store", default=STORE_DEFAULT)
    q.add_argument("--device", default="cpu")

    from .sweeps.cli import add_sweep_parser

    add_sweep_parser(sub)
    return p


_DEFAULT_DATA = {"mlp": "gaussian_mixture", "convnet": "shapes", "transformer": "markov"}


def config_from_args(a) -> TrainConfig:  # noqa: F821
    from ._validate import check_choice
    from .data import DataConfig
    from .data.config import check_fits_in_memory
    from .models import model_config
    from .train import TrainConfig

    check_choice("model", a.model, _DEFAULT_DATA)
    fields: dict = {}
    if a.norm is not None:
        fields["norm"] = a.norm
    if a.norm_option:
        fields["norm_options"] = _options(a.norm_option)
    if a.depth is not None:
        fields["depth" if a.model != "convnet" else "stages"] = a.depth
    if a.width is not None:
        fields[{"mlp": "width", "convnet": "channels", "transformer": "d_model"}[a.model]] = a.width
    if a.ws:
        if a.model == "transformer":
            raise ValueError("--ws applies to mlp and convnet, not 'transformer'")
        fields["ws"] = True
    if a.residual:
        if a.model != "mlp":
            raise ValueError(f"--residual applies to mlp only (convnet and transformer are residual); got {a.model!r}")
        fields["residual"] = True
    if a.placement is not None:
        if a.model != "transformer":
            raise ValueError(f"--placement applies to the transformer, not {a.model!r}")
        fields["placement"] = a.placement
    extra: dict = {}
    applies = {"growth_every": ("step",), "growth_factor": ("step", "norm_test"),
               "norm_test_theta": ("norm_test",), "norm_test_every": ("norm_test",)}
    for name, schedules in applies.items():
        if getattr(a, name) is not None:
            if a.batch_schedule not in schedules:
                raise ValueError(f"--{name.replace('_', '-')} applies to --batch-schedule "
                                 f"{' or '.join(schedules)}, not {a.batch_schedule!r}")
            extra[name] = getattr(a, name)
    if a.betas is not None or a.eps is not None:
        if a.optimizer not in ("adam", "adamw", "lamb"):
            raise ValueError(f"--betas and --eps apply to optimizers adam, adamw, lamb, not {a.optimizer!r}")
    if a.trust_coefficient is not None and a.optimizer != "lars":
        raise ValueError(f"--trust-coefficient applies to optimizer lars, not {a.optimizer!r}")
    for name in ("betas", "eps", "trust_coefficient", "shuffle"):
        if getattr(a, name) is not None:
            extra[name] = tuple(a.betas) if name == "betas" else getattr(a, name)
    name = a.dataset or _DEFAULT_DATA[a.model]
    n_train = a.n_train if a.n_train is not None else (1400 if name == "digits" else 2048)
    n_test = min(512, max(1, n_train // 4))
    if name == "digits":  # it ships 1797 examples: test on what training leaves
        n_test = max(1, min(n_test, 1797 - n_train))
    data = DataConfig(name=name, n_train=n_train, n_test=n_test, seed=0)
    check_fits_in_memory(data)  # an --n-train too big for memory: one line, not a killed process
    return TrainConfig(model=model_config(a.model, **fields), data=data, steps=a.steps,
                       batch_size=a.batch_size, micro_batch=a.micro_batch, optimizer=a.optimizer,
                       lr=a.lr, momentum=a.momentum, nesterov=a.nesterov, weight_decay=a.weight_decay,
                       lr_scaling=a.lr_scaling, base_batch_size=a.base_batch_size,
                       warmup_steps=a.warmup_steps, lr_decay=a.lr_decay,
                       batch_schedule=a.batch_schedule, max_batch_size=a.max_batch_size,
                       eval_every=a.eval_every, seed=a.seed, **extra)


def _cmd_train(a) -> int:
    from .store import RunStore
    from .train import every, train

    cfg = config_from_args(a)
    probes = a.probes[0] if a.probes and len(a.probes) == 1 else a.probes  # train checks the names
    if a.probe_every is not None and not a.probes:
        raise ValueError("--probe-every sets when the probes run: name them with --probes")
    if a.probe_every is not None and a.probe_every < 1:
        raise ValueError(f"--probe-every must be a positive number of steps, got {a.probe_every}")
    schedule = None if a.probe_every is None else every(a.probe_every)
    if a.threads is not None:
        if a.threads < 1:
            raise ValueError(f"--threads must be a positive number of threads, got {a.threads}")
        import torch

        torch.set_num_threads(a.threads)
    run = train(cfg, probes=probes or None, schedule=schedule, store=RunStore(a.store),
                progress=not a.no_progress, device=a.device)
    s = run.summary()
    line = (f"run {run.run_id}: {run.status} after {run.steps_done} steps in {run.wall_time:.1f}s; "
            f"final train loss {s['final_loss']:.4f}")
    if s["test_accuracy"] == s["test_accuracy"]:  # not NaN
        line += f", test accuracy {s['test_accuracy']:.3f}"
    if run.status == "diverged":
        line += f"; diverged at step {run.diverged_step}"
    if run.error:
        line += f"; error: {run.error}"
    print(line)
    if "not_saved" in run.meta:
        print(f"not saved: {run.meta['not_saved']}")
    else:
        print(f"saved to {a.store}/{run.run_id}")
    if run.meta.get("interrupted"):
        return 130  # Ctrl-C, as a shell reports it
    return 0 if run.status in ("finished", "diverged", "cancelled") else 1


def _cmd_runs(a) -> int:
    import pandas as pd

    from .store import RunStore

    table = RunStore(a.store).summary()
    if table.empty:
        print(f"no runs in {a.store}")
        return 0
    cols = ["run_id", "label", "status", "model", "norm", "dataset", "optimizer", "batch_size", "lr", "seed",
            "steps", "final_loss", "test_accuracy", "started_at"]
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def _check_out(path: str) -> None:
    """A ValueError unless ``path`` can be written: its folder exists and is writable, and it is
    not itself a folder. Checked before the probe runs, so its rows are not lost."""
    import os

    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"--out {path!r} is a folder; give a file path, e.g. "
                         f"{os.path.join(path, 'rows.parquet')!r}")
    if not os.path.isdir(folder):
        raise ValueError(f"--out {path!r}: its folder {folder!r} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--out {path!r}: its folder {folder!r} is not writable")


def _cmd_probe(a) -> int:
    import inspect
    import math

    import pandas as pd

    from ._validate import check_choice
    from .probes import PROBES
    from .store import RunStore
    from .utils import resolve_device, takes_lr

    check_choice("probe", a.probe, PROBES)
    if a.examples < 1:
        raise ValueError(f"--examples must be at least 1, got {a.examples}")
    fn, options = PROBES[a.probe], _options(a.option, "--option")
    accepted = [n for n, p in inspect.signature(fn).parameters.items() if p.kind == p.KEYWORD_ONLY]
    for key in options:
        check_choice(f"option of {a.probe}", key, accepted)
    if a.out:
        _check_out(a.out)
    run = RunStore(a.store).restore(a.run_id, device=resolve_device(a.device))
    if run.status == "diverged":
        print(f"note: run {run.run_id} diverged at step {run.diverged_step}; its stored weights "
              "are those at which the loss became NaN/inf", file=sys.stderr)
    if takes_lr(fn) and "lr" not in options:  # smoothness: the step size the run last trained at
        last = run.final("lr")
        options["lr"] = last if math.isfinite(last) else run.config["lr"]
    ds = run.dataset
    x, y = (ds.x_train, ds.y_train) if a.split == "train" else (ds.x_test, ds.y_test)
    n = min(a.examples, x.shape[0])
    frame = fn(run.model, (x[:n], y[:n]), ds.loss_fn, **options)
    frame.insert(0, "run_id", run.run_id)
    frame.insert(1, "step", run.steps_done)  # the weights after the last step
    print(f"{a.probe} on run {run.run_id} ({run.status} after {run.steps_done} steps), "
          f"{n} {a.split} examples: {len(frame)} rows")
    shown = frame[[c for c in ("probe", "metric", "layer", "value") if c in frame]]
    with pd.option_context("display.width", 200, "display.max_rows", 40):
        print(shown.to_string(index=False, max_rows=40, float_format=lambda v: f"{v:.6g}"))
    if a.out:
        frame.to_parquet(a.out, index=False)
        print(f"rows written to {a.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from .sweeps.cli import run_sweep_command

        commands = {"train": _cmd_train, "runs": _cmd_runs, "probe": _cmd_probe,
                    "sweep": run_sweep_command}
        return commands[args.command](args)
    except (ValueError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (a probe, loading): no traceback
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
