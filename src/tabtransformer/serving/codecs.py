"""Request bodies to feature frames, predictions to response bodies.

Decoders return a DataFrame whose index is the 1-based row number, so that a bad value is
reported as "row 3, column 'age'". Nothing here unpickles: NPY is not accepted.

Numbers: a non-finite value in a numeric column (inf, -inf, 1e400, "Infinity", a
400-digit integer) or one beyond 1e150 in magnitude (the bound training applies) is a 400
naming row and column. Missing values are the same in every format: an empty cell, null,
and the texts CSV reads as missing ("", "nan", "NA", "null", ... — `MISSING_TEXT`).

Text: a JSON string or key holding a lone UTF-16 surrogate ("\\ud800") is not Unicode text:
a 400 naming the row (a CSV body must be UTF-8, which cannot hold one).

A prediction that is not a finite number (a broken model) is answered `null` in JSON and an
empty field in CSV, so every response is strict JSON.

Accept parameters: `;verbose` adds labels (JSON), `;embeddings` adds each row's contextual
embeddings under "embeddings" (rows x token columns x d, 6 decimals) with the token columns
named under "columns", `;explain` adds each row's attributions under "attributions" (an
object column -> number, see `Predictor.explain`); both only for JSON and JSON Lines (CSV
with them is a 406). An embedding answer estimated larger than the payload limit is a 413
naming how many rows fit.

Batch transform (one line per record): each line of a CSV or JSON Lines body is one
record, as SageMaker splits them; a blank line is a record too and gets an empty line
(CSV) or `{"error": "blank record"}` (JSON Lines) in its place.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pyarrow import csv as pa_csv
from sagemaker_inference import content_types
from sagemaker_inference.errors import GenericInferenceToolkitError

from tabtransformer.errors import UserError
from tabtransformer.formats import parse_csv
from tabtransformer.inference import Attributions, Embeddings, Predictor
from tabtransformer.preprocessing import MAX_TRAINING_MAGNITUDE
from tabtransformer.serving.accept import (
    ALIASES,
    JSONLINES,
    RESPONSE_TYPES,
    ResponseFormat,
    media_type,
)

log = logging.getLogger(__name__)
EMBEDDING_DECIMALS = 6
BYTES_PER_EMBEDDING_VALUE = 12  # "-0.123456, " in JSON
BLANK_RECORD = {"error": "blank record"}
LONGEST_INT = 18  # digits that always fit int64; longer integers stay text (no overflow)
# What a CSV cell reads as missing (pyarrow's defaults): the same texts are missing in JSON.
MISSING_TEXT = frozenset(pa_csv.ConvertOptions().null_values)
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # how a JSON body spells one
SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class Records:
    """The rows to predict (index: record number) and, in batch mode, which records of the
    body were blank lines (they get a placeholder line, not a prediction)."""

    frame: pd.DataFrame
    blank: np.ndarray | None = None


def decode(
    body: bytes, content_type: str | None, predictor: Predictor, one_line_per_record: bool = False
) -> Records:
    """Parse a request body into a frame of the model's feature columns."""
    kind, _ = media_type(content_type)
    kind = ALIASES.get(kind, kind)
    if kind not in DECODERS:
        raise GenericInferenceToolkitError(
            415,
            f"Content-Type {content_type!r} is not supported; send one of {', '.join(DECODABLE)}.",
        )
    if not body or not (one_line_per_record or body.strip()):
        raise UserError("The request body is empty: send at least one row of features.")
    parse = DECODERS[kind]
    if one_line_per_record and kind in LINE_RECORDS:
        lines = body.split(b"\n")
        if lines[-1] == b"":
            lines.pop()  # the last record's terminator
        blank = np.array([not line.strip() for line in lines], dtype=bool)
        present = [line for line, empty in zip(lines, blank, strict=True) if not empty]
        frame = parse(b"\n".join(present), predictor) if present else _empty(predictor)
        if len(frame) != len(present):
            raise UserError(
                f"The body has {len(present)} non-blank lines but {len(frame)} rows: in batch "
                "mode every line is one record (a quoted field may not span lines)."
            )
        frame.index = pd.Index(np.flatnonzero(~blank) + 1, name="row")
        records = Records(frame, blank)
    else:
        frame = parse(body, predictor)
        frame.index = pd.RangeIndex(1, len(frame) + 1, name="row")
        records = Records(frame)
    _reject_non_finite(records.frame, predictor)
    return records


