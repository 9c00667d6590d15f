# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A tour of the workbench in ten cells
#
# **Claim (Ioffe & Szegedy, 2015):** with Batch Normalization a network trains with a learning
# rate at which the same network without it makes little progress — BatchNorm "allows us to use
# much higher learning rates".
#
# We train the same 4-layer MLP twice on a Gaussian-mixture task, with and without BatchNorm, at
# a high learning rate; look at the curves; run a probe that reads every layer's weight and
# gradient norm; save both runs to the run store and load them back. Every result is one *tidy*
# table: one row per step × probe × metric.

# %%
# Fixed threads, seeds and CPU kernels: the stored outputs of this notebook are compared on every
# test run. Training turns last-bit differences into different numbers, and x86 CPUs pick torch's
# kernels by their vector instructions (AVX2 or AVX-512): use the AVX2 ones, set before torch loads.
import os

if os.path.exists("/proc/cpuinfo") and " avx2" in open("/proc/cpuinfo").read():  # x86 Linux
    for key, value in {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}.items():
        os.environ.setdefault(key, value)

import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

from workbench import DataConfig, MLPConfig, RunStore, TrainConfig, train  # noqa: E402

# %% [markdown]
# ## Two strategies, one config each
# A `TrainConfig` is a frozen dataclass: model, data, batch strategy, optimizer. Its hash is the
# run id, so the same config always names the same run.

# %%
data = DataConfig(name="gaussian_mixture", n_train=1024, n_test=512, seed=0)
base = TrainConfig(model=MLPConfig(depth=4, width=64, norm="none"), data=data, steps=150,
                   batch_size=32, optimizer="sgd", lr=0.5, momentum=0.9, eval_every=50, seed=0)
configs = {"no norm": base, "BatchNorm": base.replace(model=MLPConfig(depth=4, width=64, norm="batch"))}
runs = {name: train(cfg, probes=["layer_norms"]) for name, cfg in configs.items()}

# %%
# NBVAL_CHECK_OUTPUT
for name, run in runs.items():
    print(f"{name:10s} status={run.status:9s} final train loss={run.final('loss'):.3f} "
          f"test accuracy={run.final('accuracy', 'eval'):.3f}")

# %% [markdown]
# Without normalization, lr = 0.5 with momentum 0.9 is too large: the run diverges (NaN loss —
# recorded, not crashed) or stalls. With BatchNorm the same learning rate trains. The workbench
# marks diverged runs instead of failing, and keeps every row recorded up to the divergence.

# %%
bn, plain = runs["BatchNorm"], runs["no norm"]
assert bn.status == "finished" and bn.final("accuracy", "eval") > 0.7
assert plain.status == "diverged" or plain.final("loss") > 2 * bn.final("loss")

# %% [markdown]
# ## The tidy frame, and a plot made from it

# %%
# NBVAL_CHECK_OUTPUT
frame = bn.frame
print(frame.columns.tolist())
print(sorted(frame.probe.unique()))
first = frame[(frame.probe == "train") & (frame.step == 0) & (frame.metric != "wall_time")]
print(first[["metric", "value"]].round(3).to_string(index=False))

# %%
# NBVAL_IGNORE_OUTPUT
import pandas as pd  # noqa: E402

from workbench.viz.curves import metric_curves  # noqa: E402

both = pd.concat([r.frame.assign(strategy=name) for name, r in runs.items()])
metric_curves(both, "loss", color="strategy", log_y=True,
              status={r.run_id: r.status for r in runs.values()})

# %% [markdown]
# ## A probe: per-layer weight and gradient norms
# `layer_norms` ran every 15 steps during training. The ratio ‖g‖/‖w‖ is the relative step SGD
# takes per unit of learning rate — what LARS equalizes across layers. Normalized layers are
# scale-invariant, so their weight norm sets their effective learning rate.

# %%
# NBVAL_CHECK_OUTPUT
probe = bn.frame[(bn.frame.probe == "layer_norms") & (bn.frame.metric == "grad_to_weight")]
print(probe.pivot(index="step", columns="layer", values="value").iloc[[0, -1]].round(3).to_string())

# %% [markdown]
# ## Save and reload
# `RunStore` writes each run as JSON config + Parquet rows + final weights, atomically; `load()`
# brings every run back as one frame, `restore(run_id)` one run with its trained model.

# %%
# NBVAL_CHECK_OUTPUT
import tempfile  # noqa: E402

store = RunStore(tempfile.mkdtemp())
for run in runs.values():
    store.save(run)
back = store.get(bn.run_id)
pd.testing.assert_frame_equal(back.frame, bn.frame.reset_index(drop=True), check_dtype=False)
print(store.summary()[["status", "norm", "batch_size", "lr", "steps"]].to_string(index=False))

# %% [markdown]
# Any probe runs on a restored model, here or later in another session (or from the shell:
# `python -m workbench probe RUN_ID hessian_top_eigs --store FOLDER`, FOLDER being the store's
# root, here a temporary one; the shell probes 256 training examples by default): the model is rebuilt from the config,
# its final weights (BatchNorm's running statistics included) loaded, the data regenerated.

# %%
# NBVAL_CHECK_OUTPUT
from workbench.probes import hessian_top_eigs  # noqa: E402

restored = store.restore(bn.run_id)
test_set = (restored.dataset.x_test, restored.dataset.y_test)
eigs = {name: hessian_top_eigs(model, test_set, restored.dataset.loss_fn, k=1)
        for name, model in (("restored", restored.model), ("in memory", bn.model))}
lam = {name: e.loc[e.metric == "eigenvalue", "value"].item() for name, e in eigs.items()}
assert lam["restored"] == lam["in memory"], lam
print(f"top Hessian eigenvalue on the test set after {restored.steps_done} steps: {lam['restored']:.3f}")

# %% [markdown]
# ## Try it yourself
# Change the norm and learning rate and re-run the small experiment.

# %%
# NBVAL_IGNORE_OUTPUT
import math  # noqa: E402

import ipywidgets as widgets  # noqa: E402

from workbench.norms import norm_layouts, NORMS  # noqa: E402


def rerun(norm="batch", lr=0.5):
    cfg = base.replace(model=MLPConfig(depth=4, width=64, norm=norm,
                                       norm_options={"groups": 8} if norm in ("group", "batch_channel") else {}),
                       lr=lr)
    run = train(cfg)
    chance = math.log(10)  # 10 classes: the loss of a uniform guess
    stuck = run.status == "finished" and run.final("loss") > 0.9 * chance
    learned = f" (no better than chance, ln 10 = {chance:.2f})" if stuck else ""
    print(f"{norm}: {run.status}, final loss {run.final('loss'):.3f}{learned}")


widgets.interact_manual(rerun, norm=[n for n in NORMS if "features" in norm_layouts(n)],
                        lr=widgets.FloatLogSlider(value=0.5, min=-3, max=0.5))

# %% [markdown]
# **Take-away.** One config → one run id → one tidy table; probes add rows to the same table;
# the store keeps every run, diverged ones included. **Next:** `01_smoothness` asks *why*
# BatchNorm allows the larger step: it makes the loss landscape smoother.
