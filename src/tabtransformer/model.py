"""The TabTransformer (Huang, Khetan, Cvitkovic, Karnin, 2020, arXiv:2012.06678) in one file.

    categorical codes (B, m) --ColumnEmbedding--> (B, m, d) --N x Block--> contextual (B, m, d)
    continuous x (B, c) --LayerNorm--> (B, c)
    [flatten(contextual), normed x] (B, l = m*d + c) --MLP {4l, 2l}--> logits (B, n_outputs)

Each column's embedding of a value is [shared column part (d * frac_shared_embed) ||
per-value part]; code 0 is *missing* (also the MLM mask) and code 1 is *unseen*. No
positional encoding: the column identity comes from the shared part. With no categorical
column the model is an MLP on the continuous features; with no continuous column, the
LayerNorm branch is absent. Preprocessing has already mapped each continuous column onto
N(0, 1); `continuous_norm="none"` skips the per-row LayerNorm, and a single continuous
column always skips it (LayerNorm over one feature would erase it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TabTransformerConfig:
    """Everything needed to rebuild the network; saved as JSON next to the weights."""

    cardinalities: list[int] = field(default_factory=list)  # per column, incl. 2 specials
    n_continuous: int = 0
    n_outputs: int = 1
    dim: int = 32
    n_blocks: int = 6
    n_heads: int = 8
    frac_shared_embed: float = 0.125
    attn_dropout: float = 0.3  # the defaults are the job's hyperparameter defaults
    mlp_dropout: float = 0.3
    continuous_norm: str = "none"  # "layer" (paper) or "none"

    def to_dict(self) -> dict:
        return asdict(self)


class ColumnEmbedding(nn.Module):
    """All categorical columns' tables in one nn.Embedding, indexed through column offsets."""

    def __init__(self, cardinalities: list[int], dim: int, frac_shared: float):
        super().__init__()
        self.n_shared = round(dim * frac_shared)
        offsets = torch.tensor([0, *cardinalities[:-1]]).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.values = nn.Embedding(sum(cardinalities), dim - self.n_shared)
        self.shared = nn.Parameter(torch.randn(len(cardinalities), self.n_shared))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        values = self.values(codes + self.offsets)  # (B, m, d - s)
        shared = self.shared.expand(codes.shape[0], -1, -1)  # (B, m, s)
        return torch.cat([shared, values], dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, m, d = x.shape
        q, k, v = self.qkv(x).view(b, m, 3, self.n_heads, d // self.n_heads).unbind(2)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.proj(y.transpose(1, 2).reshape(b, m, d))


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(ln(x)), then x + ffn(ln(x)) with ffn width 4d."""

    def __init__(self, dim: int, n_heads: int, attn_dropout: float, ff_dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, n_heads, attn_dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Dropout(ff_dropout),
            nn.Linear(4 * dim, dim),
            nn.Dropout(ff_dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class TabTransformer(nn.Module):
    def __init__(self, config: TabTransformerConfig):
        super().__init__()
        self.config = c = config
        n_cat = len(c.cardinalities)
        if n_cat:
            self.embed = ColumnEmbedding(c.cardinalities, c.dim, c.frac_shared_embed)
            self.blocks = nn.ModuleList(
                Block(c.dim, c.n_heads, c.attn_dropout, c.mlp_dropout) for _ in range(c.n_blocks)
            )
            self.ln_f = nn.LayerNorm(c.dim)
        layer_norm = c.continuous_norm == "layer" and c.n_continuous > 1
        self.continuous_norm = nn.LayerNorm(c.n_continuous) if layer_norm else None
        width = n_cat * c.dim + c.n_continuous
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width),
            nn.ReLU(),
            nn.Dropout(c.mlp_dropout),
            nn.Linear(4 * width, 2 * width),
            nn.ReLU(),
            nn.Dropout(c.mlp_dropout),
            nn.Linear(2 * width, c.n_outputs),
        )

    def contextual(self, codes: torch.Tensor) -> torch.Tensor:
        """Contextual embeddings (B, m, d) of the categorical codes (B, m)."""
        x = self.embed(codes)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def forward(self, codes: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.config.cardinalities:
            parts.append(self.contextual(codes).flatten(1))
        if self.config.n_continuous:
            norm = self.continuous_norm
            parts.append(norm(numbers) if norm is not None else numbers)
        return self.mlp(torch.cat(parts, dim=1))
