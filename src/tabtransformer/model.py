"""The TabTransformer (Huang, Khetan, Cvitkovic, Karnin, 2020, arXiv:2012.06678) in one file.

The paper's network (numeric_embedding="none", ensemble_size=1):

    categorical codes (B, m) --ColumnEmbedding--> (B, m, d) --N x Block--> contextual (B, m, d)
    (N = 0, the paper's MLP baseline: the plain embeddings are the contextual ones)
    continuous x (B, c) --LayerNorm--> (B, c)
    [flatten(contextual), normed x] (B, l = m*d + c) --MLP {4l, 2l}--> logits (B, n_outputs)

With numeric tokens (numeric_embedding="ple" or "periodic"), each numeric column is a token
too, so attention mixes numeric and categorical columns, and no scalar bypasses it:

    codes (B, m) --ColumnEmbedding------\
                                         cat (B, m+c, d) --N x Block--> contextual (B, m+c, d)
    numbers (B, c) --NumericEmbedding---/
    flatten(contextual) (B, l = (m+c)*d) --MLP {4l, 2l}--> logits

`numeric_blocks` = j >= 1 takes the numeric tokens through the first j blocks only (a
token costs the same in every block): after block j they wait while the categorical tokens
go on, and rejoin them before the final LayerNorm (with no categorical column there is
nothing to go on: the numeric tokens take every block, so every parameter trains):

    cat (B, m+c, d) --j x Block--> [categorical (B, m, d) --(N-j) x Block--> (B, m, d),
                                    numeric (B, c, d) as it left block j]
                    --concat--> contextual (B, m+c, d)

`numeric_skip` lists numeric columns (by index) whose tokens skip every block, as if
they had waited from the start: the two-valued columns (flags) of a table whose numeric
tokens take the first block only (one bit of information per token; a token's cost there
is the same as any other's). They rejoin the others, in column order, before the final
LayerNorm, so the MLP and every layer's contextual embeddings keep the columns' order.

`numeric_blocks` = 0: the numeric embeddings skip the Transformer, as the paper's scalars do:

    codes (B, m) --ColumnEmbedding--> (B, m, d) --N x Block--> contextual (B, m, d)
    numbers (B, c) --NumericEmbedding--> (B, c, d)
    [flatten(contextual), flatten(numeric)] (B, l = (m+c)*d) --MLP {4l, 2l}--> logits

With ensemble_size k > 1 the MLP is k independent MLPs (one batched weight per layer, each
member initialised on its own) over the same features: logits (B, k, n_outputs); with
ensemble_head="batchensemble" its hidden layers are TabM's BatchEnsemble instead (one shared
weight, per-member scalings of its inputs and outputs; the first input scaling starts at random
signs) and only the output layer is per member. `forward` always returns (B, k, n_outputs),
k = 1 for the paper; predictions average the members' probabilities (or values), the training
loss averages their losses. The members never interact before the output. Cross-fitted
models (`folds` k > 1, `CrossFitted`) are k whole networks, each fine-tuned with one fold of
the labelled rows held out, whose members sit side by side: (B, k*e, n_outputs).

Each column's embedding of a value is [shared column part (d * frac_shared_embed) ||
per-value part]; code 0 is *missing* (also the MLM mask) and code 1 is *unseen*. No
positional encoding: the column identity comes from the shared part. A numeric token is
[shared column part || the value's piecewise-linear (PLE, over the column's quantile bins)
or periodic (PLR) embedding]; a missing value (NaN) or a masked cell gets the column's
learned *missing* vector as its value part. With no token column the model is an MLP on the
continuous features; with no continuous column, the LayerNorm branch is absent.
Preprocessing has already mapped each continuous column onto N(0, 1);
`continuous_norm="none"` skips the per-row LayerNorm, and a single continuous column always
skips it (LayerNorm over one feature would erase it). `mlp_hidden_cap` > 0 caps the MLP's
first hidden width (4l) at that value; the second is always half of the first.

Speed (the paper's size is many tiny matrices: ~10 tokens of d = 32, heads of 4): the
blocks run token-major (m, B, d); on a CPU attention is computed with broadcast products
over the batch up to 13 tokens and as batched matmuls past them (`SelfAttention`), and
dropout draws 16 random bits per element (`dropout`); all categorical tables are one
nn.Embedding. None of it changes the function or the
parameter names: artifacts written before load and predict the same.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from rtdl_num_embeddings import PeriodicEmbeddings, PiecewiseLinearEmbeddings
from tabm import LinearBatchEnsemble, LinearEnsemble
from torch import nn

from tabtransformer.options import ENSEMBLE_HEADS, NUMERIC_EMBEDDINGS


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
    numeric_embedding: str = "none"  # "none" (paper: scalars into the MLP), "ple", "periodic"
    numeric_bin_edges: list[list[float]] = field(default_factory=list)  # "ple": per column
    frequency_init_scale: float = 0.01  # "periodic": σ of the initial frequencies
    ensemble_size: int = 1  # k MLP heads over the one Transformer
    ensemble_head: str = "plain"  # k > 1: "plain" (k independent MLPs) or "batchensemble"
    mlp_hidden_cap: int = 0  # > 0: the MLP's first hidden width is at most this
    folds: int = 1  # > 1: that many cross-fitted networks of this shape (CrossFitted)
    numeric_blocks: int = -1  # blocks numeric tokens go through: -1 all, 0 none, k the first k
    numeric_skip: list[int] = field(default_factory=list)  # numeric tokens that skip every block

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def numeric_embedded(self) -> bool:
        """Whether each numeric column is embedded in d dimensions (PLE or PLR)."""
        option = NUMERIC_EMBEDDINGS.get(self.numeric_embedding)
        return option is not None and option.tokens and self.n_continuous > 0

    @property
    def numeric_tokens(self) -> bool:
        """Whether the numeric embeddings are tokens through the Transformer."""
        return self.numeric_embedded and self.numeric_blocks != 0

    @property
    def n_tokens(self) -> int:
        """Token columns: the categorical ones, then (with numeric tokens) the numeric ones."""
        return len(self.cardinalities) + (self.n_continuous if self.numeric_tokens else 0)

    @property
    def mlp_width(self) -> int:
        """The MLP's input width: the flattened contextual tokens, then the numeric columns
        that skip the Transformer (embedded in d dimensions, or scalars)."""
        bypass = 0 if self.numeric_tokens else self.n_continuous
        return self.n_tokens * self.dim + bypass * (self.dim if self.numeric_embedded else 1)


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


def piecewise_linear(c: TabTransformerConfig, width: int) -> nn.Module:
    """PLE, version B (a linear part plus piecewise-linear over the column's bins)."""
    # PLE reads its bins' values while it is built: on the CPU even when the rest of the
    # network is built on the meta device (artifact validation builds it there).
    with warnings.catch_warnings(), torch.device("cpu"):
        warnings.simplefilter("ignore")  # a column with a single bin is fine here
        edges = [torch.tensor(e, dtype=torch.float32) for e in c.numeric_bin_edges]
        return PiecewiseLinearEmbeddings(edges, width, activation=False, version="B")


def periodic(c: TabTransformerConfig, width: int) -> nn.Module:
    """PLR: periodic features (frequencies drawn with std c.frequency_init_scale), then a
    per-column linear layer and ReLU."""
    scale = c.frequency_init_scale
    return PeriodicEmbeddings(c.n_continuous, width, lite=False, frequency_init_scale=scale)


# The value part of each numeric embedding that makes tokens (options.NUMERIC_EMBEDDINGS):
# (config, width) -> a module (B, c) -> (B, c, width).
NUMERIC_VALUE_EMBEDDINGS: dict[str, Callable[[TabTransformerConfig, int], nn.Module]] = {
    "ple": piecewise_linear,
    "periodic": periodic,
}


class NumericEmbedding(nn.Module):
    """Numeric columns as tokens: [shared column part || embedding of the value] (B, c, d).

    The value part is rtdl_num_embeddings' PLE (version B: linear + piecewise-linear over
    the column's bins) or PLR (periodic, then a per-column linear layer and ReLU). A NaN, or
    a cell set in `mask` (an MLM mask), takes the column's learned *missing* vector instead.
    """

    def __init__(self, c: TabTransformerConfig):
        super().__init__()
        n_columns, dim, n_shared = c.n_continuous, c.dim, round(c.dim * c.frac_shared_embed)
        kind = c.numeric_embedding
        if kind not in NUMERIC_VALUE_EMBEDDINGS:
            known = sorted(NUMERIC_VALUE_EMBEDDINGS)
            raise ValueError(f"unknown numeric_embedding {kind!r}; use one of {known}")
        self.values = NUMERIC_VALUE_EMBEDDINGS[kind](c, dim - n_shared)
        bound = dim**-0.5  # the scale of the value embeddings at initialisation
        self.missing = nn.Parameter(torch.empty(n_columns, dim - n_shared).uniform_(-bound, bound))
        self.shared = nn.Parameter(torch.empty(n_columns, n_shared).uniform_(-bound, bound))

    def forward(self, numbers: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        missing = numbers.isnan() if mask is None else numbers.isnan() | mask
        values = self.values(numbers.float().nan_to_num(0.0))  # (B, c, d - s)
        values = torch.where(missing[..., None], self.missing.to(values.dtype), values)
        shared = self.shared.expand(numbers.shape[0], -1, -1).to(values.dtype)
        return torch.cat([shared, values], dim=-1)


class Dropout(nn.Module):
    """nn.Dropout, faster on the CPU (see `dropout`)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zero each element with probability `p` and scale the rest by 1 / (1 - p): on the
    CPU with `dropout_scale`, elsewhere with F.dropout."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training=True)
    return x * dropout_scale(x.shape, x.device, p).to(x.dtype)


def dropout_scale(shape: torch.Size, device: torch.device, p: float) -> torch.Tensor:
    """A tensor of `shape`: 0 with probability `p` (< 1), else 1 / (1 - p) (float32).

    On the CPU, PyTorch draws one random number per element (its bernoulli costs ten times
    a multiplication); here one 64-bit draw gives four 16-bit lanes, and an element is kept
    when its lane is at or above p's share of the 65536 values (p rounded to 1/65536). The
    comparison is float arithmetic: lane - (threshold - 1) clamped to [0, 1] is exactly 1
    (kept) or 0 for an integer lane, and it runs vectorised where a bool tensor's
    comparison and conversion do not (the same mask, 1.3-2x faster)."""
    if device.type == "cpu":
        n = math.prod(shape)
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
        lanes = bits.view(torch.int16)[:n].view(shape)  # uniform on [-32768, 32767]
        threshold = round(p * 65536) - 32768
        keep = lanes.to(torch.float32).sub_(threshold - 1).clamp_(0.0, 1.0)
        return keep.mul_(1.0 / (1.0 - p))
    return (torch.rand(shape, device=device) >= p) * (1.0 / (1.0 - p))


# Attention on a CPU over a batch of at least CPU_ATTENTION_MIN_ROWS rows (measured on 2
# cores, d = 32 and 8 heads, a training step's attention at 256 rows and inference at 1024):
# up to TINY_ATTENTION_MAX_TOKENS tokens the broadcast products of TinyHeadAttention win
# (at 11 tokens: training 1.6x, inference 3.4x faster than F.scaled_dot_product_attention);
# with more, its (heads, m, m, B) temporaries leave the cache and `batched_attention`'s
# matmuls win (training 1.3-1.6x and inference 1.5-2.2x faster than F.sdpa from 16 to 74
# tokens: its dropout draws one bernoulli per weight, `dropout` a 16-bit lane). For a
# handful of rows (single-row requests) and on a GPU, PyTorch's kernel runs.
TINY_ATTENTION_MAX_TOKENS = 13
TRANSPOSED_INFERENCE_MAX_TOKENS = 24
CPU_ATTENTION_MIN_ROWS = 16


class TinyHeadAttention(torch.autograd.Function):
    """Attention for `qkv` laid out (3, heads, e, m, B) with small e and m: each query's
    softmax over keys of k.q / sqrt(e), times `keep` (the weights' dropout scale, or None),
    weighting v; out (heads, e, queries, B). Every operation is a broadcast product or sum
    vectorised over B. The backward is written out: autograd's, through the e + m slices
    of the forward sums, would build a full-size zero gradient for every slice."""

    @staticmethod
    def forward(ctx, qkv, keep):
        q, k, v = qkv.unbind(0)  # (heads, e, m, B) each
        e, m = q.shape[1], q.shape[2]
        k_scaled = k * e**-0.5
        scores = k_scaled[:, 0, :, None] * q[:, 0, None]  # (heads, keys, queries, B)
        for i in range(1, e):
            scores = torch.addcmul(scores, k_scaled[:, i, :, None], q[:, i, None])
        probs = scores.softmax(1)
        weights = probs if keep is None else probs * keep
        y = weights[:, None, 0] * v[:, :, 0, None]  # (heads, e, queries, B)
        for j in range(1, m):
            y = torch.addcmul(y, weights[:, None, j], v[:, :, j, None])
        ctx.save_for_backward(qkv, probs, keep)
        return y

    @staticmethod
    def backward(ctx, d_y):
        qkv, probs, keep = ctx.saved_tensors
        q, k, v = qkv.unbind(0)
        e = q.shape[1]
        d_y = d_y.contiguous()  # it arrives transposed from the output projection
        weights = probs if keep is None else probs * keep
        d_weights = d_y[:, 0, None] * v[:, 0, :, None]  # (heads, keys, queries, B)
        for i in range(1, e):
            d_weights = torch.addcmul(d_weights, d_y[:, i, None], v[:, i, :, None])
        d_probs = d_weights if keep is None else d_weights * keep
        d_scores = probs * (d_probs - (probs * d_probs).sum(1, keepdim=True)) * e**-0.5
        # One head dim at a time (4-d broadcasts are several times faster than one 5-d
        # one), each sum written straight into the gradient of q, k or v.
        d_qkv = torch.empty(qkv.shape, dtype=d_scores.dtype, device=qkv.device)
        for i in range(e):
            torch.sum(d_scores * k[:, i, :, None], 1, out=d_qkv[0, :, i])  # over keys
            torch.sum(d_scores * q[:, i, None], 2, out=d_qkv[1, :, i])  # over queries
            torch.sum(weights * d_y[:, i, None], 2, out=d_qkv[2, :, i])  # over queries
        return d_qkv.to(qkv.dtype), None


def batched_attention(qkv: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Attention for `qkv` laid out (3, heads, e, m, B) as batched matmuls over the B * heads
    matrices, the weights' dropout by `dropout`; out (heads, e, queries, B).

    In training, and in inference up to TRANSPOSED_INFERENCE_MAX_TOKENS tokens, the matrices
    are laid out transposed, (e, m), with scores (keys, queries) and the softmax over keys:
    with e = 4 a product whose output is m wide runs faster than one whose output is e wide,
    and the result is already in the output's order. Past that many tokens an inference
    runs the plain layout, (m, e), whose softmax over a contiguous last dimension wins."""
    _, h, e, m, b = qkv.shape
    if training or m <= TRANSPOSED_INFERENCE_MAX_TOKENS:
        q, k, v = qkv.permute(0, 4, 1, 2, 3).reshape(3, b * h, e, m).unbind(0)  # (B*heads, e, m)
        weights = torch.bmm(k.transpose(1, 2), q * e**-0.5).softmax(1)  # (B*heads, keys, queries)
        y = torch.bmm(v, dropout(weights, p, training))  # (B * heads, e, queries)
        return y.view(b, h, e, m).permute(1, 2, 3, 0)
    q, k, v = qkv.permute(0, 4, 1, 3, 2).reshape(3, b * h, m, e).unbind(0)  # (B*heads, m, e)
    weights = torch.bmm(q * e**-0.5, k.transpose(1, 2)).softmax(-1)  # (B*heads, queries, keys)
    return torch.bmm(weights, v).view(b, h, m, e).permute(1, 3, 2, 0)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the m tokens of token-major input (m, B, d).

    At the paper's size (m ~ 10 tokens, d / heads = 4) attention is a great many 10 x 4
    matrices: batched matmuls of them, and a softmax over a last dimension of size m, are
    slow on a CPU. Here the projections are computed transposed, W @ x^T, which lays q, k
    and v out as (heads, e, m, B) with no copy; a score is a sum of e broadcast products,
    the softmax runs over the key dimension with B contiguous, and every operation is
    vectorised over the batch (TinyHeadAttention). With more than TINY_ATTENTION_MAX_TOKENS
    tokens, batched matmuls (`batched_attention`); with fewer than CPU_ATTENTION_MIN_ROWS
    rows, or on a GPU, F.scaled_dot_product_attention. All three are the same function of
    the same parameters."""

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, b, d = x.shape
        h, e = self.n_heads, d // self.n_heads
        rows = x.reshape(m * b, d)
        qkv = torch.addmm(self.qkv.bias[:, None], self.qkv.weight, rows.t())  # (3d, m * B)
        qkv = qkv.view(3, h, e, m, b)
        p = self.dropout if self.training else 0.0
        if x.device.type == "cpu" and b >= CPU_ATTENTION_MIN_ROWS:
            if m <= TINY_ATTENTION_MAX_TOKENS:
                keep = dropout_scale((h, m, m, b), x.device, p) if p > 0 else None
                y = TinyHeadAttention.apply(qkv, keep)  # (heads, e, queries, B)
            else:
                y = batched_attention(qkv, p, self.training)
        else:  # a few rows, or a GPU: PyTorch's fused kernels
            q, k, v = qkv.permute(0, 4, 1, 3, 2).unbind(0)  # (B, heads, m, e) each
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p).permute(1, 3, 2, 0)
        return F.linear(y.reshape(d, m * b).t(), self.proj.weight, self.proj.bias).view(m, b, d)


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(ln(x)), then x + ffn(ln(x)) with ffn width 4d,
    on token-major x (m, B, d)."""

    def __init__(self, dim: int, n_heads: int, attn_dropout: float, ff_dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, n_heads, attn_dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            Dropout(ff_dropout),
            nn.Linear(4 * dim, dim),
            Dropout(ff_dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


def is_head(name: str) -> bool:
    """Whether a TabTransformer parameter or state name belongs to the prediction head."""
    return name.startswith("mlp.")


class TabTransformer(nn.Module):
    # Set at run time, not part of the config: the dtype the prediction head computes in
    # while training (hardware.training_head_dtype; None: the caller's).
    head_dtype: torch.dtype | None = None

    def __init__(self, config: TabTransformerConfig):
        super().__init__()
        if config.folds != 1:
            raise ValueError("a config of several folds builds a CrossFitted network")
        self.config = c = config
        n_cat = len(c.cardinalities)
        if n_cat:
            self.embed = ColumnEmbedding(c.cardinalities, c.dim, c.frac_shared_embed)
        if c.numeric_embedded:
            self.embed_numbers = NumericEmbedding(c)
        if c.numeric_skip:
            if not c.numeric_tokens or sorted(set(c.numeric_skip)) != c.numeric_skip:
                raise ValueError("numeric_skip lists numeric tokens' columns, ascending")
            if c.numeric_skip[0] < 0 or c.numeric_skip[-1] >= c.n_continuous:
                raise ValueError(f"numeric_skip holds columns of 0 to {c.n_continuous - 1}")
            if c.n_tokens == len(c.numeric_skip):
                raise ValueError("numeric_skip leaves no token for the Transformer")
            skipping = set(c.numeric_skip)
            attending = [i for i in range(c.n_continuous) if i not in skipping]
            order = torch.tensor(attending + c.numeric_skip)  # attending first, then skipping
            self.register_buffer("numeric_order", order, persistent=False)
            self.register_buffer("numeric_unorder", order.argsort(), persistent=False)
        if c.n_tokens:
            self.blocks = nn.ModuleList(
                Block(c.dim, c.n_heads, c.attn_dropout, c.mlp_dropout) for _ in range(c.n_blocks)
            )
            # n_blocks = 0 (the paper's MLP baseline): the plain embeddings reach the MLP.
            self.ln_f = nn.LayerNorm(c.dim) if c.n_blocks else nn.Identity()
        scalars = 0 if c.numeric_embedded else c.n_continuous  # numbers that bypass attention
        layer_norm = c.continuous_norm == "layer" and scalars > 1
        self.continuous_norm = nn.LayerNorm(scalars) if layer_norm else None
        width = c.mlp_width
        hidden = min(4 * width, c.mlp_hidden_cap) if c.mlp_hidden_cap else 4 * width
        self.mlp = mlp_head(
            [width, hidden, hidden // 2, c.n_outputs],
            c.mlp_dropout,
            c.ensemble_size,
            c.ensemble_head,
        )

    def contextual(
        self,
        codes: torch.Tensor,
        numbers: torch.Tensor | None = None,
        numeric_mask: torch.Tensor | None = None,
        layer: int = -1,
    ) -> torch.Tensor:
        """Contextual embeddings (B, n_tokens, d) of every token column: the categorical
        codes (B, m), then, with numeric tokens, the numbers (B, c) (NaN = missing).

        `layer` picks the depth, like a list index over n_blocks + 1 layers: 0 = the token
        embeddings before the Transformer, i = after block i, -1 = after the last block and
        the final LayerNorm (what the MLP reads). With n_blocks = 0, layer 0 is also the last.
        `numeric_mask` (B, c, bool) gives chosen numeric cells the column's missing vector
        (an MLM mask); replacing a row's numbers by another row's is an RTD corruption.
        Without `numbers`, every numeric cell counts as missing. With `numeric_blocks` = j,
        a numeric token's embedding at a layer past j is the one it left block j with; a
        token in `numeric_skip` keeps its embedding from layer 0 until the final LayerNorm.
        """
        n_layers = self.config.n_blocks + 1
        if not -n_layers <= layer < n_layers:
            raise IndexError(f"layer {layer} is out of range for {n_layers} layers")
        depth = layer % n_layers  # blocks to run
        parts = []
        if self.config.cardinalities:
            parts.append(self.embed(codes))
        if self.config.numeric_tokens:
            if numbers is None:
                numbers = torch.full(
                    (codes.shape[0], self.config.n_continuous), float("nan"), device=codes.device
                )
            parts.append(self.embed_numbers(numbers, numeric_mask))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        x = x.transpose(0, 1).contiguous()  # token-major (n_tokens, B, d) for the blocks
        m, held = len(self.config.cardinalities), None
        skipped = len(self.config.numeric_skip)
        if skipped:  # the attending tokens first, the skipping ones wait from the start
            numeric = x[m:].index_select(0, self.numeric_order)
            x, skipping = torch.cat([x[:m], numeric[:-skipped]]), numeric[-skipped:]
        for i, block in enumerate(self.blocks[:depth]):
            if i == self.config.numeric_blocks and self.config.numeric_tokens and m:
                x, held = x[:m], x[m:]  # the numeric tokens wait; the categorical go on
            x = block(x)
        if held is not None:
            x = torch.cat([x, held])
        if skipped:  # every numeric token back in its column's place
            numeric = torch.cat([x[m:], skipping]).index_select(0, self.numeric_unorder)
            x = torch.cat([x[:m], numeric])
        x = self.ln_f(x) if depth == self.config.n_blocks else x
        return x.transpose(0, 1)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The embeddings' and Transformer's parameters: what pretraining learns."""
        return [p for name, p in self.named_parameters() if not is_head(name)]

    def head_parameters(self) -> list[nn.Parameter]:
        """The prediction head's (the MLP's) parameters."""
        return [p for name, p in self.named_parameters() if is_head(name)]

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """The state_dict without the prediction head: what a pretrained artifact holds."""
        return {k: v for k, v in self.state_dict().items() if not is_head(k)}

    def forward(self, codes: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """Outputs (B, k, n_outputs) of the k ensemble members (k = 1: the paper's head)."""
        parts = []
        if self.config.n_tokens:
            parts.append(self.contextual(codes, numbers).flatten(1))
        if self.config.numeric_embedded and not self.config.numeric_tokens:
            parts.append(self.embed_numbers(numbers).flatten(1))  # (B, c * d)
        elif self.config.n_continuous and not self.config.numeric_embedded:
            norm = self.continuous_norm
            parts.append(norm(numbers) if norm is not None else numbers)
        return self.head(torch.cat(parts, dim=1))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """The k members' outputs (B, k, n_outputs) from the flat features (B, width); in
        training under autocast to `head_dtype` when that is set (float32 outputs)."""
        k = self.config.ensemble_size
        if k > 1:
            features = features.unsqueeze(1).expand(-1, k, -1)  # (B, k, width)
        if self.training and self.head_dtype is not None:
            with torch.autocast(features.device.type, dtype=self.head_dtype):
                out = self.mlp(features).float()
        else:
            out = self.mlp(features)
        return out if k > 1 else out.unsqueeze(1)


class CrossFitted(nn.Module):
    """k networks of one shape, each fine-tuned with one fold of the labelled rows held out
    (`cv_folds`), as one module: their ensemble members side by side.

        codes (B, m), numbers (B, c)
          -> each fold's TabTransformer: (B, e, n_outputs)
          -> concatenated on the member dimension: (B, k*e, n_outputs)

    so that the prediction (the mean over members of their probabilities or values) is the
    mean over the folds. `contextual` is the folds' mean contextual embedding."""

    def __init__(self, config: TabTransformerConfig):
        super().__init__()
        self.config = config
        one = replace(config, folds=1)
        self.folds = nn.ModuleList(TabTransformer(one) for _ in range(config.folds))

    @classmethod
    def of(cls, networks: list[TabTransformer]) -> CrossFitted:
        """The fold networks (one shape) as one module; their weights are copied in."""
        folded = cls(replace(networks[0].config, folds=len(networks)))
        for fold, network in zip(folded.folds, networks, strict=True):
            fold.load_state_dict(network.state_dict())
        return folded

    def contextual(self, codes: torch.Tensor, *more: Any, **named: Any) -> torch.Tensor:
        """The mean over the folds of `TabTransformer.contextual` (the same arguments):
        (B, n_tokens, d)."""
        return torch.stack([f.contextual(codes, *more, **named) for f in self.folds]).mean(0)

    def forward(self, codes: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """Outputs (B, k*e, n_outputs): every fold's e ensemble members."""
        return torch.cat([f(codes, numbers) for f in self.folds], dim=1)


Network = TabTransformer | CrossFitted


def build_network(config: TabTransformerConfig) -> Network:
    """The network a config describes: one TabTransformer, or `folds` of them."""
    return CrossFitted(config) if config.folds > 1 else TabTransformer(config)


def mlp_head(widths: list[int], dropout: float, k: int, kind: str = "plain") -> nn.Sequential:
    """Linear-ReLU-Dropout layers through `widths`. k = 1: plain nn.Linear layers (the
    paper's parameter names and shapes). k > 1, input and output (B, k, width), members that
    do not interact: "plain", k independent MLPs in one batched weight per layer (tabm's
    LinearEnsemble); "batchensemble", hidden layers with one shared weight and per-member
    scalings (tabm's LinearBatchEnsemble, TabM's initialisation: random signs for the first
    input scaling, ones elsewhere) and a per-member output layer."""
    if kind not in ENSEMBLE_HEADS:
        raise ValueError(f"unknown ensemble_head {kind!r}; use one of {ENSEMBLE_HEADS}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
        last = i == len(widths) - 2
        if k == 1:
            layers.append(nn.Linear(n_in, n_out))
        elif kind == "plain" or last:
            layers.append(LinearEnsemble(n_in, n_out, k=k))
        else:
            scaling = ("random-signs", "ones") if i == 0 else "ones"
            layers.append(LinearBatchEnsemble(n_in, n_out, k=k, scaling_init=scaling))
        if not last:
            layers += [nn.ReLU(), Dropout(dropout)]
    return nn.Sequential(*layers)
