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
# # Mini-batch Hessians, and why the learning rate should grow with the batch
#
# **Claim (Granziol et al., "Learning Rates as a Function of Batch Size: A Random Matrix Theory
# Approach to Neural Network Training").** "The magnitude of the extremal values of the batch
# Hessian are larger than those of the empirical Hessian." Model the mini-batch Hessian as the
# full-data Hessian plus noise whose variance shrinks like 1/B,
# $H_B = H_{\text{emp}} + \text{noise}(1/B)$; a spiked-matrix (BBP) argument then pushes the top
# eigenvalue outward by an amount ∝ 1/B:
#
# $$\lambda_{\max}(H_B) \approx \lambda_{\max}(H_{\text{emp}}) + \frac{c}{B}.$$
#
# On a local quadratic SGD is stable for $\eta < 2/\lambda_{\max}(H_B)$, so the largest
# learning rate grows about **linearly** in B while the c/B term dominates, then saturates at
# $2/\lambda_{\max}(H_{\text{emp}})$. For Adam the paper derives **square-root** scaling from the
# preconditioned Hessian $P^{-1/2} H_B P^{-1/2}$, $P = \operatorname{diag}(\sqrt{\hat v}+\epsilon)$.
#
# The toy: a 2-layer MLP (width 32) trained 100 steps on a 10-class Gaussian mixture (2048
# training examples, which are the "full data"); the probe `hessian_vs_batch_size` runs Lanczos on
# up to 8 random disjoint mini-batch Hessians per B (N/B of them where that is fewer: 4 at
# B = 512, 2 at B = 1024) and on the full-data Hessian. Sections 2 and 3 then check
# the laws against the largest learning rate that actually trains, for SGD and for Adam.

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

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from workbench import DataConfig, MLPConfig, TrainConfig, train  # noqa: E402
from workbench.parallel import parallel_map  # noqa: E402
from workbench.probes import hessian_vs_batch_size  # noqa: E402

# SMOKE (default, < 60 s on 2 cores): one seed. FULL (NORMLAB_FULL=1): three seeds, averaged.
FULL = os.environ.get("NORMLAB_FULL") == "1"
SEEDS = [0, 1, 2] if FULL else [0]

# %% [markdown]
# ## 1. λ_max of the mini-batch Hessian vs B

# %%
data = DataConfig(name="gaussian_mixture", n_train=2048, n_test=512, seed=0)
base = TrainConfig(model=MLPConfig(depth=2, width=32), data=data, steps=100, batch_size=32,
                   optimizer="sgd", lr=0.05, momentum=0.9, eval_every=0)
SIZES = [8, 16, 32, 64, 128, 256, 512, 1024]


def spectrum_vs_batch(seed=0, steps=100, num_batches=8):
    """Train to a checkpoint, then the probe on the whole training set as the data source."""
    run = train(base.replace(seed=seed, steps=steps))
    ds = run.dataset
    frame = hessian_vs_batch_size(run.model, (ds.x_train, ds.y_train), ds.loss_fn, batch_sizes=SIZES,
                                  num_batches=num_batches, trace_matvecs=0, max_iter=40)
    per_b = frame[frame.batch_size.notna()].pivot_table(index="batch_size", columns="metric", values="value")
    fits = frame[frame.batch_size.isna()].set_index("metric").value
    return per_b, fits


results = {seed: spectrum_vs_batch(seed) for seed in SEEDS}
per_b = sum(r[0] for r in results.values()) / len(SEEDS)
fits = sum(r[1] for r in results.values()) / len(SEEDS)
full_n = data.n_train
lam = per_b.lambda_max_mean.loc[SIZES]
lam_full = per_b.lambda_max.loc[full_n]

# %%
# NBVAL_CHECK_OUTPUT
table = pd.DataFrame({"lambda_max": lam, "lambda_max_std": per_b.lambda_max_std.loc[SIZES],
                      "2/lambda_max": 2 / lam, "adam_lambda_max": per_b.adam_lambda_max_mean.loc[SIZES]})
print(table.round(3).round({"adam_lambda_max": 0}).to_string())  # Adam curvature ~ 1e2: 3 digits
print(f"full data (B = {full_n}): lambda_max = {lam_full:.3f}")
print(fits[["fit_lambda_full", "fit_c", "fit_r2", "lr_sgd_exponent", "lr_adam_exponent"]].round(3).to_string())

