"""The federation's learning task: which data each lab holds, and the model's shape.

Both sides use this one module: a lab loads *its own* file (deployment) and the
simulation loads every virtual lab's share on one machine. A lab's train/test (and
validation) rows are decided here, the same way everywhere:

- built-in heart disease: the published per-hospital split (FLamby), validation rows
  carved out of each hospital's training rows only;
- a lab's own CSV: a seeded, stratified split of its rows (``data.test_fraction``);
- simulation of one pooled file: rows spread over virtual labs by a partitioner,
  then each lab's rows split as above.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedlab.config import FederationConfig
from fedlab.data import LabData, LoadReport, split_validation
from fedlab.data import heart_disease as hd
from fedlab.data.csv import load_csv
from fedlab.data.schema import Schema
from fedlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskShape:
    """What the model needs to know about the data."""

    num_features: int
    num_classes: int


def schema_for(cfg: FederationConfig) -> Schema:
    """The federation's data schema (built-in or from [data])."""
    if cfg.data.dataset == "heart-disease":
        return hd.schema()
    return Schema.from_dict(cfg.data.schema, where="data")


def task_shape(cfg: FederationConfig) -> TaskShape:
    schema = schema_for(cfg)
    return TaskShape(schema.num_features, schema.num_classes)


def _lab_seed(seed: int, purpose: str, lab: str) -> list[int]:
    """A public, per-lab, per-purpose seed (reproducible splits that differ between labs)."""
    return [seed, zlib.crc32(f"{purpose}:{lab}".encode())]


def _lab_from_arrays(name: str, x: np.ndarray, y: np.ndarray, lines: np.ndarray,
                     cfg: FederationConfig, report: LoadReport | None) -> LabData:
    """Split one lab's rows into train / validation / test (seeded, stratified); validation
    rows come out of the training rows only."""
    train, test = split_validation(y, cfg.data.test_fraction,
                                   np.random.default_rng(_lab_seed(cfg.seed, "test", name))
                                   .integers(2**31))
    val = np.zeros(0, dtype=np.int64)
    if cfg.data.validation_fraction > 0:
        keep, val_local = split_validation(
            y[train], cfg.data.validation_fraction,
            np.random.default_rng(_lab_seed(cfg.seed, "val", name)).integers(2**31))
        val = train[val_local]
        train = train[keep]
    return LabData(name=name, x_train=x[train], y_train=y[train], x_val=x[val], y_val=y[val],
                   x_test=x[test], y_test=y[test], report=report, lines_train=lines[train],
                   lines_val=lines[val], lines_test=lines[test])


def load_lab(cfg: FederationConfig, lab: str, data_path: str | Path | None = None) -> LabData:
    """Load one lab's data. ``data_path`` overrides the config (a lab's own file)."""
    names = cfg.lab_names()
    if data_path is None:
        if lab not in names:
            raise ConfigError(f"lab {lab!r} is not in the federation (labs: {', '.join(names)})")
        data_path = next(item.data for item in cfg.labs if item.name == lab)
    spec = str(data_path)
    if cfg.data.dataset == "heart-disease":
        if spec.startswith("builtin:"):
            hospital = spec.removeprefix("builtin:")
            if hospital not in hd.HOSPITALS:
                raise ConfigError(f"lab {lab!r}: {spec!r} is not a bundled hospital; use one of "
                                  + ", ".join(f"builtin:{h}" for h in hd.HOSPITALS))
            data = hd.load_hospital(hospital, val_fraction=cfg.data.validation_fraction,
                                    seed=cfg.seed)
            return dataclasses.replace(data, name=lab)
        # A lab's own copy of a hospital file: same schema, and where it is the bundled
        # file itself, the published split by line number.
        return _heart_lab_file(cfg, lab, cfg.resolve(spec))
    if not spec:
        raise ConfigError(f"lab {lab!r} has no data file: set data = \"...\" in its [[labs]] "
                          "entry or pass --data")
    table = load_csv(cfg.resolve(spec), schema_for(cfg))
    return _lab_from_arrays(lab, table.x, table.y, table.lines, cfg, table.report)


