"""Index batches for training, with the batch size free to change from one step to the next.

The sampler walks one permutation of ``range(n)`` per epoch and wraps into the next epoch when an
epoch ends mid-batch, so every example is seen exactly once per epoch whatever the batch sizes.
Epoch ``e``'s permutation is a pure function of ``(seed, e)``; torch's global RNG is never touched.
A batch that wraps takes the next epoch's first examples *that are not already in it*: those come
first in that epoch, the others keep their order (with a fresh permutation per epoch, the head of
the next one can hold examples of the last one's tail: a batch would hold them twice). So the
state is the count of examples consumed and, for an epoch that began mid-batch, that head.
"""
from __future__ import annotations

import torch

from .._validate import check_choice, check_divides, check_positive
from ._spec import generator

SHUFFLES = ("reshuffle", "single", "none")


class BatchSampler:
    """Draws batches of example indices from ``range(n)``.

    Args:
        n: number of training examples.
        shuffle: ``"reshuffle"`` (a fresh permutation every epoch: random reshuffling),
            ``"single"`` (one permutation drawn once and reused every epoch) or ``"none"``
            (in order).
        seed: seed of the permutations (non-negative int).

    Example:
        >>> sampler = BatchSampler(10, seed=0)
        >>> idx = sampler.next(4)  # LongTensor (4,)
    """

    def __init__(self, n: int, *, shuffle: str = "reshuffle", seed: int = 0):
        check_positive("n", n, integer=True)
        check_choice("shuffle mode", shuffle, SHUFFLES)
        check_positive("seed", seed, allow_zero=True, integer=True)
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.consumed = 0  # examples drawn so far, over all epochs
        self._cache: tuple[int, torch.Tensor] | None = None
        # (epoch, its first examples) for an epoch that began mid-batch, and that epoch's order
        self._head: tuple[int, torch.Tensor] | None = None
        self._order_cache: tuple[int, torch.Tensor] | None = None

    @property
    def epoch(self) -> float:
        """Examples consumed divided by n (1.5 = halfway through the second epoch)."""
        return self.consumed / self.n

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order (n,) int64 in which epoch ``epoch`` (0-based) visits the examples."""
        if self.shuffle == "none":
            return torch.arange(self.n)
        key = epoch if self.shuffle == "reshuffle" else 0
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, torch.randperm(self.n, generator=generator(self.seed, f"epoch{key}")))
        return self._cache[1]

    def order(self, epoch: int) -> torch.Tensor:
        """The order (n,) in which epoch ``epoch`` is drawn: its permutation, with the head a
        wrapping batch took from it first (see the module's docstring)."""
        if self._head is None or self._head[0] != epoch:
            return self.permutation(epoch)
        if self._order_cache is None or self._order_cache[0] != epoch:
            perm, head = self.permutation(epoch), self._head[1]
            self._order_cache = (epoch, torch.cat([head, perm[~torch.isin(perm, head)]]))
        return self._order_cache[1]

    def next(self, batch_size: int) -> torch.Tensor:
        """The next ``batch_size`` example indices, LongTensor (batch_size,), distinct within a batch."""
        check_positive("batch_size", batch_size, integer=True)
        if batch_size > self.n:
            raise ValueError(f"batch_size={batch_size} exceeds the number of examples n={self.n}; "
                             f"valid values: 1..{self.n}")
        epoch, pos = divmod(self.consumed, self.n)
        take = min(batch_size, self.n - pos)
        part = self.order(epoch)[pos:pos + take]
        self.consumed += take
        if take == batch_size:
            return part.clone()
        # the batch wraps: the next epoch starts with its first examples not already in it
        perm = self.permutation(epoch + 1)
        head = perm[~torch.isin(perm, part)][:batch_size - take]
        self._head, self._order_cache = (epoch + 1, head), None
        self.consumed += len(head)
        return torch.cat([part, head])

    def state_dict(self) -> dict:
        head = None if self._head is None else [self._head[0], self._head[1].tolist()]
        return {"n": self.n, "shuffle": self.shuffle, "seed": self.seed, "consumed": self.consumed,
                "head": head}

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict`; the sampler must be for the same number of examples."""
        if state["n"] != self.n:
            raise ValueError(f"sampler state is for n={state['n']} examples, this sampler has "
                             f"n={self.n}")
        check_choice("shuffle mode", state["shuffle"], SHUFFLES)
        check_positive("consumed", state["consumed"], allow_zero=True, integer=True)
        self.shuffle, self.seed, self.consumed = state["shuffle"], state["seed"], state["consumed"]
        head = state.get("head")  # None, or absent in states saved before heads were kept
        self._head = None if head is None else (int(head[0]), torch.as_tensor(head[1], dtype=torch.long))
        self._cache = self._order_cache = None


def split_micro(idx: torch.Tensor, micro_batch: int | None) -> list[torch.Tensor]:
    """Split a batch of indices (B,) into equal micro-batches for gradient accumulation.

    Args:
        idx: LongTensor (B,) from :meth:`BatchSampler.next`.
        micro_batch: micro-batch size, must divide B; None means one micro-batch, ``[idx]``.

    Returns:
        ``B // micro_batch`` LongTensors of shape (micro_batch,), in order.
    """
    if micro_batch is None:
        return [idx]
    check_positive("micro_batch", micro_batch, integer=True)
    check_divides("micro_batch", micro_batch, "batch_size", len(idx))
    return list(idx.split(micro_batch))
