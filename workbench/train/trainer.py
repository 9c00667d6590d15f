"""The training engine: one function, ``train(cfg) -> Run``, recording tidy rows as it goes.

Per step it records ``loss``, ``accuracy`` (classification/LM), ``lr``, ``batch_size``,
``examples`` (seen so far), ``grad_norm``, ``weight_norm`` and ``wall_time`` (probe ``"train"``),
test-set ``loss``/``accuracy`` every ``eval_every`` steps (probe ``"eval"``), and the rows of any
probes on their schedule. A NaN/inf loss ends the run as ``diverged`` keeping every row so far;
a cancel token or Ctrl-C ends it as ``cancelled``; an exception ends it as ``failed`` with the
error message. Nothing recorded is lost in any of these cases.
"""
from __future__ import annotations

import datetime as _dt
import math
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..data import BatchSampler, make_dataset, split_micro
from ..models import build_model
from ..norms import batch_split_ok
from ..probes import PRESET_NEEDS, PRESETS, PROBES
from ..probes._batch import NonFiniteError
from ..probes._tidy import tidy_parts
from ..probes.together import FUSABLE, Together
from ..store import COLUMNS, Run, RunStore, empty_frame
from ..utils import forward_uses_rng, preserved_state, resolve_device, seed_everything, takes_lr
from .config import TrainConfig
from .flat import FlatParams, can_flatten
from .hooks import CancelToken, every
from .optim import build_optimizer, param_groups
from .schedules import lr_at, make_batch_schedule

Probe = Callable[..., pd.DataFrame]
StepCallback = Callable[[int, dict], None]
_GLOBAL_RNG_LOCK = threading.Lock()
TRAIN_METRICS = ("loss", "accuracy", "lr", "batch_size", "examples", "grad_norm", "weight_norm",
                 "wall_time")


def resolve_probes(probes, *, model=None, skipped: dict | None = None) -> dict[str, Probe]:
    """Accept None, a preset name, a list of names/callables (a preset in the list stands for
    its probes; each probe once), or a ``{name: callable}`` dict.

    With ``model``, a probe that only a preset brought in and that cannot measure this model
    (:data:`~workbench.probes.PRESET_NEEDS`: ``channel_health`` on a model without activation
    modules) is left out, its reason put in ``skipped``; named on its own it stays (and raises)."""
    if probes is None:
        return {}
    if isinstance(probes, str):
        probes = [probes]
    if isinstance(probes, Mapping):
        items = list(probes.items())
    else:
        items = []
        named = {p for p in probes if isinstance(p, str) and p not in PRESETS}
        names = [q for p in probes for q in (PRESETS[p] if isinstance(p, str) and p in PRESETS else [p])]
        for p in names:
            if isinstance(p, str):
                if any(name == p for name, _ in items):
                    continue  # e.g. a preset and one of its probes
                if p not in PROBES:
                    raise ValueError(f"unknown probe {p!r}; choose one of: {', '.join(PROBES)} "
                                     f"or a preset: {', '.join(PRESETS)}")
                if model is not None and p not in named and p in PRESET_NEEDS:
                    try:
                        PRESET_NEEDS[p](model)
                    except ValueError as exc:
                        if skipped is not None:
                            skipped[p] = str(exc)
                        continue
                items.append((p, PROBES[p]))
            elif callable(p):
                items.append((getattr(p, "__name__", repr(p)), p))
            else:
                raise ValueError(f"a probe must be a name or a callable, got {p!r}")
    for name, fn in items:
        if not callable(fn):
            raise ValueError(f"probe {name!r} is not callable: {fn!r}")
    return _fuse(dict(items), PROBES)


def _fuse(fns: dict[str, Probe], registry: Mapping[str, Probe]) -> dict[str, Probe]:
    """Replace the registered training-time probes that share their passes (layer norms, channel
    health, smoothness) by one :class:`~workbench.probes.together.Together` entry: the same rows,
    under the same probe names, for less work. One of them alone is wrapped too, so that the
    trainer runs it inside the step, on the step's own forward pass and gradient (alone,
    ``layer_norms`` or ``channel_health`` would pay for a forward and backward of its own)."""
    shared = [n for n, fn in fns.items() if n in FUSABLE and fn is registry.get(n)]
    if not shared or sum(n.startswith("smoothness") for n in shared) > 1:
        return fns
    out: dict[str, Probe] = {}
    for name, fn in fns.items():
        if name not in shared:
            out[name] = fn
        elif name == shared[0]:
            out["+".join(shared)] = Together(shared)
    return out


