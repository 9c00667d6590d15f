"""Curse-of-Depth variance: how the residual stream and each block's contribution evolve with depth.

Pre-LN stacks ``x_{l+1} = x_l + F_l(LN(x_l))`` let Var(x_l) grow with depth while LN hands every
block a unit-variance input, so deep blocks add relatively little and their Jacobian approaches
the identity (Sun et al. 2025, "The Curse of Depth in LLMs"; Li et al. 2024, Mix-LN). Per block
``blocks.i`` of a residual model the probe reports:

- ``stream_in_variance`` / ``stream_in_rms``, ``stream_out_variance`` / ``stream_out_rms``: the
  variance (over every element of the batch: examples, positions and channels, biased) and root
  mean square of the residual stream entering and leaving the block;
- ``block_output_variance``: variance of what the block adds, ``x_out - shortcut(x_in)``, and
  ``relative_update``: ``||x_out - shortcut(x_in)|| / ||shortcut(x_in)||``;
- ``grad_norm``: the norm of the loss gradient reaching the block's parameters;
- ``angular_distance``: mean over examples (tokens) of ``arccos(cos(x_in, x_out)) / pi``;
- ``jacobian_identity_distance``: ``||J v - J_s v|| / ||J_s v||`` for a random Gaussian direction
  ``v`` (the shape of the block's input, the whole batch at once), where ``J`` is the Jacobian of
  the block's map ``x_in -> x_out`` and ``J_s`` that of its shortcut (the identity, unless a
  ConvNet block changes shape): how far the block is from passing a perturbation on unchanged,
  0 for a block that adds nothing. For ``x_out = x_in + F(x_in)`` it is ``||J_F v|| / ||v||``;
  a Pre-LN block's ``J_F`` shrinks like 1/std(x_in), which is why deep blocks approach the
  identity. Jacobian-vector products in forward mode (BatchNorm in train mode included: the
  Jacobian is that of the map on the whole batch, batch statistics and all);
- ``skip_loss_increase``: ``L(block skipped) - L``; a skipped block passes its input on
  unchanged (through its projection shortcut where a ConvNet block changes shape).

Supported: residual MLPs (``MLPConfig(residual=True)``: the block is the branch, the model adds
it), ConvNets (ResNet basic blocks) and transformers in every LN placement (pre, post, mix,
ln_scaling). Track it through training: at initialization the growth is only linear.
"""
from __future__ import annotations

import functools
import math

import pandas as pd
import torch
import torch.autograd.forward_ad as fwAD

from .._validate import check_choice, check_integer
from ..models import MLP, ConvNet, Transformer
from ..utils import preserved_state
from ._batch import check_pair, run_model
from ._directions import MODES, random_direction, restore_buffers, snapshot_buffers
from ._tidy import tidy_frame

METRICS = ["stream_in_variance", "stream_in_rms", "stream_out_variance", "stream_out_rms",
           "block_output_variance", "relative_update", "angular_distance",
           "jacobian_identity_distance", "grad_norm", "skip_loss_increase"]


def _structure(model) -> str:
    """``"branch"`` when the model adds each block's output itself, ``"block"`` when each block
    holds its own residual connection; a ValueError naming what is supported otherwise."""
    if isinstance(model, MLP) and model.residual:
        return "branch"
    if isinstance(model, (ConvNet, Transformer)):
        return "block"
    what = "an MLP with residual=False" if isinstance(model, MLP) else type(model).__name__
    raise ValueError(f"depth_variance needs residual blocks; got {what}. Supported: "
                     "MLPConfig(residual=True), ConvNetConfig, TransformerConfig (placements "
                     "pre, post, mix, ln_scaling)")


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(N, C) / (N, C, H, W) -> (N, -1) per example; (N, T, C) -> (N*T, C) per token."""
    return x.reshape(-1, x.shape[-1]) if x.dim() == 3 else x.flatten(1)


def _jvp(fn, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fn(x), J v)`` for the Jacobian ``J`` of ``fn`` at ``x``: one forward pass in
    forward-mode AD (exact: the Jacobian of the forward map, whatever a layer's backward
    approximates)."""
    with fwAD.dual_level(), torch.no_grad():
        primal, tangent = fwAD.unpack_dual(fn(fwAD.make_dual(x, v)))
    return primal, torch.zeros_like(primal) if tangent is None else tangent


