"""Read a lab's CSV file against the federation's data schema.

The format is strict comma-separated text: UTF-8 (a leading byte-order mark is
allowed), ``\\n`` or ``\\r\\n`` line ends, standard double-quote quoting, exactly one
field per schema column on every line, an optional header line naming the
columns. Numbers are plain decimals (``12``, ``-0.5``, ``.7``, ``1e3``); spaces,
``nan`` and ``inf`` are not numbers.

Everything wrong with a file is a :class:`~fedlab.errors.DataError` whose message
names the file, the 1-based line and the column, what was found, what was
expected and what to do. Up to :data:`MAX_PROBLEMS_SHOWN` problems are listed in
one message, so a lab fixes its file in one pass. Rows are never dropped silently:
the only rows left out are rows with missing values under the ``drop`` policy (or a
missing label), and the :class:`LoadReport` counts them per column.

Encoding of the kept rows (``Table.x``, ``float32``):

- numeric: standardised with ``stats`` when given, else scaled to [0, 1] by the
  declared ``min``/``max`` when both are declared, else the raw value;
- categorical: one-hot over the declared levels (without the first when
  ``drop_first``);
- ignore: skipped (the field must still be there);
- label: ``Table.y`` (``int64`` class index).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedlab.data.schema import Column, Schema, format_level, parse_number
from fedlab.data.stats import FeatureStats
from fedlab.errors import DataError

logger = logging.getLogger(__name__)

MAX_PROBLEMS_SHOWN = 10
_MAX_PROBLEMS_KEPT = 1000
_STRAY_CR = re.compile(r"\r(?!\n)")


@dataclass
class LoadReport:
    """What happened to a file's rows.

    ``dropped_missing[c]`` counts dropped rows that had column ``c`` missing (a row
    missing two columns counts under both, so the counts can add up to more than
    ``rows_dropped``); ``imputed[c]`` counts kept rows whose ``c`` was imputed.
    Only columns with a non-zero count appear, in file order.
    """

    file: str
    rows_read: int
    rows_kept: int
    dropped_missing: dict[str, int] = field(default_factory=dict)
    imputed: dict[str, int] = field(default_factory=dict)
    missing_policy: str = "drop"

    @property
    def rows_dropped(self) -> int:
        """Rows read but not kept (each for a missing value)."""
        return self.rows_read - self.rows_kept

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return {
            "file": self.file,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "rows_dropped": self.rows_dropped,
            "missing_policy": self.missing_policy,
            "dropped_missing": dict(self.dropped_missing),
            "imputed": dict(self.imputed),
        }

    def format(self) -> str:
        """A short human summary, e.g. for ``fedlab check-data``."""
        name = Path(self.file).name
        text = f"{name}: {self.rows_read} rows read, {self.rows_kept} kept"
        if self.rows_dropped:
            per_column = ", ".join(f"{c} {n}" for c, n in self.dropped_missing.items())
            text += f", {self.rows_dropped} dropped for missing values ({per_column})"
        if self.imputed:
            per_column = ", ".join(f"{c} {n}" for c, n in self.imputed.items())
            text += f"; imputed: {per_column}"
        return text


@dataclass(frozen=True)
class Table:
    """The kept rows of a file, encoded.

    ``x``: ``float32 [n, schema.num_features]``; ``y``: ``int64 [n]`` class indices;
    ``lines``: ``int64 [n]`` 1-based line of each row in the file; ``numeric``:
    ``float64 [n, len(schema.numeric_names)]`` raw numeric values after imputation,
    before scaling; ``raw``: the kept rows as parsed, before imputation and scaling
    (what a lab contributes to federated feature statistics, and what
    :func:`encode_rows` encodes again once the federation's statistics are known).
    """

    x: np.ndarray
    y: np.ndarray
    lines: np.ndarray
    report: LoadReport
    numeric: np.ndarray
    raw: RawRows | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True, eq=False)
class RawRows:
    """Rows as parsed, before imputation and scaling.

    ``numeric``: ``float64 [n, len(schema.numeric_names)]``, NaN where missing;
    ``codes``: ``int64 [n, categorical columns]`` (schema order), the level index, -1
    where missing.
    """

    numeric: np.ndarray
    codes: np.ndarray

    def __len__(self) -> int:
        return int(self.numeric.shape[0])

    def take(self, rows: np.ndarray) -> RawRows:
        """The given rows (indices or a boolean mask)."""
        return RawRows(numeric=self.numeric[rows], codes=self.codes[rows])

    @staticmethod
    def concat(parts: Sequence[RawRows]) -> RawRows:
        return RawRows(numeric=np.concatenate([p.numeric for p in parts]),
                       codes=np.concatenate([p.codes for p in parts]))


def encode_rows(
    raw: RawRows,
    schema: Schema,
    *,
    stats: FeatureStats | None = None,
    fill_numeric: np.ndarray | None = None,
    fill_codes: np.ndarray | None = None,
    where: str = "",
    lines: np.ndarray | None = None,
) -> np.ndarray:
    """Encode parsed rows as the model's features (``float32 [n, schema.num_features]``).

    Missing numeric values become ``fill_numeric[j]`` and missing categories level
    ``fill_codes[k]`` (a DataError if something is missing and no fill is given);
    numeric columns are then standardised with ``stats`` when given, else scaled to
    [0, 1] by the declared range when both bounds are declared, else kept raw.
    ``where`` and ``lines`` name the rows in error messages.
    """
    n = len(raw)
    x = np.zeros((n, schema.num_features), dtype=np.float64)
    if stats is not None:
        stat_mean, stat_std = stats.aligned(schema.numeric_names)
    offset = numeric_index = code_index = 0
    features = schema.feature_columns
    for column in features:
        if column.type == "numeric":
            values = raw.numeric[:, numeric_index]
            missing = np.isnan(values)
            if missing.any():
                if fill_numeric is None:
                    raise DataError(f"{where}, column {column.name!r}: missing values and no "
                                    "value to impute them with")
                values = np.where(missing, float(fill_numeric[numeric_index]), values)
            if stats is not None:
                encoded = (values - stat_mean[numeric_index]) / stat_std[numeric_index]
            elif column.min is not None and column.max is not None:
                encoded = (values - column.min) / (float(column.max) - float(column.min))
            else:
                encoded = values
            x[:, offset] = encoded
            offset += 1
            numeric_index += 1
        else:
            codes = raw.codes[:, code_index]
            if (codes < 0).any():
                if fill_codes is None:
                    raise DataError(f"{where}, column {column.name!r}: missing values and no "
                                    "level to impute them with")
                codes = np.where(codes < 0, int(fill_codes[code_index]), codes)
            code_index += 1
            first = 1 if column.drop_first else 0
            width = len(column.levels) - first
            rows_with = codes >= first
            x[np.flatnonzero(rows_with), offset + codes[rows_with] - first] = 1.0
            offset += width
    with np.errstate(over="ignore"):  # overflow becomes inf, reported just below
        x32 = x.astype(np.float32)
    if not np.isfinite(x32).all():
        r, c = np.argwhere(~np.isfinite(x32))[0]
        owner = [col.name for col in features for _ in col.feature_names][c]
        line = f", line {int(lines[r])}" if lines is not None and len(lines) > r else ""
        raise DataError(
            f"{where}{line}, column {owner!r}: the value is "
            "too large to encode as a 32-bit float; expected magnitudes below about 3e38 "
            "after scaling; check the value or declare a min/max range"
        )
    return x32


@dataclass(frozen=True, order=True)
class _Problem:
    line: int
    column_index: int
    column: str
    what: str
    action: str


class _Problems:
    """Collects problems of one file, then raises them as one DataError."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[_Problem] = []
        self.total = 0

    def add(self, line: int, column_index: int, column: str, what: str, action: str) -> None:
        self.total += 1
        if len(self.items) < _MAX_PROBLEMS_KEPT:
            self.items.append(_Problem(line, column_index, column, what, action))

    def raise_if_any(self) -> None:
        if not self.total:
            return
        items = sorted(self.items)
        first = items[0]
        message = (
            f"{self.file}, line {first.line}, column {first.column!r}: {first.what}; {first.action}"
        )
        if self.total > 1:
            shown = [f"line {p.line}, column {p.column!r}: {p.what}" for p in items[1:]]
            shown = shown[: MAX_PROBLEMS_SHOWN - 1]
            more = self.total - 1 - len(shown)
            tail = f"; and {more} more" if more else ""
            message += f" [{self.total - 1} more problem(s): {'; '.join(shown)}{tail}]"
        raise DataError(message)


def _show(value: str) -> str:
    """A field as it appears in messages: quoted, escaped, shortened if long."""
    if len(value) > 40:
        value = value[:37] + "..."
    return repr(value)


def _line_and_column(data: bytes | str, offset: int) -> tuple[int, int]:
    """1-based line and 0-based field index of a position in the file contents."""
    newline: Any = b"\n" if isinstance(data, bytes) else "\n"
    comma: Any = b"," if isinstance(data, bytes) else ","
    start = data.rfind(newline, 0, offset) + 1
    return data.count(newline, 0, offset) + 1, data.count(comma, start, offset)


def _column_name(schema: Schema, index: int) -> str:
    names = schema.column_names
    return names[index] if index < len(names) else f"(extra field {index + 1})"


def _read_text(path: Path, schema: Schema) -> str:
    """The file's text, or a DataError saying why it cannot be read."""
    file = str(path)
    expected = f"{len(schema.columns)} comma-separated columns ({', '.join(schema.column_names)})"
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise DataError(
            f"{file}: is a directory, not a file; pass the path of the lab's CSV file"
        ) from None
    except FileNotFoundError:
        raise DataError(f"{file}: no such file; check the path of the lab's CSV file") from None
    except PermissionError:
        raise DataError(
            f"{file}: permission denied; make the file readable by the user running fedlab"
        ) from None
    except OSError as exc:
        raise DataError(f"{file}: cannot read the file ({exc.strerror or exc})") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.strip():
        raise DataError(f"{file}, line 1: the file is empty; expected rows of {expected}")
    nul = data.find(b"\x00")
    if nul >= 0:
        line, col = _line_and_column(data, nul)
        raise DataError(
            f"{file}, line {line}, column {_column_name(schema, col)!r}: binary content "
            f"(a NUL byte at byte {nul}); expected a UTF-8 CSV text file, export the data "
            "as CSV"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _line_and_column(data, exc.start)
        raise DataError(
            f"{file}, line {line}, column {_column_name(schema, col)!r}: byte "
            f"0x{data[exc.start]:02x} is not UTF-8; expected UTF-8 text, re-save the file as "
            "UTF-8"
        ) from None
    stray = _STRAY_CR.search(text)
    if stray:
        line, col = _line_and_column(text, stray.start())
        raise DataError(
            f"{file}, line {line}, column {_column_name(schema, col)!r}: a carriage return "
            "(\\r) that does not end a line; expected \\n or \\r\\n line ends, re-save the file "
            "with standard line ends"
        )
    return text


def _split_rows(
    text: str, schema: Schema, file: str, problems: _Problems
) -> tuple[list[list[str]], list[int]]:
    """Rows with the right number of fields and their lines; other rows become problems."""
    n_columns = len(schema.columns)
    names = schema.column_names
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=",", quotechar='"', strict=True)
    rows: list[list[str]] = []
    lines: list[int] = []
    previous_line = 0
    header_pending = schema.header
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            # The reader cannot resynchronise after bad quoting: report what we have.
            line = reader.line_num
            column = _quote_column(text, line)
            problems.add(
                line,
                column,
                _column_name(schema, column),
                f"malformed quoting ({exc})",
                "write plain comma-separated fields, or enclose a whole field in double "
                'quotes (a quote inside it written as "")',
            )
            problems.raise_if_any()
        line = reader.line_num
        if line - previous_line > 1:
            problems.add(
                previous_line + 1,
                0,
                names[0],
                f"a quoted field spans lines {previous_line + 1}-{line}",
                "fields cannot contain line breaks; remove them",
            )
            previous_line = line
            header_pending = False
            continue
        previous_line = line
        if not fields:  # an empty line is one empty field
            fields = [""]
        if header_pending:
            header_pending = False
            _check_header(fields, schema, file, problems)
            continue
        if len(fields) != n_columns:
            _wrong_count(fields, line, schema, problems)
            continue
        rows.append(fields)
        lines.append(line)
    return rows, lines


def _quote_column(text: str, line: int) -> int:
    """Field index of the first double quote on a line (for quoting errors)."""
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        return 0
    content = lines[line - 1]
    quote = content.find('"')
    return content.count(",", 0, quote) if quote >= 0 else 0


def _check_header(fields: list[str], schema: Schema, file: str, problems: _Problems) -> None:
    names = schema.column_names
    if len(fields) != len(names):
        problems.add(
            1,
            min(len(fields), len(names) - 1),
            _column_name(schema, min(len(fields), len(names) - 1)),
            f"the header has {len(fields)} names, expected {len(names)} ({', '.join(names)})",
            "make the header line list the schema's columns in order",
        )
        return
    for i, (got, want) in enumerate(zip(fields, names, strict=True)):
        if got != want:
            problems.add(
                1,
                i,
                want,
                f"the header names {_show(got)}, expected {want!r}",
                "make the header line list the schema's columns in order, exactly",
            )


def _wrong_count(fields: list[str], line: int, schema: Schema, problems: _Problems) -> None:
    n = len(schema.columns)
    names = schema.column_names
    if fields == [""]:
        what = f"the line is empty, expected {n} fields ({', '.join(names)})"
        problems.add(line, 0, names[0], what, "remove the empty line or fill it in")
    elif len(fields) < n:
        what = (
            f"found {len(fields)} fields, expected {n}: the line ends before column "
            f"{names[len(fields)]!r}"
        )
        problems.add(
            line,
            len(fields),
            names[len(fields)],
            what,
            "write every column (an empty field or the missing marker for an unknown value)",
        )
    else:
        what = (
            f"found {len(fields)} fields, expected {n}: extra field(s) after column {names[-1]!r}"
        )
        problems.add(
            line,
            n,
            names[-1],
            what,
            "remove the extra fields (a value containing a comma must be quoted)",
        )


@dataclass
class _Parsed:
    """One column of the rows, parsed: values (or codes) and a missing mask."""

    column: Column
    values: np.ndarray  # float64 for numeric, int64 code/class (-1 missing) otherwise
    missing: np.ndarray


def _parse_numeric(
    column: Column,
    index: int,
    fields: Sequence[str],
    lines: Sequence[int],
    schema: Schema,
    problems: _Problems,
) -> _Parsed:
    cache: dict[str, float | None] = {}
    values = np.zeros(len(fields), dtype=np.float64)
    missing = np.zeros(len(fields), dtype=bool)
    for r, text in enumerate(fields):
        if text == "" or text == schema.missing:
            missing[r] = True
            continue
        if text not in cache:
            cache[text] = parse_number(text)
        value = cache[text]
        if value is None:
            hint = (
                "remove the spaces around the number"
                if text != text.strip() and parse_number(text.strip()) is not None
                else f"write a plain decimal number, or {schema.missing!r} or an empty field "
                "for a missing value"
            )
            problems.add(
                lines[r],
                index,
                column.name,
                f"found {_show(text)}, expected a number (numeric column)",
                hint,
            )
            missing[r] = True  # not a value; the file is rejected anyway
            continue
        values[r] = value
    present = ~missing
    low = column.min if column.min is not None else -np.inf
    high = column.max if column.max is not None else np.inf
    out = present & ((values < low) | (values > high))
    for r in np.flatnonzero(out):
        problems.add(
            lines[r],
            index,
            column.name,
            f"found {_show(fields[r])}, outside the declared range [{_bound(column.min)}, "
            f"{_bound(column.max)}]",
            "correct the value, or mark it missing; if the range is wrong, change the schema",
        )
    return _Parsed(column, values, missing)


def _bound(value: float | None) -> str:
    return "no limit" if value is None else format_level(value)


def _parse_coded(
    column: Column,
    index: int,
    fields: Sequence[str],
    lines: Sequence[int],
    schema: Schema,
    problems: _Problems,
) -> _Parsed:
    """Categorical (code = level index) or label (code = class index) column."""
    if column.type == "label":
        by_text = dict(column.mapping)
        by_number = {
            number: cls for key, cls in column.mapping if (number := parse_number(key)) is not None
        }
        allowed = ", ".join(repr(k) for k, _ in column.mapping)
        what_kind = "label value not in the mapping (label out of range)"
        action = f"use one of {allowed}, or add the value to the label's mapping in the schema"
    else:
        numeric = column.numeric_levels
        by_text = {} if numeric else {str(lv): i for i, lv in enumerate(column.levels)}
        by_number = {float(lv): i for i, lv in enumerate(column.levels)} if numeric else {}
        allowed = ", ".join(format_level(lv) for lv in column.levels)
        what_kind = "unknown category"
        action = f"use one of the levels {allowed}, or add the level to the schema"
    cache: dict[str, int] = {}
    codes = np.full(len(fields), -1, dtype=np.int64)
    missing = np.zeros(len(fields), dtype=bool)
    for r, text in enumerate(fields):
        if text == "" or text == schema.missing:
            missing[r] = True
            continue
        code = cache.get(text)
        if code is None:
            code = by_text.get(text, -1)
            if code < 0 and by_number:
                number = parse_number(text)
                if number is not None:
                    code = by_number.get(number, -1)
            cache[text] = code
        if code < 0:
            problems.add(lines[r], index, column.name, f"{what_kind}: found {_show(text)}", action)
            missing[r] = True
            continue
        codes[r] = code
    return _Parsed(column, codes, missing)


def load_csv(
    path: str | os.PathLike[str],
    schema: Schema,
    *,
    stats: FeatureStats | None = None,
    defer_imputation: bool = False,
) -> Table:
    """Read ``path`` against ``schema``; see the module docstring for the rules.

    Raises ``DataError`` for a file that does not match the schema and
    ``ConfigError`` when ``stats`` does not fit the schema's numeric columns.
    ``defer_imputation``: a column with every value missing is not an error (its
    ``Table.x`` features are placeholders): the federation's statistics, computed
    before training, impute it (:mod:`fedlab.prep`).
    """
    path = Path(path)
    file = str(path)
    numeric_names = schema.numeric_names
    if stats is not None:
        stat_mean, stat_std = stats.aligned(numeric_names)
    problems = _Problems(file)
    text = _read_text(path, schema)
    rows, line_list = _split_rows(text, schema, file, problems)
    lines = np.asarray(line_list, dtype=np.int64)
    columns_text: list[tuple[str, ...]] = list(zip(*rows, strict=True)) if rows else []

    parsed: list[_Parsed] = []
    for index, column in enumerate(schema.columns):
        if column.type == "ignore" or not rows:
            continue
        fields = columns_text[index]
        if column.type == "numeric":
            parsed.append(_parse_numeric(column, index, fields, line_list, schema, problems))
        else:
            parsed.append(_parse_coded(column, index, fields, line_list, schema, problems))
    problems.raise_if_any()
    if not rows:  # only a header line
        raise DataError(
            f"{file}, line 2, column {schema.column_names[0]!r}: no data rows after the "
            "header; expected at least one row; add the lab's rows below the header"
        )

    # ---- missing values
    label = next(p for p in parsed if p.column.type == "label")
    features = [p for p in parsed if p.column.type != "label"]
    if schema.missing_policy == "drop":
        drop = label.missing.copy()
        for p in features:
            drop |= p.missing
    else:
        drop = label.missing.copy()
    keep = ~drop
    dropped_missing = {
        p.column.name: int((p.missing & drop).sum()) for p in parsed if (p.missing & drop).any()
    }
    report = LoadReport(
        file=file,
        rows_read=len(rows),
        rows_kept=int(keep.sum()),
        dropped_missing=dropped_missing,
        imputed={},
        missing_policy=schema.missing_policy,
    )
    if report.rows_kept == 0:
        counts = ", ".join(f"{c!r} in {n} rows" for c, n in dropped_missing.items())
        first = next(iter(dropped_missing))
        raise DataError(
            f"{file}, lines {int(lines[0])}-{int(lines[-1])}, column {first!r}: every one of "
            f"the {len(rows)} rows was dropped for a missing value (missing: {counts}); "
            f"expected at least one complete row; check that the missing marker "
            f"{schema.missing!r} and the column order match the file"
            + ("" if schema.missing_policy == "impute" else ", or set missing_policy = 'impute'")
        )

    # ---- encode the kept rows
    n = report.rows_kept
    kept_lines = lines[keep]
    numeric = np.zeros((n, len(numeric_names)), dtype=np.float64)
    n_codes = sum(1 for p in features if p.column.type == "categorical")
    raw = RawRows(numeric=np.zeros((n, len(numeric_names)), dtype=np.float64),
                  codes=np.zeros((n, n_codes), dtype=np.int64))
    fill_numeric = np.zeros(len(numeric_names), dtype=np.float64)
    fill_codes = np.zeros(n_codes, dtype=np.int64)
    numeric_index = code_index = 0
    for p in features:
        column = p.column
        values = p.values[keep]
        missing = p.missing[keep]
        n_missing = int(missing.sum())
        fill: float | int = 0
        if n_missing:
            report.imputed[column.name] = n_missing
            if column.type == "numeric" and stats is not None:
                fill = float(stat_mean[numeric_index])
            elif n_missing == n and defer_imputation:
                pass  # a placeholder: the federation's statistics will say what to impute
            elif n_missing == n:
                fix = (
                    "fill in the column, or load with the federation's feature stats"
                    if column.type == "numeric"
                    else "fill in the column"
                )
                raise DataError(
                    f"{file}, lines {int(kept_lines[0])}-{int(kept_lines[-1])}, column "
                    f"{column.name!r}: every value is missing, so this lab has no value to "
                    f"impute from; expected at least one present value; {fix}"
                )
            elif column.type == "numeric":
                fill = float(values[~missing].mean())
            else:
                counts = np.bincount(values[~missing], minlength=len(column.levels))
                fill = int(np.argmax(counts))  # ties: the first level listed
        if column.type == "numeric":
            raw.numeric[:, numeric_index] = np.where(missing, np.nan, values)
            numeric[:, numeric_index] = np.where(missing, fill, values)
            fill_numeric[numeric_index] = fill
            numeric_index += 1
        else:
            raw.codes[:, code_index] = np.where(missing, -1, values)
            fill_codes[code_index] = int(fill)
            code_index += 1
    x32 = encode_rows(raw, schema, stats=stats, fill_numeric=fill_numeric,
                      fill_codes=fill_codes, where=file, lines=kept_lines)
    y = label.values[keep].astype(np.int64)
    logger.info("%s", report.format())
    return Table(x=x32, y=y, lines=kept_lines, report=report, numeric=numeric, raw=raw)
