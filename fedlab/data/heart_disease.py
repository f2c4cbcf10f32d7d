"""The bundled UCI Heart Disease data: four hospitals, the FLamby protocol and split.

Files, licence (CC BY 4.0) and citation: ``builtin/heart_disease/ATTRIBUTION.md``.
The schema follows FLamby's Fed-Heart-Disease: slope, ca and thal are ignored;
rows with any other value missing (``?``) are dropped, leaving 740 rows (303,
261, 46, 130); cp and restecg are one-hot encoded without their first level;
the label is ``num > 0``. ``load_hospital`` selects FLamby's published train/test
rows by their line numbers (``flamby-split.json``), so results compare with the
published ones, and carves any validation rows out of the training rows only.

Ranges of the numeric columns (values outside are a ``DataError``; with both
bounds declared, values are scaled to [0, 1] by them when no federation
statistics are given):

========  ==========  ==================================================  ==============
column    range       why                                                 in the files
========  ==========  ==================================================  ==============
age       18 .. 100   adult cardiology patients (years)                   28 .. 77
sex       0 .. 1      0 female, 1 male                                    0 .. 1
trestbps  0 .. 250    resting systolic pressure (mm Hg); 0 is the files'  0, 80 .. 200
                      code for "not recorded" (one kept row, VA line 34)
chol      0 .. 700    serum cholesterol (mg/dl); 0 means "not measured":  0, 85 .. 603
                      every Switzerland row and 49 VA rows
fbs       0 .. 1      fasting blood sugar > 120 mg/dl                     0 .. 1
thalach   40 .. 250   maximum heart rate reached (beats/min)              60 .. 202
exang     0 .. 1      exercise-induced angina                             0 .. 1
oldpeak   -3 .. 7     ST depression (mm); negative is ST elevation        -2.6 .. 6.2
========  ==========  ==================================================  ==============

With ``data.missing_policy = "impute"`` (opt-in) the rows with a missing value are kept
and join each hospital's training rows, imputed with the federation's means and most
frequent levels (computed by secure aggregation before training, :mod:`fedlab.prep`);
the published test rows are unchanged.

The zeros of chol and trestbps are kept as values, as FLamby does: treating them as
missing would drop all of Switzerland (chol) and change the published rows and
split. Models see them as an out-of-band value (chol scaled to 0 where real values
start above 0.12).
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from fedlab.data.csv import load_csv
from fedlab.data.lab import LabData, split_validation
from fedlab.data.schema import Schema
from fedlab.data.stats import FeatureStats
from fedlab.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

HOSPITALS: tuple[str, ...] = ("cleveland", "hungary", "switzerland", "va")
DISPLAY_NAMES: dict[str, str] = {
    "cleveland": "Cleveland Clinic Foundation",
    "hungary": "Hungarian Institute of Cardiology, Budapest",
    "switzerland": "University Hospitals Zurich and Basel",
    "va": "V.A. Medical Center, Long Beach",
}
# The UCI file names (and flamby-split.json keys) say "hungarian".
_FILE_KEYS: dict[str, str] = {
    "cleveland": "cleveland",
    "hungary": "hungarian",
    "switzerland": "switzerland",
    "va": "va",
}
DATA_DIR: Path = Path(__file__).resolve().parent / "builtin" / "heart_disease"
SPLIT_FILE: Path = DATA_DIR / "flamby-split.json"


def _check_hospital(hospital: str) -> str:
    if hospital not in HOSPITALS:
        raise ConfigError(
            f"heart disease: unknown hospital {hospital!r}; expected one of "
            + ", ".join(repr(h) for h in HOSPITALS)
        )
    return hospital


def schema_dict() -> dict[str, Any]:
    """The built-in schema in the ``[data]`` table format of ``federation.toml``."""

    def numeric(name: str, low: float, high: float) -> dict[str, Any]:
        return {"name": name, "type": "numeric", "min": low, "max": high}

    return {
        "missing": "?",
        "missing_policy": "drop",
        "header": False,
        "columns": [
            numeric("age", 18, 100),
            numeric("sex", 0, 1),
            {"name": "cp", "type": "categorical", "levels": [1, 2, 3, 4], "drop_first": True},
            numeric("trestbps", 0, 250),
            numeric("chol", 0, 700),
            numeric("fbs", 0, 1),
            {"name": "restecg", "type": "categorical", "levels": [0, 1, 2], "drop_first": True},
            numeric("thalach", 40, 250),
            numeric("exang", 0, 1),
            numeric("oldpeak", -3, 7),
            {"name": "slope", "type": "ignore"},
            {"name": "ca", "type": "ignore"},
            {"name": "thal", "type": "ignore"},
            {
                "name": "num",
                "type": "label",
                "mapping": {"0": 0, "1": 1, "2": 1, "3": 1, "4": 1},
            },
        ],
    }


def schema(missing_policy: str = "drop") -> Schema:
    """The built-in schema, parsed; ``missing_policy = "impute"`` keeps the rows with a
    missing value (FLamby, and the default, drop them)."""
    d = schema_dict()
    d["missing_policy"] = missing_policy
    return Schema.from_dict(d, where="heart_disease.schema")


def data_file(hospital: str) -> Path:
    """Path of a hospital's bundled ``processed.<name>.data`` file."""
    return DATA_DIR / f"processed.{_FILE_KEYS[_check_hospital(hospital)]}.data"


