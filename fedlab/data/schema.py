"""The federation's data schema: which columns a lab's file has and how to read them.

A schema is declared in ``federation.toml`` under ``[data]`` and reaches this module
as the dict a TOML parser produces for that table::

    [data]
    missing = "?"              # missing-value marker (an empty field is missing too)
    missing_policy = "drop"    # "drop" | "impute"
    header = false             # the file starts with a header line naming the columns
    [[data.columns]]
    name = "age"
    type = "numeric"           # numeric | categorical | label | ignore
    min = 0                    # optional range; both given -> values scaled to [0, 1]
    max = 120
    [[data.columns]]
    name = "cp"
    type = "categorical"
    levels = [1, 2, 3, 4]      # numbers or strings
    drop_first = true          # one-hot without the first level
    [[data.columns]]
    name = "num"
    type = "label"
    mapping = { "0" = 0, "1" = 1 }   # file value -> class index 0..K-1

:meth:`Schema.from_dict` checks every key: an unknown key (a typo) is an error, never
ignored, and every error names the key path (``data.columns[3].levels``) and what
is allowed. The result is immutable; :meth:`Schema.to_dict` gives the dict back.

Matching rules used by the loader (:mod:`fedlab.data.csv`):

- a field is missing when it is empty or equal (exactly, as text) to ``missing``;
- numeric levels and numeric mapping keys match a field by value (``"1.0"`` is level
  ``1``); string levels match exactly (case and spaces count);
- label mapping keys are matched as text first, then by numeric value.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fedlab.errors import ConfigError

logger = logging.getLogger(__name__)

ColumnType = Literal["numeric", "categorical", "label", "ignore"]
MissingPolicy = Literal["drop", "impute"]
Level = int | float | str

COLUMN_TYPES: tuple[str, ...] = ("numeric", "categorical", "label", "ignore")
MISSING_POLICIES: tuple[str, ...] = ("drop", "impute")

_DATA_KEYS: tuple[str, ...] = ("missing", "missing_policy", "header", "columns")
_COLUMN_KEYS: dict[str, tuple[str, ...]] = {
    "numeric": ("name", "type", "min", "max"),
    "categorical": ("name", "type", "levels", "drop_first"),
    "label": ("name", "type", "mapping"),
    "ignore": ("name", "type"),
}
_ALL_COLUMN_KEYS: tuple[str, ...] = (
    "name",
    "type",
    "min",
    "max",
    "levels",
    "drop_first",
    "mapping",
)

# Characters that cannot appear in a name, marker or level because they would break
# the comma-separated format or the one-line messages.
_FORBIDDEN_CHARS = (",", '"', "\n", "\r", "\x00")

_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_number(text: str) -> float | None:
    """The value of a strictly formatted finite decimal number, else ``None``.

    Accepts ``12``, ``-0.5``, ``.7``, ``1e3``; refuses spaces, ``nan``, ``inf``,
    underscores, non-ASCII digits and values that overflow a float.
    """
    if not _NUMBER_RE.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def format_level(level: Level) -> str:
    """How a level is written in feature names and messages (``2``, ``2.5``, ``male``)."""
    return str(level)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    """A TOML number that fits a finite float (huge integers and nan/inf do not)."""
    if not _is_number(value):
        return False
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except OverflowError:
        return False


def _type_name(value: object) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "a list",
        tuple: "a list",
        dict: "a table",
    }
    for kind, label in names.items():
        if type(value) is kind:
            return label
    if isinstance(value, Mapping):
        return "a table"
    return f"a {type(value).__name__}"


def _suggest(key: object, allowed: Sequence[str]) -> str:
    if not isinstance(key, str):
        return ""
    close = difflib.get_close_matches(key, allowed, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_text(value: object, path: str, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{path}: expected {what} as a string, found {_type_name(value)}")
    if not value and not allow_empty:
        raise ConfigError(f"{path}: expected a non-empty string for {what}, found ''")
    bad = [c for c in _FORBIDDEN_CHARS if c in value]
    if bad:
        raise ConfigError(
            f"{path}: {what} {value!r} contains {bad[0]!r}; commas, double quotes, line "
            "breaks and NUL cannot appear in a comma-separated field; choose another value"
        )
    if value != value.strip():
        raise ConfigError(
            f"{path}: {what} {value!r} has leading or trailing spaces; fields are matched "
            "exactly, so remove the spaces"
        )
    return value


@dataclass(frozen=True)
class Column:
    """One column of a lab's file, in file order.

    ``min``/``max`` are used by numeric columns, ``levels``/``drop_first`` by
    categorical columns, ``mapping`` (file value -> class index, as pairs) by the
    label column; the others keep their defaults.
    """

    name: str
    type: ColumnType
    min: int | float | None = None
    max: int | float | None = None
    levels: tuple[Level, ...] = ()
    drop_first: bool = False
    mapping: tuple[tuple[str, int], ...] = ()

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the features this column becomes (none for label and ignore)."""
        if self.type == "numeric":
            return (self.name,)
        if self.type == "categorical":
            kept = self.levels[1:] if self.drop_first else self.levels
            return tuple(f"{self.name}={format_level(level)}" for level in kept)
        return ()

    @property
    def num_classes(self) -> int:
        """For the label column: the number of classes (largest index + 1)."""
        return max(index for _, index in self.mapping) + 1 if self.mapping else 0

    @property
    def numeric_levels(self) -> bool:
        """True when a categorical column's levels are numbers (matched by value)."""
        return bool(self.levels) and _is_number(self.levels[0])

    def to_dict(self) -> dict[str, Any]:
        """The column as a TOML-style dict (inverse of the parsing in ``Schema.from_dict``)."""
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.type == "numeric":
            if self.min is not None:
                out["min"] = self.min
            if self.max is not None:
                out["max"] = self.max
        elif self.type == "categorical":
            out["levels"] = list(self.levels)
            out["drop_first"] = self.drop_first
        elif self.type == "label":
            out["mapping"] = dict(self.mapping)
        return out


