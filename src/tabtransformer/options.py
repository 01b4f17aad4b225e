"""The named options where the code varies, importable without torch.

The hyperparameter schema and the artifact's config rules take their allowed values from
here; the implementations register under the same names (pretraining objectives in
`pretraining.OBJECTIVES`, numeric embeddings in `model.NUMERIC_VALUE_EMBEDDINGS`, ensemble
heads in `model.ENSEMBLE_HEAD_LAYERS`, response content types in `serving.codecs`), and a
test checks that both sides name the same set. Adding an option is one entry here and one
class or function there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NumericEmbeddingOption:
    """How a numeric embedding brings numeric columns in."""

    tokens: bool  # each numeric column is a token through the Transformer
    needs_bin_edges: bool  # built from the columns' quantile bin edges (PLE)


# "none": the paper's scalars into the MLP; "ple": piecewise-linear encoding over quantile
# bins; "periodic": PLR (periodic features, a linear layer and ReLU).
NUMERIC_EMBEDDINGS: dict[str, NumericEmbeddingOption] = {
    "none": NumericEmbeddingOption(tokens=False, needs_bin_edges=False),
    "ple": NumericEmbeddingOption(tokens=True, needs_bin_edges=True),
    "periodic": NumericEmbeddingOption(tokens=True, needs_bin_edges=False),
}
# How far numeric tokens go through the Transformer (numeric_attention): the blocks they
# pass, as model.TabTransformerConfig.numeric_blocks (-1: every block; 0: none, the
# embeddings reach the MLP directly).
NUMERIC_ATTENTION: dict[str, int] = {"all": -1, "first": 1, "none": 0}
# What numeric columns with at most two values (flags) do when numeric tokens take the
# Transformer (numeric_flags): go through it like the others, or skip every block.
NUMERIC_FLAGS = ("attend", "skip")
PRETRAINING_OBJECTIVES = ("mlm", "rtd")  # masked language modelling, replaced token detection
ENSEMBLE_HEADS = ("plain", "batchensemble")
