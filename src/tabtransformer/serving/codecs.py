"""Request bodies to feature frames, predictions to response bodies.

Decoders return a DataFrame whose index is the 1-based row number, so that a bad value is
reported as "row 3, column 'age'". Nothing here unpickles: NPY is not accepted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from sagemaker_inference import content_types
from sagemaker_inference.errors import GenericInferenceToolkitError

from tabtransformer.channels import parse_csv
from tabtransformer.errors import UserError
from tabtransformer.inference import Predictor

JSONLINES = "application/jsonlines"
DECODABLE = (content_types.CSV, content_types.JSON, JSONLINES, "application/x-jsonlines")
ENCODABLE = (content_types.JSON, content_types.CSV, JSONLINES)
VERBOSE = "verbose"


def media_type(header: str | None) -> tuple[str, set[str]]:
    """'application/json; verbose' -> ('application/json', {'verbose'})."""
    parts = [p.strip().lower() for p in (header or "").split(";")]
    return parts[0], {p.split("=")[0] for p in parts[1:] if p}


def decode(body: bytes, content_type: str | None, predictor: Predictor) -> pd.DataFrame:
    """Parse a request body into a frame of the model's feature columns."""
    kind, _ = media_type(content_type)
    if kind not in DECODABLE:
        raise GenericInferenceToolkitError(
            415,
            f"Content-Type {content_type!r} is not supported; send one of "
            f"{', '.join(DECODABLE[:3])}.",
        )
    if not body.strip():
        raise UserError("The request body is empty: send at least one row of features.")
    names = predictor.feature_names
    if kind == content_types.CSV:
        frame = parse_csv(pa.BufferReader(body), names, 0, locate=lambda line: f"row {line}")
    elif kind == content_types.JSON:
        frame = _frame_from_instances(_json_instances(body), predictor)
    else:
        frame = _frame_from_instances(_jsonlines_instances(body), predictor)
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="row")
    return frame


def _json_instances(body: bytes) -> list[Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"The body is not valid JSON: {e}.") from None
    if isinstance(data, dict):
        if "instances" not in data:
            raise UserError(
                f'A JSON object body needs the key "instances" (a list of rows); '
                f"found keys {sorted(data)[:10]}."
            )
        data = data["instances"]
    if not isinstance(data, list):
        raise UserError('The JSON body must be {"instances": [...]} or a list of rows.')
    return data


def _jsonlines_instances(body: bytes) -> list[Any]:
    rows = []
    for number, line in enumerate(body.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except (ValueError, UnicodeDecodeError) as e:
                raise UserError(f"Line {number} is not valid JSON: {e}.") from None
    return rows


def _frame_from_instances(rows: list[Any], predictor: Predictor) -> pd.DataFrame:
    """Rows as lists (by position) or objects (by column name) into one frame."""
    names = predictor.feature_names
    rows = [r["features"] if isinstance(r, dict) and set(r) == {"features"} else r for r in rows]
    if not rows:
        raise UserError("The request holds no rows.")
    if all(isinstance(r, dict) for r in rows):
        frame = pd.DataFrame.from_records(rows)
        unknown = [c for c in frame.columns if c not in names]
        if unknown:
            row = next(i for i, r in enumerate(rows, 1) if unknown[0] in r)
            raise UserError(
                f"row {row}: unknown column {unknown[0]!r}; the model's columns are {names}."
            )
        return frame.reindex(columns=names)  # absent keys are missing values
    if all(isinstance(r, list) for r in rows):
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        wrong = np.flatnonzero(lengths != len(names))
        if len(wrong):
            raise UserError(
                f"row {wrong[0] + 1}: expected {len(names)} values but found "
                f"{lengths[wrong[0]]} ({len(wrong)} such row(s))."
            )
        return pd.DataFrame(rows, columns=names, dtype=object)
    bad = next(i for i, r in enumerate(rows, 1) if not isinstance(r, (list, dict)))
    raise UserError(
        f"row {bad}: each row must be a list of values or an object of "
        "column: value pairs, all rows the same kind."
    )


@dataclass(frozen=True)
class ResponseFormat:
    """What the client asked for: a content type, and whether to add labels."""

    content_type: str
    verbose: bool = False


def negotiate(accept: str | None, default: str) -> ResponseFormat:
    """Pick the first supported type of an Accept header ('*/*' or none: `default`)."""
    candidates = [c for c in (accept or "").split(",") if c.strip()] or [default]
    for candidate in candidates:
        kind, params = media_type(candidate)
        if kind in (content_types.ANY, "application/*", ""):
            kind, params = media_type(default)
        if kind == "application/x-jsonlines":
            kind = JSONLINES
        if kind in ENCODABLE:
            return ResponseFormat(kind, VERBOSE in params)
    raise GenericInferenceToolkitError(
        406,
        f"Accept {accept!r} is not supported; ask for one of "
        f"{', '.join(ENCODABLE)} (application/json;verbose adds labels).",
    )


def encode(
    predictions: np.ndarray, predictor: Predictor, fmt: ResponseFormat, one_line_per_row: bool
) -> str:
    """Serialise predictions; `one_line_per_row` (batch transform) turns JSON into lines."""
    classify = predictor.task != "regression"
    kind = (
        JSONLINES
        if one_line_per_row and fmt.content_type == content_types.JSON
        else (fmt.content_type)
    )
    if kind == content_types.CSV:
        if classify:
            return "\n".join(",".join(f"{p:.6g}" for p in row) for row in predictions) + "\n"
        return "\n".join(f"{v:.8g}" for v in predictions) + "\n"
    if kind == JSONLINES:
        if classify:
            labels = predictor.predict_labels(predictions)
            lines = (
                json.dumps({"probabilities": p, "predicted_label": label})
                for p, label in zip(predictions.tolist(), labels, strict=True)
            )
        else:
            lines = (json.dumps({"prediction": v}) for v in predictions.tolist())
        return "\n".join(lines) + "\n"
    if not classify:
        return json.dumps({"prediction": predictions.tolist()})
    body: dict[str, Any] = {"probabilities": predictions.tolist()}
    if fmt.verbose:
        body["predicted_label"] = predictor.predict_labels(predictions)
        body["labels"] = predictor.classes
    return json.dumps(body)


def response_content_type(fmt: ResponseFormat, one_line_per_row: bool) -> str:
    if one_line_per_row and fmt.content_type == content_types.JSON:
        return JSONLINES
    return fmt.content_type