@dataclass(frozen=True)
class Schema:
    """The federation's data schema (see the module docstring for the format)."""

    columns: tuple[Column, ...]
    missing: str = "?"
    missing_policy: MissingPolicy = "drop"
    header: bool = False

    # ------------------------------------------------------------------ derived
    @property
    def column_names(self) -> tuple[str, ...]:
        """All column names in file order (including label and ignored columns)."""
        return tuple(c.name for c in self.columns)

    @property
    def feature_columns(self) -> tuple[Column, ...]:
        """The numeric and categorical columns, in file order."""
        return tuple(c for c in self.columns if c.type in ("numeric", "categorical"))

    @property
    def numeric_names(self) -> tuple[str, ...]:
        """Names of the numeric columns, in file order (the order of ``FeatureStats``)."""
        return tuple(c.name for c in self.columns if c.type == "numeric")

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the encoded features, in the order of ``Table.x`` columns."""
        return tuple(name for c in self.columns for name in c.feature_names)

    @property
    def num_features(self) -> int:
        """Width of the encoded feature matrix."""
        return len(self.feature_names)

    @property
    def label_column(self) -> Column:
        """The (single) label column."""
        return next(c for c in self.columns if c.type == "label")

    @property
    def num_classes(self) -> int:
        """Number of classes of the label."""
        return self.label_column.num_classes

    # ------------------------------------------------------------------ dict io
    def to_dict(self) -> dict[str, Any]:
        """The schema as the ``[data]`` table dict; ``from_dict(to_dict())`` is equal."""
        return {
            "missing": self.missing,
            "missing_policy": self.missing_policy,
            "header": self.header,
            "columns": [c.to_dict() for c in self.columns],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "data") -> Schema:
        """Parse and validate the ``[data]`` table of a federation file.

        ``d`` is the table itself (``toml_dict["data"]``); ``where`` is its key path,
        used as the prefix of every error message. Raises ``ConfigError``.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where}: expected a table, found {_type_name(d)}")
        for key in d:
            if key not in _DATA_KEYS:
                hint = _suggest(key, _DATA_KEYS)
                if key == "data" and isinstance(d.get("data"), Mapping):
                    hint = " (pass the [data] table itself, not the whole file)"
                raise ConfigError(
                    f"{where}: unknown key {key!r}{hint}; allowed keys: {', '.join(_DATA_KEYS)}"
                )

        missing = _check_text(
            d.get("missing", "?"), f"{where}.missing", "the missing-value marker", allow_empty=True
        )
        policy = d.get("missing_policy", "drop")
        if policy not in MISSING_POLICIES:
            shown = repr(policy) if isinstance(policy, str) else _type_name(policy)
            raise ConfigError(
                f"{where}.missing_policy: found {shown}; allowed values: "
                + ", ".join(repr(p) for p in MISSING_POLICIES)
            )
        header = d.get("header", False)
        if not isinstance(header, bool):
            raise ConfigError(f"{where}.header: expected true or false, found {_type_name(header)}")

        if "columns" not in d:
            raise ConfigError(
                f"{where}.columns: missing; declare the file's columns in order with "
                "[[data.columns]] tables (name, type, ...)"
            )
        raw_columns = d["columns"]
        if isinstance(raw_columns, str | bytes) or not isinstance(raw_columns, Sequence):
            raise ConfigError(
                f"{where}.columns: expected a list of column tables, found "
                f"{_type_name(raw_columns)}"
            )
        if not raw_columns:
            raise ConfigError(f"{where}.columns: the list is empty; declare at least two columns")

        columns: list[Column] = []
        first_path: dict[str, str] = {}
        for i, raw in enumerate(raw_columns):
            path = f"{where}.columns[{i}]"
            column = _parse_column(raw, path, missing)
            if column.name in first_path:
                raise ConfigError(
                    f"{path}.name: duplicate column name {column.name!r} (also "
                    f"{first_path[column.name]}.name); column names must be unique"
                )
            first_path[column.name] = path
            columns.append(column)

        labels = [i for i, c in enumerate(columns) if c.type == "label"]
        if len(labels) != 1:
            found = ", ".join(f"{where}.columns[{i}]" for i in labels) or "none"
            raise ConfigError(
                f"{where}.columns: expected exactly one column with type = 'label', found "
                f"{len(labels)} ({found})"
            )
        if not any(c.type in ("numeric", "categorical") for c in columns):
            raise ConfigError(
                f"{where}.columns: no feature column; declare at least one column of type "
                "'numeric' or 'categorical'"
            )
        return cls(columns=tuple(columns), missing=missing, missing_policy=policy, header=header)