class _Rows:
    """Column-wise row buffer: appending is cheap, the frame is built once at the end."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.step: list[int] = []
        self.probe: list[str] = []
        self.metric: list[str] = []
        self.value: list[float] = []
        self.extra: list[tuple[int, str, pd.DataFrame]] = []
        self.parts: list[tuple[int, list]] = []  # in-step probes' (probe, rows, iters) parts

    def add(self, step: int, probe: str, metrics: dict) -> None:
        for name, value in metrics.items():
            self.step.append(step)
            self.probe.append(probe)
            self.metric.append(name)
            self.value.append(float(value))

    def add_frame(self, step: int, probe: str, frame: pd.DataFrame) -> None:
        """Keep a probe's frame; its ``run_id``/``step`` (and missing columns) are added once, at the end."""
        clash = [c for c in ("run_id", "step") if c in frame.columns]
        if clash:  # raised here, inside the loop: the run ends as failed, its rows kept
            raise ValueError(f"probe {probe!r} returned column(s) {clash} that the trainer sets itself")
        self.extra.append((step, probe, frame))

    def add_parts(self, step: int, parts: list) -> None:
        """Keep the ``(probe, rows, iters)`` parts of a probe run inside the step; their frame is
        built once, at the end (:func:`~workbench.probes._tidy.tidy_parts`)."""
        self.parts.append((step, parts))

    def _probe_rows(self) -> pd.DataFrame | None:
        # (step of every row, name for rows without a probe column, frame)
        kept = [(np.full(len(f), step, dtype=np.int64), probe, f) for step, probe, f in self.extra
                if len(f)]
        if self.parts:  # the in-step probes' rows: one frame for all of their steps
            merged = tidy_parts(part for _, parts in self.parts for part in parts)
            lengths = [sum(len(rows) for _, rows, _ in parts) for _, parts in self.parts]
            steps = np.repeat(np.array([s for s, _ in self.parts], dtype=np.int64), lengths)
            if len(merged):
                kept.append((steps, "", merged))
        if not kept:
            return None
        out = pd.concat([f for _, _, f in kept], ignore_index=True)
        lengths = [len(f) for _, _, f in kept]
        out.insert(0, "step", np.concatenate([steps for steps, _, _ in kept]))
        out.insert(0, "run_id", self.run_id)
        named = np.repeat(np.array([p for _, p, _ in kept], dtype=object), lengths)
        if "probe" not in out:
            out["probe"] = named
        elif out["probe"].isna().any():  # a callable probe that did not name its rows
            out["probe"] = out["probe"].fillna(pd.Series(named, index=out.index))
        lacks_layer = np.repeat(np.array(["layer" not in f for _, _, f in kept]), lengths)
        if "layer" not in out:
            out["layer"] = ""
        elif lacks_layer.any():  # a callable probe without per-layer rows: whole model
            out.loc[lacks_layer, "layer"] = ""
        return out

    def frame(self) -> pd.DataFrame:
        base = pd.DataFrame({"run_id": self.run_id, "step": self.step, "probe": self.probe,
                             "metric": self.metric, "layer": "", "value": self.value})
        probes = self._probe_rows()
        frames = [f for f in (base, probes) if f is not None and len(f)]
        if not frames:
            return empty_frame()
        out = pd.concat(frames, ignore_index=True)
        out = out.sort_values("step", kind="stable", ignore_index=True)
        for col, dtype in zip(COLUMNS, ["string", "int64", "string", "string", "string", "float64"]):
            out[col] = out[col].astype(dtype)
        return out