def csv_rows(body: bytes, predictor: Predictor) -> pd.DataFrame:
    """A CSV body (UTF-8, no header) as a frame of the model's columns."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"The body is not UTF-8 text (byte {e.start}): send UTF-8.") from None
    names = predictor.feature_names
    return parse_csv(pa.BufferReader(body), names, 0, locate=lambda line: f"row {line}")


def json_rows(body: bytes, predictor: Predictor) -> pd.DataFrame:
    """A JSON body ({"instances": [...]} or a list of rows) as a frame."""
    return _frame_from_json(_json_instances(body), body, predictor)


def jsonlines_rows(body: bytes, predictor: Predictor) -> pd.DataFrame:
    """A JSON Lines body (one row per line) as a frame."""
    return _frame_from_json(_jsonlines_instances(body), body, predictor)


def _frame_from_json(rows: list[Any], body: bytes, predictor: Predictor) -> pd.DataFrame:
    if SURROGATE_ESCAPE.search(body):
        _reject_surrogates(rows)
    return _frame_from_instances(rows, predictor)


# Request content types: the decoder of each, and those whose lines are records in batch
# transform (a JSON body is one document).
DECODERS: dict[str, Callable[[bytes, Predictor], pd.DataFrame]] = {
    content_types.CSV: csv_rows,
    content_types.JSON: json_rows,
    JSONLINES: jsonlines_rows,
}
DECODABLE = tuple(DECODERS)
LINE_RECORDS = (content_types.CSV, JSONLINES)


def _empty(predictor: Predictor) -> pd.DataFrame:
    return pd.DataFrame(columns=predictor.feature_names, dtype=object)


def _parse_int(digits: str) -> int | str:
    return int(digits) if len(digits) <= LONGEST_INT else digits


def _loads(text: bytes, what: str) -> Any:
    try:
        return json.loads(text, parse_int=_parse_int)
    except RecursionError:
        raise UserError(f"{what} is nested too deeply: rows are flat lists or objects.") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{what} is not valid JSON: {e}.") from None


def _json_instances(body: bytes) -> list[Any]:
    data = _loads(body, "The body")
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
    return [
        _loads(line, f"Line {number}")
        for number, line in enumerate(body.splitlines(), start=1)
        if line.strip()
    ]


def _reject_surrogates(rows: list[Any]) -> None:
    """A lone surrogate in a key or a text value is a 400 naming the row (and column)."""
    for number, row in enumerate(rows, start=1):
        if isinstance(row, dict):
            cells = [(k, k, "a column name") for k in row] + [
                (k, v, "a value") for k, v in row.items()
            ]
        else:
            cells = [(None, v, "a value") for v in (row if isinstance(row, list) else [row])]
        for column, text, what in cells:
            if isinstance(text, str) and (found := SURROGATE.search(text)):
                place = f", column {column!r}" if what == "a value" and column else ""
                raise UserError(
                    f"row {number}{place}: {what} holds a lone UTF-16 surrogate "
                    f"({found.group()!r}), which is not Unicode text: send valid UTF-8 text "
                    "(a character beyond U+FFFF is a pair of surrogates in JSON)."
                )


def _frame_from_instances(rows: list[Any], predictor: Predictor) -> pd.DataFrame:
    """Rows as lists (by position) or objects (by column name) into one frame; each row
    may be either kind."""
    names = predictor.feature_names
    rows = [r["features"] if isinstance(r, dict) and set(r) == {"features"} else r for r in rows]
    if not rows:
        raise UserError("The request holds no rows.")
    if any(isinstance(r, dict) for r in rows) and any(isinstance(r, list) for r in rows):
        _check_lengths(rows, names)
        rows = [dict(zip(names, r, strict=True)) if isinstance(r, list) else r for r in rows]
    if all(isinstance(r, dict) for r in rows):
        _reject_nested(r.items() for r in rows)
        frame = pd.DataFrame(rows, index=range(len(rows)))  # [{}] is a row too
        unknown = [c for c in frame.columns if c not in names]
        if unknown:
            row = next(i for i, r in enumerate(rows, 1) if unknown[0] in r)
            raise UserError(
                f"row {row}: unknown column {unknown[0]!r}; the model's columns are {names}."
            )
        # absent keys are missing values
        return _missing_text_as_missing(frame.reindex(columns=names).astype(object))
    if all(isinstance(r, list) for r in rows):
        _check_lengths(rows, names)
        _reject_nested(zip(names, r, strict=True) for r in rows)
        return _missing_text_as_missing(pd.DataFrame(rows, columns=names, dtype=object))
    bad = next(i for i, r in enumerate(rows, 1) if not isinstance(r, (list, dict)))
    raise UserError(
        f"row {bad}: each row must be a list of values or an object of column: value pairs "
        f"(found a {type(rows[bad - 1]).__name__})."
    )


def _check_lengths(rows: list[Any], names: list[str]) -> None:
    """Every list row has one value per feature column."""
    lengths = np.fromiter(
        (len(r) if isinstance(r, list) else len(names) for r in rows),
        dtype=np.int64,
        count=len(rows),
    )
    wrong = np.flatnonzero(lengths != len(names))
    if len(wrong):
        raise UserError(
            f"row {wrong[0] + 1}: expected {len(names)} values but found "
            f"{lengths[wrong[0]]} ({len(wrong)} such row(s))."
        )


def _missing_text_as_missing(frame: pd.DataFrame) -> pd.DataFrame:
    """The texts a CSV cell reads as missing ("", "nan", "NA", ...) are missing in JSON too."""
    for column in frame.columns:
        values = frame[column]
        text = values.isin(MISSING_TEXT)  # vectorised: only strings can equal these
        if text.any():
            frame[column] = values.where(~text, None)
    return frame


def _reject_nested(rows: Any) -> None:
    """Every cell must be a number, text, true/false or null (not a list or an object)."""
    for number, cells in enumerate(rows, start=1):
        for column, value in cells:
            if isinstance(value, (list, dict)):
                raise UserError(
                    f"row {number}, column {column!r}: a {type(value).__name__} is not a "
                    "value; send a number, a string, true/false or null."
                )


def _reject_non_finite(frame: pd.DataFrame, predictor: Predictor) -> None:
    """inf, -inf, overflowing numbers and numbers beyond MAX_TRAINING_MAGNITUDE in numeric
    columns are errors naming the cell."""
    for column in predictor.preprocessor.numeric:
        values = frame[column.name]
        if pd.api.types.is_bool_dtype(values.dtype):
            continue
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        with np.errstate(invalid="ignore"):
            infinite = np.isinf(numbers) | (np.abs(numbers) > MAX_TRAINING_MAGNITUDE)
        if infinite.any():
            first = int(infinite.argmax())
            raise UserError(
                f"row {frame.index[first]}, column '{column.name}': {values.iloc[first]!r:.60} "
                f"is not a finite number of at most {MAX_TRAINING_MAGNITUDE:g} in magnitude "
                f"({int(infinite.sum())} such value(s)). Send such a number, or an empty cell "
                "or null for a missing value."
            )


def check_answer_size(fmt: ResponseFormat, rows: int, predictor: Predictor, limit: int) -> None:
    """Before any computing: `;embeddings` needs token columns (else a 400), and the
    estimated embedding answer (rows x tokens x d x 12 bytes) must fit in `limit` bytes
    (else a 413 saying how many rows fit)."""
    if not fmt.embeddings:
        return
    tokens, dim = len(predictor.token_columns), predictor.model.config.dim
    if not tokens:
        raise UserError(
            "Accept ;embeddings: this model has no token columns (no categorical column, and "
            "numeric columns are not tokens: numeric_embedding=none), so it has no contextual "
            "embeddings. Ask without ;embeddings."
        )
    per_row = tokens * dim * BYTES_PER_EMBEDDING_VALUE
    if rows * per_row > limit:
        raise GenericInferenceToolkitError(
            413,
            f"The embeddings of {rows} rows ({tokens} token columns x {dim} numbers each) would "
            f"make an answer of about {rows * per_row / 2**20:.1f} MB, over the payload limit of "
            f"{limit / 2**20:g} MB (SAGEMAKER_MAX_PAYLOAD_IN_MB): send at most "
            f"{limit // per_row} rows per request.",
        )


@dataclass
class Answer:
    """What a request is answered: predictions and, when asked, embeddings and
    attributions; `blank` marks the batch records that get a placeholder line."""

    predictions: np.ndarray
    blank: np.ndarray | None = None
    embeddings: Embeddings | None = None
    attributions: Attributions | None = None


@dataclass
class Prepared:
    """An answer ready to write: per row its strict-JSON values and (classification) its
    label, and per key what each row's answer gains."""

    values: list[Any]
    labels: list[Any] | None  # None: regression
    extras: dict[str, Any]
    blank: np.ndarray | None
    fmt: ResponseFormat
    classes: list[Any] | None