def _parse_column(raw: object, path: str, missing: str) -> Column:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a column table, found {_type_name(raw)}")
    for required in ("name", "type"):
        if required not in raw:
            raise ConfigError(
                f"{path}.{required}: missing; every column needs a name and a type "
                f"({', '.join(COLUMN_TYPES)})"
            )
    name = _check_text(raw["name"], f"{path}.name", "the column name")
    kind = raw["type"]
    if kind not in COLUMN_TYPES:
        shown = repr(kind) if isinstance(kind, str) else _type_name(kind)
        raise ConfigError(
            f"{path}.type: found {shown}{_suggest(kind, COLUMN_TYPES)}; allowed values: "
            + ", ".join(repr(t) for t in COLUMN_TYPES)
        )
    allowed = _COLUMN_KEYS[kind]
    for key in raw:
        if key not in allowed:
            why = (
                f"it does not apply to a {kind} column"
                if key in _ALL_COLUMN_KEYS
                else f"unknown key{_suggest(key, _ALL_COLUMN_KEYS)}"
            )
            raise ConfigError(
                f"{path}: key {key!r} not allowed ({why}); allowed keys for a {kind} "
                f"column: {', '.join(allowed)}"
            )

    if kind == "numeric":
        low = _parse_bound(raw, "min", path)
        high = _parse_bound(raw, "max", path)
        if low is not None and high is not None and not low < high:
            raise ConfigError(
                f"{path}.min: min ({low}) must be smaller than max ({high}); fix the range"
            )
        return Column(name=name, type="numeric", min=low, max=high)
    if kind == "categorical":
        levels = _parse_levels(raw, path, missing)
        drop_first = raw.get("drop_first", False)
        if not isinstance(drop_first, bool):
            raise ConfigError(
                f"{path}.drop_first: expected true or false, found {_type_name(drop_first)}"
            )
        if drop_first and len(levels) < 2:
            raise ConfigError(
                f"{path}.drop_first: with a single level, dropping the first leaves no "
                "feature; add levels or set drop_first = false"
            )
        return Column(name=name, type="categorical", levels=levels, drop_first=drop_first)
    if kind == "label":
        return Column(name=name, type="label", mapping=_parse_mapping(raw, path, missing))
    return Column(name=name, type="ignore")