@functools.cache
def _split_json() -> dict[str, Any]:
    try:
        return json.loads(SPLIT_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{SPLIT_FILE}: cannot read the published split ({exc}); reinstall fedlab"
        ) from None


def published_split(hospital: str) -> tuple[list[int], list[int]]:
    """FLamby's train and test rows of a hospital, as 1-based lines of its file."""
    entry = _split_json()["hospitals"][_FILE_KEYS[_check_hospital(hospital)]]
    return list(entry["train_lines"]), list(entry["test_lines"])


def load_hospital(
    hospital: str,
    *,
    val_fraction: float = 0.0,
    seed: int = 0,
    stats: FeatureStats | None = None,
    missing_policy: str = "drop",
) -> LabData:
    """Load one hospital with the built-in schema and FLamby's published split.

    ``val_fraction`` of the *training* rows (seeded by ``seed``, stratified by label
    where possible) become validation rows; the test rows are never touched.
    ``stats``: federation feature statistics to standardise numeric columns with.
    ``missing_policy = "impute"``: rows with a missing value (which FLamby drops, so
    they are in neither published list) are kept and join the *training* rows, their
    missing values imputed (with the federation's means and most frequent levels once
    federated preprocessing has run); the published test rows stay as they are.
    """
    path = data_file(hospital)
    table = load_csv(path, schema(missing_policy), stats=stats,
                     defer_imputation=missing_policy == "impute")
    train_lines, test_lines = published_split(hospital)
    row_of = {int(line): i for i, line in enumerate(table.lines)}
    for part, listed in (("train", train_lines), ("test", test_lines)):
        absent = [line for line in listed if line not in row_of]
        if absent:
            raise DataError(
                f"{path}, line {absent[0]}, column 'num': the published {part} split lists "
                f"line(s) {absent[:5]} but the loader did not keep them; expected every "
                "listed row to be complete; the bundled file or schema was changed, "
                "reinstall fedlab"
            )
    overlap = set(train_lines) & set(test_lines)
    unused = set(row_of) - set(train_lines) - set(test_lines)
    if missing_policy == "impute" and table.raw is not None:
        # The rows FLamby drops for a missing value train here, imputed.
        incomplete = np.isnan(table.raw.numeric).any(axis=1) | (table.raw.codes < 0).any(axis=1)
        extra = sorted(line for line in unused if incomplete[row_of[line]])
        unused -= set(extra)
        train_lines = sorted([*train_lines, *extra])
    if overlap or unused:
        raise DataError(
            f"{SPLIT_FILE}: the published split of {hospital!r} does not partition the "
            f"kept rows (in both: {sorted(overlap)[:5]}, in neither: {sorted(unused)[:5]}); "
            "reinstall fedlab"
        )
    train_rows = np.array([row_of[line] for line in train_lines], dtype=np.int64)
    test_rows = np.array([row_of[line] for line in test_lines], dtype=np.int64)
    keep, val = split_validation(table.y[train_rows], val_fraction, seed)
    val_rows = train_rows[val]
    train_rows = train_rows[keep]
    logger.info(
        "heart disease %s: %d train, %d validation, %d test rows",
        hospital,
        len(train_rows),
        len(val_rows),
        len(test_rows),
    )
    return LabData(
        name=hospital,
        x_train=table.x[train_rows],
        y_train=table.y[train_rows],
        x_val=table.x[val_rows],
        y_val=table.y[val_rows],
        x_test=table.x[test_rows],
        y_test=table.y[test_rows],
        report=table.report,
        lines_train=table.lines[train_rows],
        lines_val=table.lines[val_rows],
        lines_test=table.lines[test_rows],
        raw_train=table.raw.take(train_rows) if table.raw is not None else None,
        raw_val=table.raw.take(val_rows) if table.raw is not None else None,
        raw_test=table.raw.take(test_rows) if table.raw is not None else None,
    )


def load_all(
    *, val_fraction: float = 0.0, seed: int = 0, stats: FeatureStats | None = None
) -> tuple[LabData, ...]:
    """All four hospitals, in ``HOSPITALS`` order (same arguments as ``load_hospital``)."""
    return tuple(
        load_hospital(h, val_fraction=val_fraction, seed=seed, stats=stats) for h in HOSPITALS
    )