# %% [markdown]
# λ_max falls steadily with B and approaches the full-data value; `a + c/B` fits it well
# (R² ≈ 0.97, least squares on relative residuals: the spread between mini-batches grows with
# λ_max, so plain residuals would let B = 8 decide the fit), and its intercept a, fitted on
# mini-batches only, predicts the full-data λ_max (2.10 against 2.06). The log-log slope of
# 2/λ_max over B = 8…1024 is about 0.3–0.45: linear at small B, flattening as λ_max approaches
# the full-data value. The fit puts the crossover, c/B = λ_full, at B ≈ 58; at B = 128 λ_max is
# still 1.5× the full-data value, at B = 1024 within 2 %.

# %%
std = per_b.lambda_max_std.loc[SIZES]
assert all(lam.iloc[i + 1] <= lam.iloc[i] + 0.5 * std.iloc[i] for i in range(len(SIZES) - 1)), \
    "lambda_max must fall with B within noise"
assert lam.iloc[0] > 3 * lam_full, "small-batch Hessians must have a much larger top eigenvalue"
assert lam.iloc[-1] < 1.15 * lam_full and lam.iloc[-1] >= 0.95 * lam_full, "largest batch ~ full data"
assert fits["fit_r2"] > 0.9, "lambda_max = a + c/B should fit"
assert fits["fit_c"] > 0
assert abs(fits["fit_lambda_full"] / lam_full - 1) < 0.25, "the intercept should predict the full data"
assert 0.2 < fits["lr_sgd_exponent"] <= 1.0

# %%
# NBVAL_IGNORE_OUTPUT
import plotly.graph_objects as go  # noqa: E402

from workbench.viz import labelled_hline  # noqa: E402


def lambda_figure(per_b, fits, title, num_batches=8):
    lam = per_b.lambda_max_mean.loc[SIZES]
    grid = np.geomspace(SIZES[0], SIZES[-1], 60)
    fig = go.Figure(go.Scatter(x=SIZES, y=lam, mode="markers", name=f"λ_max(H_B), mean of {num_batches} batches",
                               error_y={"array": per_b.lambda_max_std.loc[SIZES]}))
    fig.add_scatter(x=grid, y=fits["fit_lambda_full"] + fits["fit_c"] / grid, mode="lines", name="a + c/B")
    fig.update_layout(xaxis_type="log", yaxis_type="log", xaxis_title="batch size B",
                      yaxis_title="top Hessian eigenvalue", title=title)
    # after the log axis is set: plotly places a label on a log axis by log10 of its value
    return labelled_hline(fig, per_b.lambda_max.dropna().iloc[0], "full data", dash="dot")


lambda_figure(per_b, fits, "Mini-batch Hessian top eigenvalue vs batch size")

# %% [markdown]
# ## 2. Checked against the largest learning rate that actually trains
# For B ∈ {8, 32, 128, 512}, plain SGD (no momentum) from scratch, 100 steps, learning rates on a
# √2-spaced grid from 0.25 upward; a rate "trains" if the run does not diverge and the loss of its
# last 10 steps is below half that of its first 3. We report the largest rate below the first
# one that fails. (Plain SGD, because 2/λ is plain gradient descent's limit on a quadratic; with
# heavy-ball momentum β it is 2(1+β)/λ, 3.8/λ at β = 0.9: `hessian_vs_batch_size(...,
# momentum=0.9)` reports that, and the Curvature dashboard uses the run's own momentum.)

# %%
LR_GRID = 2.0 ** np.arange(-2, 3.01, 0.5)
CHECK = [8, 32, 128, 512]


def largest_lr_that_trains(batch_size, seed=0):
    best = np.nan
    for lr in LR_GRID:
        run = train(base.replace(batch_size=batch_size, lr=float(lr), momentum=0.0, seed=seed))
        loss = run.metric("loss")
        if run.status != "finished" or loss.iloc[-10:].mean() >= 0.5 * loss.iloc[:3].mean():
            break
        best = lr
    return best


emp = pd.DataFrame({seed: [largest_lr_that_trains(b, seed) for b in CHECK] for seed in SEEDS}, index=CHECK)
emp_lr = np.exp(np.log(emp).mean(axis=1))  # geometric mean over seeds
emp_k = np.polyfit(np.log(CHECK), np.log(emp_lr), 1)[0]
probe_k = np.polyfit(np.log(CHECK), np.log(2 / lam.loc[CHECK]), 1)[0]