def encode(
    answer: Answer, predictor: Predictor, fmt: ResponseFormat, one_line_per_record: bool
) -> str:
    """Serialise an answer as `fmt` asks; `one_line_per_record` (batch transform) turns
    JSON into JSON Lines. Embeddings and attributions go beside the predictions."""
    predictions = answer.predictions
    classify = predictor.task != "regression"
    finite = np.isfinite(predictions)
    finite = finite.all(axis=1) if finite.ndim > 1 else finite
    if not finite.all():
        log.warning("%d prediction(s) are not finite numbers: answered null", (~finite).sum())
    values = [v if ok else None for v, ok in zip(predictions.tolist(), finite, strict=True)]
    labels = _labels(predictions, finite, predictor) if classify else None
    extras = _extras(answer.embeddings, answer.attributions)
    if answer.embeddings is not None:
        extras["columns"] = answer.embeddings.columns  # the token columns, for every row
    prepared = Prepared(values, labels, extras, answer.blank, fmt, predictor.classes)
    return ENCODERS[response_content_type(fmt, one_line_per_record)](prepared)


def csv_body(answer: Prepared) -> str:
    """One line per row: probabilities, or the prediction (empty: not a finite number)."""
    pattern = "{:.6g}" if answer.labels is not None else "{:.8g}"
    lines = [
        "" if v is None else ",".join(map(pattern.format, np.atleast_1d(v))) for v in answer.values
    ]
    return "".join(line + "\n" for line in _with_blanks(lines, answer.blank, ""))