def depth_variance(model, batch, loss_fn, *, mode: str = "train", seed: int = 0) -> pd.DataFrame:
    """Residual-stream variance, block contribution, gradient and skip cost for every block.

    Args:
        model: a residual workbench model (see the module doc).
        batch: ``(inputs, targets)``.
        loss_fn: ``loss_fn(outputs, targets) -> scalar mean loss``.
        mode: ``"train"`` (batch statistics) or ``"eval"`` (running statistics); buffers are
            restored before every forward, so each skip sees the starting statistics.
        seed: seeds the random directions of ``jacobian_identity_distance`` (a generator of the
            probe's own: the global random state is not touched).

    Returns:
        Tidy rows ``probe, metric, layer, value, hvps, iters, converged``; ``layer`` is the
        block's name (``blocks.0``, ...), metrics as in the module doc.

    Raises:
        ValueError: the model has no residual blocks (a plain MLP, any other module).

    Note:
        Cost: one forward and backward pass plus one forward per block (the skips), and per
        block one forward-mode pass of that block alone (about two forwards; the
        Jacobian-vector product); the blocks' inputs and outputs held in memory once.
    """
    check_choice("mode", mode, MODES)
    check_integer("seed", seed)
    structure = _structure(model)
    blocks = model.named_blocks()
    x, y = check_pair(batch)
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def shortcut(block, inp):
        return block.shortcut(inp) if structure == "block" and hasattr(block, "shortcut") else inp

    def record(i):
        def hook(block, args, out):
            seen[i] = (args[0].detach(), out.detach())
        return hook

    with preserved_state(model):
        model.train(mode == "train")
        buffers = snapshot_buffers(model)
        handles = [b.register_forward_hook(record(i)) for i, (_, b) in enumerate(blocks)]
        try:
            loss = loss_fn(run_model(model, x), y)
        finally:
            for h in handles:
                h.remove()
        per_block = [[p for p in b.parameters() if p.requires_grad] for _, b in blocks]
        flat = [p for ps in per_block for p in ps]
        grads = torch.autograd.grad(loss, flat, allow_unused=True) if flat else []
        # drawn on the CPU and moved (random_direction, as the landscape's directions): the same
        # seed gives the same directions, and numbers, on every device
        gen = torch.Generator().manual_seed(seed)
        stats, g_iter = [], iter(grads)
        with torch.no_grad():
            for i, (_, block) in enumerate(blocks):
                inp, out = seen[i]
                # how far the block's Jacobian is from its shortcut's, along a random direction
                (v,) = random_direction([inp], gen)
                restore_buffers(buffers)
                _, jv = _jvp(block, inp, v)
                if structure == "branch":  # the block is the branch F: J_F v against v
                    base, stream_out, through = inp, inp + out, v
                else:  # the shortcut's output and J_s v from one pass (J_s = I without one)
                    restore_buffers(buffers)
                    base, through = _jvp(functools.partial(shortcut, block), inp, v)
                    stream_out, jv = out, jv - through
                identity = jv.norm() / through.norm().clamp_min(1e-30)
                update = stream_out - base
                a, b = _rows(base), _rows(stream_out)
                cos = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12)
                g = [next(g_iter) for _ in per_block[i]]
                g_sq = sum((t.square().sum() for t in g if t is not None), torch.zeros((), device=inp.device))
                stats.append(torch.stack([
                    inp.var(unbiased=False), inp.square().mean().sqrt(),
                    stream_out.var(unbiased=False), stream_out.square().mean().sqrt(),
                    update.var(unbiased=False), update.norm() / base.norm().clamp_min(1e-30),
                    torch.arccos(cos.clamp(-1, 1)).mean() / math.pi, identity,
                    g_sq.sqrt().to(inp.dtype)]))
            skips = []
            for _, block in blocks:
                def skip(mod, args, out):
                    return torch.zeros_like(out) if structure == "branch" else shortcut(mod, args[0])
                handle = block.register_forward_hook(skip)
                try:
                    restore_buffers(buffers)
                    skips.append(loss_fn(model(x), y).detach() - loss.detach())
                finally:
                    handle.remove()
            table = torch.cat([torch.stack(stats), torch.stack(skips)[:, None]], dim=1).tolist()
    rows = [(name, metric, value) for (name, _), vals in zip(blocks, table)
            for metric, value in zip(METRICS, vals)]
    return tidy_frame("depth_variance", rows, iters=1 + len(blocks))