# %%
# NBVAL_CHECK_OUTPUT
print(pd.DataFrame({"largest lr that trains": emp_lr, "2/lambda_max(H_B)": 2 / lam.loc[CHECK]}).round(3).to_string())
print(f"log-log slope over B = {CHECK}: measured {emp_k:.2f}, predicted by the probe {probe_k:.2f}")

# %% [markdown]
# The learning rate that actually trains is a few times larger than 2/λ_max (training from
# scratch passes through flatter regions than our checkpoint, and a loss can fall while
# oscillating along the top eigenvector), but it **grows with B at a similar rate** — the
# shape of the law, not its constant, is what transfers.

# %%
assert emp_lr.is_monotonic_increasing, "the trainable lr should not shrink with B"
assert emp_lr.iloc[-1] >= 2 * emp_lr.iloc[0]
assert abs(emp_k - probe_k) < 0.3, f"measured slope {emp_k:.2f} vs probe {probe_k:.2f}"

# %% [markdown]
# ## 3. Adam: square-root scaling
# Adam divides each coordinate's step by $\sqrt{\hat v}$, the running root mean square of the
# mini-batch gradients. Once the gradient noise dominates $\hat v$, $\hat v \approx \sigma^2/B$
# ($\sigma^2$ the per-example gradient variance of that coordinate), so Adam behaves like SGD
# with the rate $\eta\sqrt{B}/\sigma$ on the curvature $H_B$. Asking for stability,
# $\eta\sqrt{B}\,\lambda_{\max}(H_B)/\sigma \lesssim \text{const}$, with
# $\lambda_{\max}(H_B) \approx \lambda_{\text{full}} + c/B$ from section 1:
#
# $$\eta_{\max}^{\text{SGD}} \approx \frac{2}{\lambda_{\text{full}} + c/B} \approx \frac{2B}{c},
# \qquad
# \eta_{\max}^{\text{Adam}} \propto \frac{\sigma}{\sqrt{B}\,(\lambda_{\text{full}} + c/B)}
# \approx \frac{\sigma}{c}\sqrt{B} \qquad (c/B \gg \lambda_{\text{full}}).$$
#
# This is a heuristic reading of the paper's result (Granziol et al. derive the linear and
# square-root laws from the spiked batch Hessian), not its derivation; it also says that the
# Adam law turns over, $\eta_{\max} \propto 1/\sqrt{B}$, once $\lambda_{\text{full}}$ dominates
# (compare the "surge" of Adam's optimal learning rate, papers.md §2.2).
#
# ### 3a. The probe's preconditioned curvature is too coarse here
# The probe computes λ_max of $P^{-1/2} H_B P^{-1/2}$, $P = \operatorname{diag}(\sqrt{v_B}+\epsilon)$,
# with $v_B$ from the same 8 mini-batches. Over B = 8…1024 its `lr_adam_exponent` is ≈ 0–0.1:
# by the formula above the Adam law rises like √B only while c/B dominates (c/λ_full ≈ 58
# here, from the fit's 121 / 2.10) and falls like 1/√B after, so over the whole range the two
# halves largely cancel; and 8 gradients at one checkpoint make a noisy $v_B$ (the Adam column
# of the table above is not even monotone: 487, 356, 292, 372, 218, …, 406). What holds is the ordering: the probe's Adam curvature depends on B much less
# than SGD's.

# %%
assert fits["lr_adam_exponent"] < fits["lr_sgd_exponent"], "Adam should depend on B less than SGD"

# %% [markdown]
# ### 3b. Measured: the bisected largest learning rate, SGD and Adam
# Section 2's criterion is too crude for Adam (at B ≥ 128 Adam still halves the loss at lr = 2
# within 100 steps). Here both optimizers get the same finer test, as papers.md §2.2 asks ("the
# bisected max stable LR, SGD and Adam"): plain SGD (no momentum) and Adam (β = (0.9, 0.999),
# ε = 1e-8), each trained from scratch for a fixed budget of **8 epochs** (8 · 2048 / B steps);
# a rate *trains* if the loss on the whole training set after the budget is below 1.0 (chance
# level is ln 10 ≈ 2.30; above the edge a run ends near 2.3 or diverges, so the edge is sharp).
# From a rate that fails (2⁴ for SGD, 2⁰ for Adam) we step down an octave at a time until one
# trains, then bisect to 1/8 octave. B ∈ {8, 16, 32, 64}: the range where c/B is at least
# comparable to λ_full in λ_max(H_B) (section 1: c/B ≥ λ_full up to B ≈ 58); beyond it λ_max
# approaches the full-data value and both laws flatten.