@torch.no_grad()
def evaluate(model, dataset, *, batch_size: int = 1024) -> dict:
    """Test-set mean loss (and accuracy) in eval mode; restores the model's train/eval flag."""
    was_training = model.training
    model.eval()
    total, loss_sum, acc_sum, has_acc = 0, 0.0, 0.0, False
    try:
        for start in range(0, dataset.n_test, batch_size):
            x = dataset.x_test[start:start + batch_size]
            y = dataset.y_test[start:start + batch_size]
            out = model(x)
            n = len(x)
            loss_sum += float(dataset.loss_fn(out, y)) * n
            acc = dataset.accuracy(out, y)
            if acc is not None:
                has_acc, acc_sum = True, acc_sum + float(acc) * n
            total += n
    finally:
        model.train(was_training)
    out = {"loss": loss_sum / max(total, 1)}
    if has_acc:
        out["accuracy"] = acc_sum / max(total, 1)
    return out


def _loss_is_finite(model, loss_fn, x, y) -> bool:
    """Whether the loss on ``(x, y)`` at the current weights is finite; the model, its buffers
    and the RNG are left as they were."""
    with preserved_state(model, rng=forward_uses_rng(model), params=False, grads=False), \
            torch.no_grad():
        return math.isfinite(float(loss_fn(model(x), y)))


