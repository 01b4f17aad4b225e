"""Content negotiation, without torch: which response an Accept header asks for.

The serving master checks SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT with `negotiate` before any
worker (and torch) starts. `RESPONSE_TYPES` are the types `codecs.ENCODERS` writes (a test
keeps the two the same); q-values rank them, and q=0 excludes one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sagemaker_inference import content_types
from sagemaker_inference.errors import GenericInferenceToolkitError

from tabtransformer.errors import UserError

JSONLINES = "application/jsonlines"
ALIASES = {"application/x-jsonlines": JSONLINES}  # another name for the same type
RESPONSE_TYPES = (content_types.JSON, content_types.CSV, JSONLINES)
VERBOSE, EMBEDDINGS, EXPLAIN = "verbose", "embeddings", "explain"


def media_type(header: str | None) -> tuple[str, set[str]]:
    """'application/json; verbose' -> ('application/json', {'verbose'})."""
    parts = [p.strip().lower() for p in (header or "").split(";")]
    return parts[0], {p.split("=")[0] for p in parts[1:] if p}


@dataclass(frozen=True)
class ResponseFormat:
    """What the client asked for: a content type, and whether to add labels, contextual
    embeddings or attributions."""

    content_type: str
    verbose: bool = False
    embeddings: bool = False
    explain: bool = False


def accepted(accept: str | None, default: str) -> list[str]:
    """The media ranges of an Accept header, most preferred first (by q-value, then order),
    without those of q=0 ("not acceptable"); none at all: `default`."""
    ranked = []
    for position, candidate in enumerate(c.strip() for c in (accept or "").split(",")):
        if not candidate:
            continue
        q = 1.0
        for param in candidate.split(";")[1:]:
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = math.nan
                if not 0 <= q <= 1:
                    raise UserError(
                        f"Accept {candidate!r}: q must be a number from 0 to 1 (q=0: not "
                        "acceptable)."
                    )
        if q > 0:
            ranked.append((-q, position, candidate))
    if not accept or not accept.strip():
        return [default]
    return [candidate for _, _, candidate in sorted(ranked)]


def negotiate(accept: str | None, default: str) -> ResponseFormat:
    """Pick the most preferred supported type of an Accept header ('*/*' or none:
    `default`); q-values rank the types and q=0 excludes one."""
    for candidate in accepted(accept, default):
        kind, params = media_type(candidate)
        params.discard("q")
        if kind in (content_types.ANY, "application/*", ""):
            kind, params = media_type(default)
        kind = ALIASES.get(kind, kind)
        if kind == content_types.CSV and params & {EMBEDDINGS, EXPLAIN}:
            raise GenericInferenceToolkitError(
                406,
                f"Accept {candidate.strip()!r}: CSV answers carry predictions only; ask for "
                "application/json;embeddings or application/json;explain (or "
                "application/jsonlines with the same parameters).",
            )
        if kind in RESPONSE_TYPES:
            return ResponseFormat(kind, VERBOSE in params, EMBEDDINGS in params, EXPLAIN in params)
    raise GenericInferenceToolkitError(
        406,
        f"Accept {accept!r} is not supported; ask for one of "
        f"{', '.join(RESPONSE_TYPES)} (application/json;verbose adds labels, ;embeddings the "
        "contextual embeddings, ;explain per-column attributions).",
    )