def jsonlines_body(answer: Prepared) -> str:
    """One object per row, with its label (classification) and extras."""
    if answer.labels is not None:
        objects = [
            {"probabilities": p, "predicted_label": label}
            for p, label in zip(answer.values, answer.labels, strict=True)
        ]
    else:
        objects = [{"prediction": v} for v in answer.values]
    for i, line in enumerate(objects):
        line.update({k: v if k == "columns" else v[i] for k, v in answer.extras.items()})
    lines = [_dumps(o) for o in objects]
    return "".join(line + "\n" for line in _with_blanks(lines, answer.blank, _dumps(BLANK_RECORD)))


def json_body(answer: Prepared) -> str:
    """One object of lists; `;verbose` adds labels."""
    classify = answer.labels is not None
    body: dict[str, Any] = (
        {"probabilities": answer.values} if classify else {"prediction": answer.values}
    )
    if classify and answer.fmt.verbose:
        body["predicted_label"] = answer.labels
        body["labels"] = answer.classes
    return _dumps({**body, **answer.extras})


# Response content types and their writers (the first is what a '*/*' client is offered
# when no default is set).
ENCODERS: dict[str, Callable[[Prepared], str]] = {
    content_types.JSON: json_body,
    content_types.CSV: csv_body,
    JSONLINES: jsonlines_body,
}
ENCODABLE = RESPONSE_TYPES


def _extras(embeddings: Embeddings | None, attributions: Attributions | None) -> dict[str, Any]:
    """Per key, the list of what each row's answer gains."""
    extras: dict[str, Any] = {}
    if embeddings is not None:
        extras["embeddings"] = _finite_lists(embeddings.values.round(EMBEDDING_DECIMALS))
    if attributions is not None:
        names = attributions.columns
        extras["attributions"] = [
            dict(zip(names, row, strict=True)) for row in _finite_lists(attributions.values)
        ]
    return extras


def _finite_lists(values: np.ndarray) -> list[Any]:
    """Nested lists of floats, None where a value is not finite (strict JSON)."""
    finite = np.isfinite(values)
    if finite.all():
        return values.tolist()
    log.warning(
        "%d embedding or attribution value(s) are not finite: answered null", (~finite).sum()
    )
    cells = values.astype(object)
    cells[~finite] = None
    return cells.tolist()


def _labels(predictions: np.ndarray, finite: np.ndarray, predictor: Predictor) -> list[Any]:
    if not len(predictions):
        return []
    labels = predictor.predict_labels(np.nan_to_num(predictions))
    return [label if ok else None for label, ok in zip(labels, finite, strict=True)]


def _with_blanks(lines: list[str], blank: np.ndarray | None, placeholder: str) -> list[str]:
    """Put `placeholder` at each blank record, the lines in order elsewhere."""
    if blank is None or not blank.any():
        return lines
    answers = iter(lines)
    return [placeholder if empty else next(answers) for empty in blank]


def _dumps(data: Any) -> str:
    return json.dumps(data, allow_nan=False)


def response_content_type(fmt: ResponseFormat, one_line_per_record: bool) -> str:
    if one_line_per_record and fmt.content_type == content_types.JSON:
        return JSONLINES
    return fmt.content_type