# %%
EPOCHS, LOSS_OK = 8, 1.0
SCALING_SIZES = [8, 16, 32, 64]
START = {"sgd": 4.0, "adam": 0.0}  # log2 of a rate that fails at every B here


def trains(optimizer, batch_size, lr, seed=0):
    """Train from scratch for EPOCHS epochs; True if the full training loss ends below LOSS_OK."""
    run = train(base.replace(optimizer=optimizer, lr=float(lr), momentum=0.0, batch_size=batch_size,
                             steps=EPOCHS * data.n_train // batch_size, seed=seed))
    if run.status != "finished":  # diverged
        return False
    ds = run.dataset
    with torch.no_grad():
        loss = float(ds.loss_fn(run.model(ds.x_train), ds.y_train))
    return loss < LOSS_OK


def bisected_lr_max(optimizer, batch_size, seed=0, resolution=0.125):
    """Largest lr that trains: octave steps down from START, then bisection in log2(lr)."""
    hi = START[optimizer]
    assert not trains(optimizer, batch_size, 2 ** hi, seed), f"{optimizer} B={batch_size} trains at 2^{hi}"
    lo = hi - 1
    while not trains(optimizer, batch_size, 2 ** lo, seed):
        hi, lo = lo, lo - 1
        assert lo > START[optimizer] - 16, f"{optimizer} B={batch_size}: nothing trains"
    while hi - lo > resolution:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if trains(optimizer, batch_size, 2 ** mid, seed) else (lo, mid)
    return 2 ** lo


# each search is independent: two worker processes run them at once (same numbers as a loop)
jobs = [(opt, b, seed) for opt in ("sgd", "adam") for seed in SEEDS for b in SCALING_SIZES]
found = dict(zip(jobs, parallel_map(lambda job: bisected_lr_max(*job), jobs)))
lr_max = {opt: pd.DataFrame({seed: [found[(opt, b, seed)] for b in SCALING_SIZES] for seed in SEEDS},
                            index=SCALING_SIZES) for opt in ("sgd", "adam")}
exponents = pd.DataFrame({opt: [np.polyfit(np.log(SCALING_SIZES), np.log(f[s]), 1)[0] for s in SEEDS]
                          for opt, f in lr_max.items()}, index=pd.Index(SEEDS, name="seed"))
lr_max_mean = pd.DataFrame({opt: np.exp(np.log(f).mean(axis=1)) for opt, f in lr_max.items()})  # geometric

# %%
# NBVAL_CHECK_OUTPUT
print(lr_max_mean.rename_axis("B").rename(columns=lambda o: f"lr_max {o}").round(4).to_string())
print("log-log slope of lr_max over B =", SCALING_SIZES, "per seed:")
print(exponents.round(2).to_string())

# %% [markdown]
# The largest Adam rate grows like **√B**, SGD's nearly linearly: slopes 0.46–0.52 for Adam
# and 0.76–0.90 for SGD in each of seeds 0–5 (seed 0 above: 0.52 and 0.88; seeds 1–5 were
# measured before the notebooks pinned the CPU kernels, on a CPU where seed 0 gave 0.50 and
# 0.90; the SGD slope is a little below 1 because the full-data term already counts at B = 64).
# How much the number depends on the protocol (this
# toy; 2–5 seeds per line; B ∈ {8, 32, 128} where not said):
# - budget: with B ∈ {8…64}, 4 epochs gave Adam 0.50–0.60 (SGD 0.79–0.87) and 16 epochs Adam
#   0.38–0.44 (SGD 0.79–0.82); with B ∈ {8, 32, 128}, 4 / 8 / 16 epochs gave Adam 0.44–0.56 /
#   0.44–0.56 / 0.37–0.44 (SGD 0.69–0.78 / 0.68–0.82 / 0.78–0.81); a fixed 500 *steps* at
#   every B gave Adam 0.31 (SGD 0.66–0.69);
# - a stricter "trains" (final loss < 0.5): Adam 0.56–0.59, SGD 0.75–0.78; half of chance
#   level (< 1.15) changes little (Adam 0.47–0.56);
# - adding B = 512, where both laws have flattened: Adam 0.41–0.44, SGD 0.54–0.57;
# - smaller batches, B ∈ {4…32}: Adam 0.49–0.55; SGD 0.89–0.94 over B = 8…32.
#
# So the *value* ½ depends on the budget (Adam 0.31–0.60 over everything we tried; longer
# budgets give smaller exponents), but in every setting and seed Adam's exponent was below
# SGD's, by at least 0.12 (0.26–0.40 with the protocol above), at 0.45–0.81 of it. We assert, for this protocol and each seed run: both grow with B, Adam's exponent is near
# ½ and clearly below SGD's, SGD's is near linear.

# %%
for seed in SEEDS:
    for opt in ("sgd", "adam"):
        assert lr_max[opt][seed].is_monotonic_increasing, f"seed {seed}: {opt} lr_max should grow with B"
    k_sgd, k_adam = exponents.loc[seed, "sgd"], exponents.loc[seed, "adam"]
    assert abs(k_adam - 0.5) < 0.15, f"seed {seed}: Adam exponent {k_adam:.2f} is not near 1/2"
    assert k_adam < k_sgd - 0.15, f"seed {seed}: Adam {k_adam:.2f} should scale clearly slower than SGD {k_sgd:.2f}"
    assert k_sgd > 0.65, f"seed {seed}: SGD exponent {k_sgd:.2f} should be near linear"

# %%
# NBVAL_IGNORE_OUTPUT
fig = go.Figure()
for opt, color in (("sgd", "#1f77b4"), ("adam", "#d62728")):
    y = lr_max_mean[opt]
    fig.add_scatter(x=SCALING_SIZES, y=y, mode="markers+lines", name=f"{opt}: bisected lr_max",
                    line={"color": color})
    ref = 1.0 if opt == "sgd" else 0.5
    fig.add_scatter(x=SCALING_SIZES, y=y.iloc[0] * (np.array(SCALING_SIZES) / SCALING_SIZES[0]) ** ref,
                    mode="lines", line={"color": color, "dash": "dot"}, name=f"∝ B^{ref:g}")
fig.update_layout(xaxis_type="log", yaxis_type="log", xaxis_title="batch size B",
                  yaxis_title="largest learning rate that trains (8 epochs)",
                  title="Linear scaling for SGD, square-root scaling for Adam")
fig

# %% [markdown]
# ## Try it yourself
# Move the checkpoint (steps trained before the probe) and the number of mini-batches per size.

# %%
# NBVAL_IGNORE_OUTPUT
import ipywidgets as widgets  # noqa: E402


def rerun(steps=100, num_batches=8):
    p, f = spectrum_vs_batch(steps=steps, num_batches=num_batches)
    print(f"fit: lambda_full = {f.fit_lambda_full:.2f}, c = {f.fit_c:.1f}, R2 = {f.fit_r2:.2f}, "
          f"SGD lr exponent {f.lr_sgd_exponent:.2f}, Adam {f.lr_adam_exponent:.2f}")
    lambda_figure(p, f, f"checkpoint after {steps} steps", num_batches).show()


widgets.interact_manual(rerun, steps=widgets.IntSlider(value=100, min=20, max=500, step=20),
                        num_batches=widgets.IntSlider(value=8, min=2, max=16))

# %% [markdown]
# **Take-aways.**
# - A mini-batch sees a sharper landscape than the full data: λ_max(H_B) ≈ λ_full + c/B.
# - So the stable SGD step grows with B — about linearly while c/B dominates, then it
#   saturates: the origin of linear learning-rate scaling (and of its limit).
# - The measured largest trainable learning rate follows the same slope.
# - Adam divides the step by the root mean square of the noisy gradients (∝ 1/√B), which turns
#   the linear law into a **square-root** law: its bisected largest rate grows like B^0.5 while
#   SGD's grows like B^0.76–0.90 over B = 8…64. The exact exponent depends on the training budget;
#   the ordering does not.
#
# **Try next:** `NORMLAB_FULL=1`; a checkpoint at step 20 vs 500 (sharpness changes during
# training); `kind="ggn"` in the probe (the paper: "similar results for the Generalised
# Gauss-Newton matrix"); a BatchNorm MLP (`mode="train"` vs `"eval"` Hessians); then
# `06_large_batch` for what large batches do to generalization.