def _heart_lab_file(cfg: FederationConfig, lab: str, path: Path) -> LabData:
    """A heart-disease lab's file given by path (deployment: the lab's own copy).

    If the file is byte-identical to one of the bundled hospital files, the published
    FLamby split of that hospital is used, so results compare with the published table;
    any other file gets the seeded, stratified split of ``data.test_fraction``."""
    try:
        content = path.read_bytes()
    except OSError:
        content = b""
    for hospital in hd.HOSPITALS:
        if content and content == hd.data_file(hospital).read_bytes():
            table = load_csv(path, hd.schema())
            train_lines, test_lines = hd.published_split(hospital)
            pos = {int(line): i for i, line in enumerate(table.lines)}
            train = np.array([pos[x] for x in train_lines if x in pos], dtype=np.int64)
            test = np.array([pos[x] for x in test_lines if x in pos], dtype=np.int64)
            val = np.zeros(0, dtype=np.int64)
            if cfg.data.validation_fraction > 0:
                keep, v = split_validation(table.y[train], cfg.data.validation_fraction, cfg.seed)
                train, val = train[keep], train[v]
            x, y, lines = table.x, table.y, table.lines
            return LabData(name=lab, x_train=x[train], y_train=y[train], x_val=x[val],
                           y_val=y[val], x_test=x[test], y_test=y[test], report=table.report,
                           lines_train=lines[train], lines_val=lines[val], lines_test=lines[test])
    table = load_csv(path, hd.schema())
    return _lab_from_arrays(lab, table.x, table.y, table.lines, cfg, table.report)


def simulation_labs(cfg: FederationConfig) -> list[str]:
    """Names of the virtual labs of a simulation, in partition order."""
    sim = cfg.simulation
    if sim.partition in ("iid", "dirichlet"):
        return [f"lab-{i}" for i in range(sim.num_labs)]
    if sim.column:
        return [name for name, _ in _natural_by_column(cfg)]
    return list(cfg.lab_names())


def _pooled_table(cfg: FederationConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                  LoadReport | None]:
    if cfg.data.file:
        table = load_csv(cfg.resolve(cfg.data.file), schema_for(cfg))
        return table.x, table.y, table.lines, table.report
    if cfg.data.dataset == "heart-disease":
        parts = [load_lab(cfg, lab) for lab in cfg.lab_names()]
        x = np.concatenate([np.concatenate([p.x_train, p.x_val, p.x_test]) for p in parts])
        y = np.concatenate([np.concatenate([p.y_train, p.y_val, p.y_test]) for p in parts])
        return x, y, np.zeros(len(y), dtype=np.int64), None
    raise ConfigError("simulation.partition needs data.file (one pooled CSV) to spread over labs")


def _column_values(path: Path, column: str, schema: Schema, lines: np.ndarray) -> np.ndarray:
    """The raw text of ``column`` on the given 1-based lines of a CSV file."""
    names = list(schema.column_names)
    if column not in names:
        raise ConfigError(f"simulation.column = {column!r} is not a column of the data schema "
                          f"(columns: {', '.join(names)})")
    idx = names.index(column)
    wanted = set(int(x) for x in lines)
    values: dict[int, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if lineno in wanted:
                values[lineno] = row[idx].strip()
    return np.array([values[int(x)] for x in lines])


def _natural_by_column(cfg: FederationConfig) -> list[tuple[str, np.ndarray]]:
    """One virtual lab per distinct value of ``simulation.column`` in ``data.file``."""
    from fedlab.data import partition

    if not cfg.data.file:
        raise ConfigError("simulation.column needs data.file: the pooled CSV whose column "
                          "says which lab each row belongs to")
    path = cfg.resolve(cfg.data.file)
    table = load_csv(path, schema_for(cfg))
    values = _column_values(path, cfg.simulation.column, schema_for(cfg), table.lines)
    out = []
    for rows in partition.natural(values):
        raw = str(values[rows[0]])
        name = re.sub(r"[^a-z0-9_-]+", "-", raw.lower()).strip("-")[:60] or "lab"
        out.append((name, rows))
    return out


def load_simulation_lab(cfg: FederationConfig, index: int) -> LabData:
    """The data of virtual lab ``index`` of a simulation."""
    from fedlab.data import partition

    names = simulation_labs(cfg)
    if not 0 <= index < len(names):
        raise ConfigError(f"virtual lab {index} does not exist (the simulation has {len(names)})")
    sim = cfg.simulation
    if sim.partition == "natural" and not sim.column:
        return load_lab(cfg, names[index])
    if sim.partition == "natural":
        table = load_csv(cfg.resolve(cfg.data.file), schema_for(cfg))
        name, rows = _natural_by_column(cfg)[index]
        return _lab_from_arrays(name, table.x[rows], table.y[rows], table.lines[rows], cfg,
                                table.report)
    x, y, lines, report = _pooled_table(cfg)
    if sim.partition == "iid":
        parts = partition.iid(len(y), sim.num_labs, cfg.seed)
    else:
        parts = partition.dirichlet(y, sim.num_labs, sim.alpha, cfg.seed)
    rows = parts[index]
    if len(rows) < 2:
        raise DataError(f"virtual lab {names[index]} got {len(rows)} rows from the partition; "
                        "use fewer labs or a larger alpha")
    return _lab_from_arrays(names[index], x[rows], y[rows], lines[rows], cfg, report)
