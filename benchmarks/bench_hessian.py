"""Curvature probes against PyHessian and hessian-eigenthings: time to accuracy and cost per HVP.

Same process, model, data and thread count (1) for every tool (peers.md §4). Cases: the 85k-param
MLP with N=1024 of peers.md §3.3 and a small CNN with BatchNorm (train mode: the loss SGD
optimizes). For each tool and quantity, budgets are swept from small to large; each run starts from
scratch (forward + gradient included) and the first budget that reaches the accuracy is reported:

- lambda_max to 1e-3 relative error, the top-5 to 1e-3 (max over the five, relative to
  lambda_max), the trace to 1e-2 and to 5e-2;
- the trace with our default ``method="auto"`` (exact where the network allows it: the ReLU MLP;
  stochastic on the BatchNorm CNN) and, where that was exact, with ``method="adaptive"`` (our
  stochastic estimator) in extra rows;
- references: our Lanczos at ``tol=1e-10`` for eigenvalues (matches dense ``eigvalsh`` in
  tests/test_probes_curvature.py); the exact trace, for the ReLU MLP as ``tr(GGN)`` from per-example
  Jacobians (the Hessian's diagonal equals the GGN's for a ReLU net), for the CNN as
  ``sum_i e_i^T H e_i`` (P block products);
- cost of one HVP in gradients (median, marginal: the retained-graph product after setup) and of a
  block of 32 HVPs per vector on a 6.9k-param MLP with N=128 (peers.md §5 table).

Targets (issue 3): >= 3x faster than PyHessian to the same accuracy on lambda_max and the trace;
one HVP <= 2x a gradient; block HVPs <= 1.2x a gradient per vector. The table prints ours/peer
time ratios (< 1: we are faster). Every run is repeated with seeds 0, 1, 2 (starting and probe
vectors); a budget counts as reaching the accuracy when all three do, and its mean time is shown.

Peers are optional and are imported only when installed. ``make bench`` builds them a venv of their
own (``.venv-peers``: PyHessian, hessian-eigenthings, loss-landscapes with the CPU torch pin; never
the project venv, peers.md §3.1) and runs this file with it:

    make bench-peers
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv-peers/bin/python benchmarks/bench_hessian.py

Run with the project venv instead, it prints our numbers with "not installed" notes.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.probes import hessian_density, hessian_top_eigs, hessian_trace
from workbench.probes.hvp import curvature_operator

CE = nn.CrossEntropyLoss()


def optional(name):
    try:
        return importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - any import failure means "not available"
        print(f"note: {name} not installed ({type(err).__name__}); its columns are skipped")
        return None


PYH = optional("pyhessian")
HE = optional("hessian_eigenthings")


def mlp_case(n=1024, d=64, h=256, c=10, seed=0):
    torch.manual_seed(seed)
    x, y = torch.randn(n, d), torch.randint(0, c, (n,))
    model = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, c))
    return model, (x, y)


def cnn_case(n=128, seed=0):
    torch.manual_seed(seed)
    x, y = torch.randn(n, 3, 8, 8), torch.randint(0, 10, (n,))
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    return model.train(), (x, y)


def timed(fn, reps=1):
    best = None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        best = dt if best is None or dt < best else best
    return best, out


def median_time(fn, reps=15):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def exact_trace_relu_mlp(model, x, y, chunk=32):
    """tr(H) = tr(GGN) = (1/N) sum_n tr(A_n J_n J_n^T) for a ReLU MLP (no second derivative
    along any single weight); J_n the (C, P) output Jacobian, A_n = diag(p) - p p^T."""
    from torch.func import functional_call, jacrev, vmap
    params = {k: v.detach() for k, v in model.named_parameters()}
    total = 0.0
    for i in range(0, x.shape[0], chunk):
        xb = x[i:i + chunk]
        jac = vmap(jacrev(lambda p, xi: functional_call(model, p, (xi[None],))[0]), (None, 0))(params, xb)
        J = torch.cat([j.reshape(xb.shape[0], j.shape[1], -1) for j in jac.values()], dim=2)  # (n, C, P)
        p = F.softmax(model(xb), -1).detach()
        A = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        total += float((A * (J @ J.transpose(1, 2))).sum())
    return total / x.shape[0]


def exact_trace_blocks(model, batch):
    with curvature_operator(model, batch, CE, mode="train") as op:
        eye = torch.eye(op.dim)
        return float(sum(op.mm(eye[i:i + 64]).diagonal(offset=i).sum() for i in range(0, op.dim, 64)))


def first_reaching(budgets, run, err, target, seeds=(0, 1, 2)):
    """Run each budget in order, once per seed; ``(mean time, mean hvps, budget, worst error)``
    of the first budget whose worst error over the seeds is within target."""
    last = None
    for b in budgets:
        res = [timed(lambda b=b, s=s: run(b, s)) for s in seeds]
        e = max(err(val) for _, (val, _) in res)
        last = (float(np.mean([dt for dt, _ in res])), int(np.mean([hv for _, (_, hv) in res])), b, e)
        if e <= target:
            return last
    return (float("inf"), last[1], last[2], last[3])


# ---- ours ---------------------------------------------------------------------------------------
def ours_eigs(model, batch, k):
    def run(tol, seed):
        f = hessian_top_eigs(model, batch, CE, k=k, tol=tol, max_iter=300, seed=seed)
        return f[f.metric == "eigenvalue"].value.to_numpy(), int(f.hvps.iloc[0])
    return run


def ours_trace(model, batch, method="auto"):
    def run(m, seed):
        f = hessian_trace(model, batch, CE, num_matvecs=m, method=method, seed=seed)
        return f[f.metric == "trace"].value.item(), int(f.hvps.iloc[0])
    return run


# ---- PyHessian ----------------------------------------------------------------------------------
class HVPCounter:
    """Counts calls of a module-level function (PyHessian's hessian_vector_product)."""

    def __init__(self, module, name):
        self.module, self.name, self.orig, self.count = module, name, getattr(module, name), 0

        def wrapped(*a, **kw):
            self.count += 1
            return self.orig(*a, **kw)
        setattr(module, name, wrapped)


def pyh_eigs(model, batch, k):
    mod = importlib.import_module("pyhessian.hessian")
    counter = HVPCounter(mod, "hessian_vector_product") if not hasattr(mod, "_bench_counter") else mod._bench_counter
    mod._bench_counter = counter

    def run(tol, seed):
        counter.count = 0
        torch.manual_seed(seed)
        hc = PYH.hessian(model, CE, data=batch, cuda=False)
        eigs, _ = hc.eigenvalues(maxIter=1000 if k == 1 else 200, tol=tol, top_n=k)
        model.zero_grad(set_to_none=True)
        model.train()  # undo PyHessian's model.eval()
        return np.array(eigs), counter.count
    return run


def pyh_trace(model, batch):
    mod = importlib.import_module("pyhessian.hessian")
    counter = mod._bench_counter if hasattr(mod, "_bench_counter") else HVPCounter(mod, "hessian_vector_product")
    mod._bench_counter = counter

    def run(tol, seed):
        counter.count = 0
        torch.manual_seed(seed)
        hc = PYH.hessian(model, CE, data=batch, cuda=False)
        samples = hc.trace(maxIter=1000, tol=tol)
        model.zero_grad(set_to_none=True)
        model.train()
        return float(np.mean(samples)), counter.count
    return run


# ---- hessian-eigenthings ------------------------------------------------------------------------
def he_operator(model, batch):
    op = HE.HessianOperator(model, [batch], HE.supervised_loss(CE))
    op.count = 0
    orig = op.matvec

    def matvec(v):
        op.count += 1
        return orig(v)
    op.matvec = matvec
    return op


def he_eigs(model, batch, k):
    def run(steps, seed):
        state = {n: b.clone() for n, b in model.named_buffers()}
        op = he_operator(model, batch)
        r = HE.lanczos(op, k=k, max_iter=steps, which="LA", seed=seed, reorthogonalize=True)
        model.load_state_dict({**model.state_dict(), **state})  # it updates BN running stats
        return np.sort(r.eigenvalues.detach().numpy())[::-1], op.count
    return run


def he_trace(model, batch):
    def run(m, seed):
        state = {n: b.clone() for n, b in model.named_buffers()}
        op = he_operator(model, batch)
        r = HE.trace(op, num_matvecs=m, method="hutch++", seed=seed)
        model.load_state_dict({**model.state_dict(), **state})
        return float(r.estimate), op.count
    return run


# ---- per-HVP cost -------------------------------------------------------------------------------
def grad_time(model, batch):
    params = [p for p in model.parameters()]
    return median_time(lambda: torch.autograd.grad(CE(model(batch[0]), batch[1]), params))


def our_hvp_time(model, batch, k=1):
    with curvature_operator(model, batch, CE, mode="train") as op:
        if k == 1:
            v = torch.randn(op.dim)
            return median_time(lambda: op.mv(v))
        V = torch.randn(k, op.dim)
        return median_time(lambda: op.mm(V)) / k


def pyh_hvp_time(model, batch):
    from pyhessian.utils import hessian_vector_product
    hc = PYH.hessian(model, CE, data=batch, cuda=False)
    v = [torch.randn_like(p) for p in hc.params]
    t = median_time(lambda: hessian_vector_product(hc.gradsH, hc.params, v))
    model.zero_grad(set_to_none=True)
    model.train()
    return t


def he_hvp_time(model, batch):
    op = HE.HessianOperator(model, [batch], HE.supervised_loss(CE))
    v = torch.randn(op.size)
    state = {n: b.clone() for n, b in model.named_buffers()}
    t = median_time(lambda: op.matvec(v))
    model.load_state_dict({**model.state_dict(), **state})
    return t


def fmt(r):
    if r is None:
        return "n/a"
    t, hv, b, e = r
    return f"{t:7.3f}s {hv:4d}hvp" if np.isfinite(t) else f"not reached (err {e:.1e} at {b})"


def ratio(ours, peer):
    if ours is None or peer is None or not np.isfinite(peer[0]):
        return "-"
    return f"{ours[0] / peer[0]:.2f}"


def run_case(case, rows, notes):
    """Time-to-accuracy rows and cost notes for one case."""
    model, batch = mlp_case() if case == "mlp" else cnn_case()
    P = sum(p.numel() for p in model.parameters())
    print(f"\n== {case}: {P} parameters, N={batch[0].shape[0]}, 1 thread ==")
    ref = hessian_top_eigs(model, batch, CE, k=5, tol=1e-10, max_iter=400)
    ref5 = ref[ref.metric == "eigenvalue"].value.to_numpy()
    t0 = time.perf_counter()
    true_tr = exact_trace_relu_mlp(model, *batch) if case == "mlp" else exact_trace_blocks(model, batch)
    print(f"reference: top-5 {np.round(ref5, 5)}, exact trace {true_tr:.4f} "
          f"({time.perf_counter() - t0:.1f}s)")
    if case == "cnn":
        ev = hessian_top_eigs(model, batch, CE, k=1, tol=1e-8, mode="eval")
        notes.append(f"cnn: train-mode (batch-statistics) lambda_max {ref5[0]:.4f}; eval-mode "
                     f"{ev[ev.metric == 'eigenvalue'].value.item():.4f}. PyHessian forces eval(): it "
                     "cannot compute the train-mode quantities, so its cnn cells are n/a.")
    e1 = lambda v: abs(v[0] - ref5[0]) / abs(ref5[0])  # noqa: E731
    e5 = lambda v: np.max(np.abs(np.sort(v)[::-1][:5] - ref5) / abs(ref5[0])) if len(v) >= 5 else np.inf  # noqa: E731
    etr = lambda v: abs(v - true_tr) / abs(true_tr)  # noqa: E731
    tols = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5, 1e-6]
    peer_tols = [1e-2, 1e-3, 1e-4, 1e-5]  # PyHessian's relative-change stop (maxIter 1000 for k=1, 200 for k=5)
    mats = [6, 12, 24, 48, 96, 192, 384, 768, 1536]
    tasks = [("lambda_max 1e-3", 1, e1, 1e-3), ("top-5 1e-3", 5, e5, 1e-3)]
    for name, k, err, target in tasks:
        ours = first_reaching(tols, ours_eigs(model, batch, k), err, target)
        pyh = (first_reaching(peer_tols, pyh_eigs(model, batch, k), err, target)
               if PYH and case == "mlp" else None)
        he = first_reaching(list(range(max(k, 5), 65, 5)), he_eigs(model, batch, k), err, target) if HE else None
        rows.append((case, name, ours, pyh, he))
    used = set(hessian_trace(model, batch, CE).method)
    notes.append(f"{case}: hessian_trace(method='auto') uses {', '.join(sorted(used))}"
                 + (" (C backward passes, no variance; the 'adaptive' rows are our stochastic estimator"
                    " on the same problem)" if "exact" in used else ""))
    for target in (1e-2, 5e-2):  # 1e-2 is the target; 5e-2 is where PyHessian gets to
        ours = first_reaching(mats, ours_trace(model, batch), etr, target)
        pyh = first_reaching([1e-1, 1e-2, 1e-3, 1e-4, 1e-5], pyh_trace(model, batch), etr, target) \
            if PYH and case == "mlp" else None
        he = first_reaching(mats, he_trace(model, batch), etr, target) if HE else None
        rows.append((case, f"trace {target:g}", ours, pyh, he))
        if "exact" in used:
            adaptive = first_reaching(mats, ours_trace(model, batch, "adaptive"), etr, target)
            rows.append((case, f"trace {target:g} (adaptive)", adaptive, pyh, he))
    td, _ = timed(lambda: hessian_density(model, batch, CE, num_runs=4, steps=40))
    dens_note = f"{case}: our SLQ density (4 runs x 40 steps) {td:.2f}s"
    if PYH and case == "mlp":
        try:
            PYH.hessian(model, CE, data=batch, cuda=False).density(iter=10, n_v=1)
            dens_note += "; PyHessian density ran"
        except Exception as err:  # noqa: BLE001 - report whatever it raises
            dens_note += f"; PyHessian density: n/a ({type(err).__name__}: {str(err)[:60]})"
        model.zero_grad(set_to_none=True)
        model.train()
    notes.append(dens_note)
    g = grad_time(model, batch)
    costs = [f"gradient {g * 1e3:.2f} ms", f"ours HVP {our_hvp_time(model, batch) / g:.2f}x"]
    if PYH and case == "mlp":
        costs.append(f"PyHessian HVP {pyh_hvp_time(model, batch) / g:.2f}x")
    if HE:
        costs.append(f"hessian-eigenthings HVP {he_hvp_time(model, batch) / g:.2f}x")
    notes.append(f"{case}: per-HVP cost in gradients: " + ", ".join(costs) + " (target ours <= 2x)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="mlp,cnn")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows, notes = [], []
    for case in args.cases.split(","):
        run_case(case, rows, notes)
    small, sbatch = mlp_case(n=128, d=32, h=64, c=10)  # 6.9k params
    g = grad_time(small, sbatch)
    notes.append(f"block HVPs, {sum(p.numel() for p in small.parameters())} params, N=128: "
                 f"k=32 {our_hvp_time(small, sbatch, 32) / g:.2f}x a gradient per vector, "
                 f"k=1 {our_hvp_time(small, sbatch) / g:.2f}x (target block <= 1.2x)")
    print("\ncase | quantity | ours | PyHessian | ours/PyH | hessian-eigenthings | ours/HE")
    for case, name, ours, pyh, he in rows:
        print(f"{case} | {name} | {fmt(ours)} | {fmt(pyh)} | {ratio(ours, pyh)} | {fmt(he)} | {ratio(ours, he)}")
    print()
    for n in notes:
        print("- " + n)


if __name__ == "__main__":
    main()