def _parse_bound(raw: Mapping[str, Any], key: str, path: str) -> int | float | None:
    if key not in raw:
        return None
    value = raw[key]
    if not _is_finite_number(value):
        shown = repr(value) if _is_number(value) else _type_name(value)
        raise ConfigError(f"{path}.{key}: expected a finite number, found {shown}")
    return value


def _parse_levels(raw: Mapping[str, Any], path: str, missing: str) -> tuple[Level, ...]:
    if "levels" not in raw:
        raise ConfigError(
            f"{path}.levels: missing; a categorical column lists its levels, e.g. "
            'levels = [1, 2, 3] or levels = ["a", "b"]'
        )
    levels = raw["levels"]
    if isinstance(levels, str | bytes) or not isinstance(levels, Sequence):
        raise ConfigError(
            f"{path}.levels: expected a list of numbers or strings, found {_type_name(levels)}"
        )
    if not levels:
        raise ConfigError(f"{path}.levels: the list is empty; list at least one level")
    numeric = _is_number(levels[0])
    seen: dict[object, int] = {}
    missing_value = parse_number(missing)
    for j, level in enumerate(levels):
        where = f"{path}.levels[{j}]"
        if numeric:
            if not _is_finite_number(level):
                shown = repr(level) if _is_number(level) else _type_name(level)
                raise ConfigError(
                    f"{where}: expected a finite number like the first level, found {shown}; "
                    "levels are all numbers or all strings"
                )
            key: object = float(level)
            if missing_value is not None and key == missing_value:
                raise ConfigError(
                    f"{where}: level {level!r} equals the missing-value marker {missing!r}; "
                    "change the marker or the level"
                )
        else:
            if not isinstance(level, str):
                raise ConfigError(
                    f"{where}: expected a string like the first level, found "
                    f"{_type_name(level)}; levels are all numbers or all strings"
                )
            _check_text(level, where, "the level")
            if level == missing:
                raise ConfigError(
                    f"{where}: level {level!r} equals the missing-value marker; change the "
                    "marker or the level"
                )
            key = level
        if key in seen:
            raise ConfigError(
                f"{where}: duplicate level {level!r} (also {path}.levels[{seen[key]}]); "
                "list each level once"
            )
        seen[key] = j
    return tuple(levels)


def _parse_mapping(raw: Mapping[str, Any], path: str, missing: str) -> tuple[tuple[str, int], ...]:
    if "mapping" not in raw:
        raise ConfigError(
            f"{path}.mapping: missing; the label column maps each file value to a class "
            'index, e.g. mapping = { "no" = 0, "yes" = 1 }'
        )
    mapping = raw["mapping"]
    if not isinstance(mapping, Mapping):
        raise ConfigError(
            f"{path}.mapping: expected a table of file value -> class index, found "
            f"{_type_name(mapping)}"
        )
    if not mapping:
        raise ConfigError(f"{path}.mapping: the table is empty; map at least two values")
    pairs: list[tuple[str, int]] = []
    by_number: dict[float, str] = {}
    for key, index in mapping.items():
        where = f"{path}.mapping.{key}" if isinstance(key, str) else f"{path}.mapping"
        _check_text(key, where, "the label value")
        if key == missing:
            raise ConfigError(
                f"{where}: the label value {key!r} equals the missing-value marker; a "
                "missing label always drops the row"
            )
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            shown = repr(index) if _is_number(index) else _type_name(index)
            raise ConfigError(f"{where}: expected a class index (an integer >= 0), found {shown}")
        number = parse_number(key)
        if number is not None:
            if number in by_number:
                raise ConfigError(
                    f"{where}: {key!r} is the same number as {by_number[number]!r}; "
                    "map each value once"
                )
            by_number[number] = key
        pairs.append((key, index))
    used = {index for _, index in pairs}
    num_classes = max(used) + 1
    absent = sorted(set(range(num_classes)) - used)
    if absent:
        raise ConfigError(
            f"{path}.mapping: class indices must be 0..{num_classes - 1} with none skipped; "
            f"no value maps to {', '.join(map(str, absent))}"
        )
    if num_classes < 2:
        raise ConfigError(
            f"{path}.mapping: every value maps to class 0; a classifier needs at least two "
            "classes (indices 0 and 1)"
        )
    return tuple(pairs)
