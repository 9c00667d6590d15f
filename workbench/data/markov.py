"""Token sequences from a random sparse Markov chain, for next-token prediction.

Each context (the last token, or the last two for ``order=2``) has ``branching`` possible next
tokens drawn without replacement, with Dirichlet(1, ..., 1) probabilities. Sequences start from
the chain's stationary distribution, so every position has the same marginal and the expected
loss floor is exact:

- ``extra["entropy"]``: the entropy rate ``sum_c pi(c) H(P(. | c))`` in nats/token;
- ``extra["loss_floor"]``: the mean over the ``seq_len`` targets of the best achievable
  cross-entropy (for ``order=2`` the first target sees one token only, so it is slightly higher).

``x`` holds tokens ``s[:, :-1]`` and ``y`` the next tokens ``s[:, 1:]`` of sequences ``s`` of
length ``seq_len + 1``.
"""
from __future__ import annotations

import torch

from .._validate import check_choice, check_positive
from ._spec import DatasetSpec, generator
from .dataset import Dataset

DEFAULTS = {"vocab_size": 32, "seq_len": 32, "order": 1, "branching": 4}


def check(options: dict) -> None:
    for name in ("vocab_size", "seq_len", "branching"):
        check_positive(f"markov option {name}", options[name], integer=True)
    check_choice("markov option order", options["order"], (1, 2))
    if options["branching"] > options["vocab_size"]:
        raise ValueError(f"markov option branching={options['branching']} exceeds "
                         f"vocab_size={options['vocab_size']}; valid values: 1..{options['vocab_size']}")


def transitions(vocab_size: int, order: int, branching: int, g: torch.Generator) -> torch.Tensor:
    """Transition probabilities (V**order, V) float64: row c is P(next | context c).

    Context index for ``order=2`` is ``prev * V + last``.
    """
    contexts = vocab_size**order
    scores = torch.rand(contexts, vocab_size, generator=g, dtype=torch.float64)
    successors = scores.argsort(dim=1)[:, :branching]  # random subset per context
    weights = -torch.rand(contexts, branching, generator=g, dtype=torch.float64).log()
    probs = torch.zeros(contexts, vocab_size, dtype=torch.float64)
    probs.scatter_(1, successors, weights / weights.sum(1, keepdim=True))
    return probs


def _step(pi: torch.Tensor, probs: torch.Tensor, vocab_size: int, order: int) -> torch.Tensor:
    """One chain step of a distribution over contexts (V**order,)."""
    if order == 1:
        return pi @ probs
    joint = pi.view(vocab_size, vocab_size, 1) * probs.view(vocab_size, vocab_size, vocab_size)
    return joint.sum(0).reshape(-1)  # (a, b, c) -> context (b, c)


def stationary(probs: torch.Tensor, vocab_size: int, order: int, tol: float = 1e-13,
               max_iter: int = 20_000) -> torch.Tensor:
    """A stationary distribution over contexts, by power iteration of the lazy chain from uniform.

    The lazy chain ``(I + P) / 2`` is aperiodic and has the same stationary distributions, so the
    iteration converges even for periodic or reducible chains.
    """
    contexts = probs.shape[0]
    pi = torch.full((contexts,), 1.0 / contexts, dtype=torch.float64)
    for _ in range(max_iter):
        new = 0.5 * (pi + _step(pi, probs, vocab_size, order))
        if (new - pi).abs().sum() < tol:
            return new
        pi = new
    return pi


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats along the last dim, with 0 log 0 = 0."""
    return -(p * p.clamp_min(1e-300).log()).sum(-1)


def sample(n: int, length: int, probs: torch.Tensor, pi: torch.Tensor, vocab_size: int,
           order: int, g: torch.Generator) -> torch.Tensor:
    """Sequences (n, length) int64 started from ``pi`` over contexts."""
    cdf = probs.cumsum(1)
    cdf[:, -1] = 1.0  # guard against round-off so every uniform falls in some bin
    start = torch.multinomial(pi.float(), n, replacement=True, generator=g)  # (n,) contexts
    u = torch.rand(n, length, generator=g, dtype=torch.float64)
    if order == 1:
        seq, ctx = [start], start
    else:
        seq, ctx = [start // vocab_size, start % vocab_size], start
    while len(seq) < length:
        nxt = (cdf[ctx] < u[:, len(seq), None]).sum(1).clamp_max(vocab_size - 1)
        seq.append(nxt)
        ctx = nxt if order == 1 else (ctx % vocab_size) * vocab_size + nxt
    return torch.stack(seq[:length], dim=1)


def build(n_train: int, n_test: int, seed: int, *, vocab_size: int, seq_len: int, order: int,
          branching: int) -> Dataset:
    probs = transitions(vocab_size, order, branching, generator(seed, "task"))
    pi = stationary(probs, vocab_size, order)
    rate = float(pi @ _entropy(probs))
    floor = rate
    if order == 2 and seq_len > 0:
        # First target sees one token: H(x1 | x0) = H(x0, x1) - H(x0) under the stationary pair law.
        first = float(_entropy(pi) - _entropy(pi.view(vocab_size, vocab_size).sum(1)))
        floor = (first + (seq_len - 1) * rate) / seq_len
    seqs = {s: sample(n, seq_len + 1, probs, pi, vocab_size, order, generator(seed, s))
            for s, n in (("train", n_train), ("test", n_test))}
    # contiguous copies: inputs and targets must not share storage
    x_train, y_train = seqs["train"][:, :-1].contiguous(), seqs["train"][:, 1:].contiguous()
    x_test, y_test = seqs["test"][:, :-1].contiguous(), seqs["test"][:, 1:].contiguous()
    return Dataset("markov", "lm", x_train, y_train, x_test, y_test, input_shape=(seq_len,),
                   num_outputs=vocab_size, vocab_size=vocab_size,
                   extra={"entropy": rate, "loss_floor": floor, "order": order})


SPEC = DatasetSpec("lm", DEFAULTS, check, build,
                   example_bytes=lambda o: 16 * o["seq_len"])  # int64 inputs and targets
