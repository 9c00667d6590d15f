"""A small decoder-only transformer with every LayerNorm placement the depth papers compare.

Placements (``TransformerConfig.placement``):
- ``pre``: ``x = x + f(LN(x))`` per sublayer, final LN before the head (GPT-2 style).
- ``post``: ``x = LN(x + f(x))`` per sublayer (original Transformer), no final LN.
- ``mix``: Mix-LN (Li et al. 2024): Post-LN for the first ``floor(mix_fraction * depth)`` blocks,
  Pre-LN for the rest, final LN before the head.
- ``ln_scaling``: LayerNorm Scaling (Sun et al. 2025, "The Curse of Depth in LLMs"): Pre-LN with
  each LN output in block ``l`` (1-based) multiplied by ``1/sqrt(l)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import as_floats, check_choice, check_positive
from ..norms import make_norm
from .base import WorkbenchModel

TRANSFORMER_NORMS = ("layer", "rms", "batch", "power")
PLACEMENTS = ("pre", "post", "mix", "ln_scaling")


@dataclass(frozen=True)
class TransformerConfig:
    """Decoder-only transformer; ``vocab_size``/``seq_len`` are filled from the data set.

    ``init_std``: None keeps PyTorch's default initialization (embeddings N(0, 1), linear layers
    Kaiming-uniform); a number draws every embedding and linear weight from N(0, init_std^2) with
    zero biases, as GPT-2 and LLaMA do (0.02): a much smaller residual stream at the start, which
    changes how the LN placements behave early in training."""

    kind: ClassVar[str] = "transformer"
    layout: ClassVar[str] = "tokens"
    depth: int = 2
    d_model: int = 32
    heads: int = 2
    mlp_ratio: int = 4
    norm: str = "layer"
    norm_options: dict = field(default_factory=dict)
    placement: str = "pre"
    mix_fraction: float = 0.25
    init_std: float | None = None
    vocab_size: int | None = None
    seq_len: int | None = None

    def __post_init__(self):
        as_floats(self)
        for name in ("depth", "d_model", "heads", "mlp_ratio"):
            check_positive(name, getattr(self, name), integer=True)
        check_choice("transformer norm", self.norm, TRANSFORMER_NORMS)
        check_choice("placement", self.placement, PLACEMENTS)
        if self.d_model % self.heads:
            valid = [h for h in range(1, self.d_model + 1) if self.d_model % h == 0]
            raise ValueError(f"heads={self.heads} does not divide d_model={self.d_model}; "
                             f"valid values: {', '.join(map(str, valid))}")
        if not 0.0 <= self.mix_fraction <= 1.0:
            raise ValueError(f"mix_fraction must be in [0, 1], got {self.mix_fraction!r}")
        if self.init_std is not None:  # None: PyTorch's default init; e.g. 0.02 (GPT-2/LLaMA)
            check_positive("init_std", self.init_std)
            if math.isinf(self.init_std):
                raise ValueError(f"init_std must be finite (e.g. 0.02), got {self.init_std!r}")
        for name in ("vocab_size", "seq_len"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name), integer=True)
        make_norm(self.norm, self.d_model, self.layout, **self.norm_options)

    @property
    def num_post_blocks(self) -> int:
        """Blocks that use Post-LN: all for ``post``, the first fraction for ``mix``."""
        return {"post": self.depth, "mix": int(math.floor(self.mix_fraction * self.depth))}.get(
            self.placement, 0)

    @classmethod
    def smoke(cls) -> TransformerConfig:
        return cls(depth=2, d_model=16, heads=2)


class CausalSelfAttention(nn.Module):
    """Explicit (not fused) attention so double-backward and forward-mode AD work for probes."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape  # (N, T, C)
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(n, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(c // self.heads)  # (N, H, T, T)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        att = F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(n, t, c)
        return self.proj(y)


class Block(nn.Module):
    """One transformer block; ``post`` selects Post-LN, ``scale`` multiplies LN outputs (LNS)."""

    def __init__(self, cfg: TransformerConfig, post: bool, scale: float):
        super().__init__()
        self.post, self.scale = post, scale
        self.norm1 = make_norm(cfg.norm, cfg.d_model, "tokens", **cfg.norm_options)
        self.attn = CausalSelfAttention(cfg.d_model, cfg.heads)
        self.norm2 = make_norm(cfg.norm, cfg.d_model, "tokens", **cfg.norm_options)
        hidden = cfg.mlp_ratio * cfg.d_model
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, hidden), nn.GELU(), nn.Linear(hidden, cfg.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, C) -> (N, T, C)
        if self.post:
            x = self.norm1(x + self.attn(x))
            return self.norm2(x + self.mlp(x))
        x = x + self.attn(self.scale * self.norm1(x))
        return x + self.mlp(self.scale * self.norm2(x))

    def extra_repr(self) -> str:
        return f"post={self.post}, ln_scale={self.scale:.4g}"


class Transformer(WorkbenchModel):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        if cfg.vocab_size is None or cfg.seq_len is None:
            raise ValueError("TransformerConfig needs vocab_size and seq_len (the trainer fills them from the data set)")
        self.config = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.seq_len, cfg.d_model)
        n_post = cfg.num_post_blocks
        self.blocks = nn.ModuleList(
            Block(cfg, post=i < n_post,
                  scale=1.0 / math.sqrt(i + 1) if cfg.placement == "ln_scaling" else 1.0)
            for i in range(cfg.depth)
        )
        has_final = cfg.placement != "post"
        self.final_norm = make_norm(cfg.norm if has_final else "none", cfg.d_model, "tokens",
                                    **(cfg.norm_options if has_final else {}))
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)
        if cfg.init_std is not None:  # GPT-2/LLaMA-style: N(0, std^2) weights, zero biases
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, 0.0, cfg.init_std)
                    if getattr(m, "bias", None) is not None:
                        nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        n, t = idx.shape  # (N, T) token ids
        if t > self.config.seq_len:
            raise ValueError(f"sequence length {t} exceeds the model's seq_len={self.config.seq_len}")
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))  # (N, T, C)
        for block in self.blocks:
            x = block(x)
        return self.head(self.final_norm(x))  # (N, T, vocab)