def _total(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.stack(parts).sum()


def _flat_grad(params) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def _noise_chunks(batch: int, model, device, chunks: int = 4) -> list[torch.Tensor]:
    """The norm test's disjoint chunks of a batch without micro-batches: ``k`` of ``m = B // k``
    examples each (the first ``k m`` of the batch), ``k`` from ``min(chunks, B)`` down to 2
    until ``m`` suits the model (:func:`~workbench.norms.batch_split_ok`); none when no ``k``
    does."""
    for k in range(min(chunks, batch), 1, -1):
        if batch_split_ok(model, batch // k):
            return list(torch.arange(k * (batch // k), device=device).view(k, batch // k))
    return []


def _chunk_grads(model, loss_fn, x, y, chunks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Flattened gradients on disjoint chunks of a batch, leaving the model untouched."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    with preserved_state(model, rng=False):
        for idx in chunks:
            g = torch.autograd.grad(loss_fn(model(x[idx]), y[idx]), params, allow_unused=True)
            grads.append(torch.cat([(gi if gi is not None else torch.zeros_like(p)).reshape(-1)
                                    for gi, p in zip(g, params)]))
    return grads


def train(cfg: TrainConfig, *, probes=None, schedule: Callable[[int, int], bool] | None = None,
          store: RunStore | str | None = None, cancel: CancelToken | None = None,
          progress: bool = False, callback: StepCallback | None = None,
          device: str | torch.device = "auto", flat_params: bool = True,
          probe_callback: Callable[[int, pd.DataFrame], None] | None = None) -> Run:
    """Train the model a config describes and return the :class:`~workbench.store.Run`.

    Args:
        cfg: the run.
        probes: None, a preset name (``"cheap"``), a list of probe names / callables, or a
            ``{name: fn}`` dict; each ``fn(model, (x, y), loss_fn) -> DataFrame`` is called on
            the step's batch before the update and its rows are tagged with ``run_id`` and ``step``.
            A probe with an ``lr`` keyword (smoothness, unless a partial fixed it) gets the
            step's learning rate. Layer norms, channel health and smoothness (registered, with
            their defaults), alone or together, run inside the training step as one probe sharing
            their passes with it (:mod:`workbench.probes.together`).
        schedule: when probes run, ``schedule(step, total_steps) -> bool``; default
            ``every(max(1, steps // 10))``.
        store: a RunStore (or its root folder) to save the run to when it ends, whatever its
            status, except that a cancelled or failed run does not replace a finished run of the
            same config there (a warning, and ``run.meta["not_saved"]`` says so).
        cancel: a :class:`CancelToken`; checked before every step.
        progress: show a tqdm progress bar.
        callback: ``callback(step, metrics)`` after every step, from the training thread
            (dashboards use it to stream points); keep it cheap. After a step that ended with
            a test-set evaluation (every ``eval_every`` steps but the last), ``metrics`` also
            holds ``test_loss`` (and ``test_accuracy``): the ``"eval"`` rows of step ``step + 1``.
            The evaluation after the last step is only in the run's rows.
        device: ``"auto"`` (CUDA when present) or a torch device.
        probe_callback: ``probe_callback(step, frame)`` with every probe frame as it is computed
            (``probe`` and ``layer`` on every row, as stored), from the training thread
            (dashboards stream them).
        flat_params: keep parameters and gradients in one flat buffer per optimizer group
            (:mod:`workbench.train.flat`): the same training, with cheaper norms and, for SGD,
            Adam and AdamW, one optimizer update per group instead of one per tensor. ``False``
            trains the model's own tensors (gradients set to None between steps).

    Note:
        Per step: one forward/backward per micro-batch, two norms and one device sync.
        The norm-test batch schedule adds a forward/backward on its check steps when the run has
        no micro-batches to compare.
    """
    if isinstance(store, str):
        store = RunStore(store)
    resolve_probes(probes)  # bad names fail here, before any work; resolved for the model below
    schedule = schedule or every(max(1, cfg.steps // 10))
    cancel = cancel or CancelToken()
    device = resolve_device(device)
    run_id = cfg.run_id
    rows = _Rows(run_id)
    run = Run(run_id=run_id, config=cfg.to_dict(), status="failed",
              started_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    bar = None
    captures: dict = {}  # in-step probe captures (activation hooks) of the current step
    t_start = t0 = time.perf_counter()
    step = 0
    try:
        dataset = make_dataset(cfg.data).to(device)  # own generators: no global RNG involved
        model_cfg = cfg.model_for(dataset)
        # Model init is the one consumer of the global RNG (data, sampler and probes use their
        # own generators), so seeding and building under a lock keeps concurrent runs
        # (dashboards train in threads) reproducible.
        with _GLOBAL_RNG_LOCK:
            seed_everything(cfg.seed)
            model = build_model(model_cfg)
        model = model.to(device)
        model.train()
        run.model, run.dataset = model, dataset
        skipped: dict[str, str] = {}
        probe_fns = resolve_probes(probes, model=model, skipped=skipped)
        lr_probes = {name: takes_lr(fn) for name, fn in probe_fns.items()}
        if skipped:
            run.meta["skipped_probes"] = skipped
            warnings.warn(f"run {run_id}: the preset's {', '.join(skipped)} left out: "
                          + "; ".join(skipped.values()), RuntimeWarning, stacklevel=2)
        groups = [g["params"] for g in param_groups(model, cfg.weight_decay)]
        flat = FlatParams(groups) if flat_params and can_flatten(groups) else None
        params = flat.params if flat is not None else [p for p in model.parameters() if p.requires_grad]
        opt = build_optimizer(cfg.optimizer, model, lr=cfg.lr, momentum=cfg.momentum,
                              nesterov=cfg.nesterov, weight_decay=cfg.weight_decay,
                              betas=cfg.betas, eps=cfg.eps, trust_coefficient=cfg.trust_coefficient,
                              flat=flat)
        sampler = BatchSampler(dataset.n_train, shuffle=cfg.shuffle, seed=cfg.seed)
        batches = make_batch_schedule(cfg.batch_schedule, batch_size=cfg.batch_size,
                                      max_batch_size=cfg.max_batch_size,
                                      growth_factor=cfg.growth_factor, growth_every=cfg.growth_every,
                                      theta=cfg.norm_test_theta, check_every=cfg.norm_test_every,
                                      multiple_of=cfg.micro_batch or 1,
                                      virtual_batch=cfg.schedule_virtual_batch())
        loss_fn = dataset.loss_fn
        zeros = torch.zeros_like  # a parameter unused this step has no .grad: its norm is 0
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, desc=f"{model_cfg.kind}/{model_cfg.norm} B={cfg.batch_size}",
                       leave=True)
        examples = 0
        lr_batch, lr_varies = None, cfg.lr_decay != "constant"
        # Probes that can run inside the step (layer norms + channel health + smoothness run
        # together, train mode): they reuse the step's forward and gradient instead of their own
        # first pass: the same rows, when the step is one batch and its forward draws no random
        # numbers (else they run before the step like any probe).
        in_step = {} if forward_uses_rng(model) else {
            name: fn for name, fn in probe_fns.items() if isinstance(fn, Together) and fn.mode == "train"}
        run.meta["setup_time"] = time.perf_counter() - t_start
        # CPU results depend on the thread count (reduction order): recorded for reruns
        run.meta["torch_threads"] = torch.get_num_threads()
        t0 = time.perf_counter()  # wall_time counts training steps, not data/model setup
        for step in range(cfg.steps):
            if cancel.cancelled:
                run.status = "cancelled"
                break
            B = batches.batch_size(step)
            if lr_varies or step <= cfg.warmup_steps or B != lr_batch:  # else unchanged since last step
                lr = lr_at(step, total_steps=cfg.steps, base_lr=cfg.lr, batch_size=B,
                           base_batch_size=cfg.base_batch_size, scaling=cfg.lr_scaling,
                           warmup_steps=cfg.warmup_steps, decay=cfg.lr_decay)
                lr_batch = B
                for group in opt.param_groups:
                    group["lr"] = lr
            idx = sampler.next(B).to(device)
            x, y = dataset.x_train[idx], dataset.y_train[idx]

            single = cfg.micro_batch is None or cfg.micro_batch >= B
            if probe_fns and schedule(step, cfg.steps):
                ran = blown_up = False
                for name, fn in probe_fns.items():
                    if single and name in in_step:
                        continue  # folded into this step's own forward/backward below
                    ran = True
                    kw = {"lr": lr} if lr_probes[name] else {}
                    try:
                        frame = fn(model, (x, y), loss_fn, **kw)
                    except Exception as exc:
                        # the last update blew the model up: this step's loss is NaN/inf, and a
                        # curvature probe fails on it (Lanczos on NaN) before the step says so.
                        # Skip the probes: the step records the loss and ends the run diverged.
                        if _loss_is_finite(model, loss_fn, x, y):
                            if not isinstance(exc, NonFiniteError):
                                raise
                            # finite here, not on the probe's own batch or in its gradient: the
                            # model is on its way out; this probe has no rows at this step
                            warnings.warn(f"step {step}: probe {name!r} skipped: {exc}", stacklevel=2)
                            continue
                        blown_up = True
                        break
                    rows.add_frame(step, name, frame)
                    if probe_callback is not None:
                        named = {c: v for c, v in (("probe", name), ("layer", "")) if c not in frame}
                        probe_callback(step, frame.assign(**named) if named else frame)
                if ran and flat is not None and not flat.linked():  # a probe replaced .data or .grad
                    flat.relink()
                if single and not blown_up:
                    captures = {name: fn.begin(model, reuse=True) for name, fn in in_step.items()}

            if single:
                micro = [(x, y)]  # no accumulation: no index copies on the hot path
            else:
                micro = [(x[mi], y[mi]) for mi in split_micro(torch.arange(B, device=device), cfg.micro_batch)]
            check_noise = cfg.batch_schedule == "norm_test" and step % cfg.norm_test_every == 0
            micro_grads = [] if check_noise and len(micro) > 1 else None
            if flat is not None:
                flat.zero_grad()
            else:
                opt.zero_grad(set_to_none=True)
            losses, accs, cumulative = [], [], None
            for xm, ym in micro:
                m = B if len(micro) == 1 else len(xm)
                out = model(xm)
                for capture in captures.values():
                    capture.close()
                loss = loss_fn(out, ym)
                (loss * (m / B) if m != B else loss).backward()
                losses.append(loss.detach() if m == B else loss.detach() * (m / B))
                acc = dataset.accuracy(out.detach(), ym)
                if acc is not None:
                    accs.append(acc if m == B else acc * (m / B))
                if micro_grads is not None:  # .grad holds the running sum of (m/B) * g_micro
                    now = flat.grad.clone() if flat is not None else _flat_grad(params)
                    micro_grads.append((now if cumulative is None else now - cumulative) * (B / m))
                    cumulative = now
            for name, capture in captures.items():  # the step's loss and gradient, reused
                parts = in_step[name].finish(capture, (x, y), loss_fn, loss,
                                             [p.grad for p in capture.params], lr=lr)
                if probe_callback is None:  # the frame is built once, at the end
                    rows.add_parts(step, parts)
                else:
                    frame = tidy_parts(parts)
                    rows.add_frame(step, name, frame)
                    probe_callback(step, frame)
            captures = {}
            if check_noise and micro_grads is None and B >= 2:  # no micro-batches: compare 4 chunks
                chunks = _noise_chunks(B, model, device)
                micro_grads = _chunk_grads(model, loss_fn, x, y, chunks) if chunks else None
            # two norms (over the flat buffers, or fused over the tensors), one device sync for
            # every metric of the step
            with torch.no_grad():
                if flat is not None:
                    norms = flat.norms()
                else:
                    grads = [p.grad if p.grad is not None else zeros(p) for p in params]
                    norms = torch.stack(torch._foreach_norm(grads + params)).view(2, -1)
                    norms = torch.linalg.vector_norm(norms, dim=1)
                scalars = [_total(losses), _total(accs) if accs else losses[0]]
                # [loss, accuracy, grad_norm, weight_norm]
                vals = torch.cat([torch.stack(scalars), norms]).tolist()
            examples += B
            metrics = {"loss": vals[0]}
            if accs:
                metrics["accuracy"] = vals[1]
            metrics.update(lr=lr, batch_size=B, examples=examples, grad_norm=vals[2],
                           weight_norm=vals[3], wall_time=time.perf_counter() - t0)
            rows.add(step, "train", metrics)
            run.steps_done = step + 1
            if not math.isfinite(vals[0]):
                run.status, run.diverged_step = "diverged", step
                if callback:
                    callback(step, metrics)
                break
            if micro_grads is not None:
                batches.observe(step, micro_grads=micro_grads,
                                micro_batch=B // len(micro_grads))
            opt.step()
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
                tested = evaluate(model, dataset)
                rows.add(step + 1, "eval", tested)
                if callback:  # the weights after this step's update: the eval rows' step + 1
                    metrics.update({f"test_{k}": v for k, v in tested.items()})
            if callback:
                callback(step, metrics)
            if bar is not None:
                # shown with the count, at tqdm's own pace (refresh=True would redraw every 10
                # steps); the last step's loss is the one the finished bar keeps
                if step % 10 == 0 or step == cfg.steps - 1:
                    bar.set_postfix(loss=f"{vals[0]:.4f}", refresh=False)
                bar.update(1)
        else:
            run.status = "finished"
        if run.status in ("finished", "cancelled") and run.steps_done:
            rows.add(run.steps_done, "eval", evaluate(model, dataset))
    except KeyboardInterrupt:
        run.status = "cancelled"
        run.meta["interrupted"] = True  # Ctrl-C, not a cancel token: a serial sweep stops too
    except Exception as exc:  # recorded, not raised: sweeps and dashboards go on
        run.status = "failed"
        run.error = f"{type(exc).__name__}: {exc}"
        run.meta["traceback"] = traceback.format_exc(limit=8)
        warnings.warn(f"run {run_id} failed at step {step}: {run.error}", RuntimeWarning, stacklevel=2)
    finally:
        for capture in captures.values():  # a step that failed between begin and finish
            capture.close()
        if bar is not None:
            bar.close()
    run.wall_time = time.perf_counter() - t_start
    run.frame = rows.frame()
    if store is not None:
        kept = _stored_status(store, run_id) if run.status in ("cancelled", "failed") else None
        if kept == "finished":  # nothing already computed is lost to a rerun that did not end
            run.meta["not_saved"] = (f"the store {store.root} keeps the finished run of this config; "
                                     f"delete it first (RunStore.delete) to store this {run.status} one")
            warnings.warn(f"run {run_id} {run.status}, not saved: {run.meta['not_saved']}",
                          RuntimeWarning, stacklevel=2)
        else:
            store.save(run)
    return run


def _stored_status(store: RunStore, run_id: str) -> str | None:
    """The status of the run stored under ``run_id``, None where there is none (or its files are
    damaged: then the new run replaces it)."""
    try:
        return store.get(run_id, rows=False).status
    except (KeyError, ValueError):
        return None


def train_many(cfgs: Sequence[TrainConfig], **kwargs) -> list[Run]:
    """Train several configs one after another with the same keyword arguments."""
    return [train(c, **kwargs) for c in cfgs]
