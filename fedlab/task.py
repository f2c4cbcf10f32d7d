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

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedlab.config import FederationConfig
from fedlab.data import LabData
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


def split_rows(y: np.ndarray, fraction: float, seed: int, salt: str) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified split of row indices into (rest, held-out)."""
    rng = np.random.default_rng([seed, *salt.encode()])
    held: list[np.ndarray] = []
    rest: list[np.ndarray] = []
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        k = int(round(fraction * len(idx)))
        if len(idx) > 1:
            k = min(max(k, 0), len(idx) - 1)
        held.append(idx[:k])
        rest.append(idx[k:])
    return np.sort(np.concatenate(rest)), np.sort(np.concatenate(held))


def _lab_from_arrays(name: str, x: np.ndarray, y: np.ndarray, cfg: FederationConfig,
                     report: object | None) -> LabData:
    train, test = split_rows(y, cfg.data.test_fraction, cfg.seed, f"test:{name}")
    val = np.zeros(0, dtype=np.int64)
    if cfg.data.validation_fraction > 0:
        keep, val_local = split_rows(y[train], cfg.data.validation_fraction, cfg.seed, f"val:{name}")
        val = train[val_local]
        train = train[keep]
    return LabData(name=name, x_train=x[train], y_train=y[train], x_val=x[val], y_val=y[val],
                   x_test=x[test], y_test=y[test], report=report)  # type: ignore[arg-type]


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
            return LabData(name=lab, x_train=data.x_train, y_train=data.y_train,
                           x_val=data.x_val, y_val=data.y_val, x_test=data.x_test,
                           y_test=data.y_test, report=data.report)
        table = load_csv(cfg.resolve(spec), hd.schema())
        return _lab_from_arrays(lab, table.x, table.y, cfg, table.report)
    if not spec:
        raise ConfigError(f"lab {lab!r} has no data file: set data = \"...\" in its [[labs]] "
                          "entry or pass --data")
    table = load_csv(cfg.resolve(spec), schema_for(cfg))
    return _lab_from_arrays(lab, table.x, table.y, cfg, table.report)


def simulation_labs(cfg: FederationConfig) -> list[str]:
    """Names of the virtual labs of a simulation, in partition order."""
    sim = cfg.simulation
    if sim.partition in ("iid", "dirichlet"):
        return [f"lab-{i}" for i in range(sim.num_labs)]
    if sim.column:
        return [name for name, _ in _natural_by_column(cfg)]
    return list(cfg.lab_names())


def _pooled_table(cfg: FederationConfig) -> tuple[np.ndarray, np.ndarray, object]:
    if cfg.data.file:
        table = load_csv(cfg.resolve(cfg.data.file), schema_for(cfg))
        return table.x, table.y, table.report
    if cfg.data.dataset == "heart-disease":
        parts = [load_lab(cfg, lab) for lab in cfg.lab_names()]
        x = np.concatenate([np.concatenate([p.x_train, p.x_val, p.x_test]) for p in parts])
        y = np.concatenate([np.concatenate([p.y_train, p.y_val, p.y_test]) for p in parts])
        return x, y, None
    raise ConfigError("simulation.partition needs data.file (one pooled CSV) to spread over labs")


def _natural_by_column(cfg: FederationConfig) -> list[tuple[str, np.ndarray]]:
    raise ConfigError("simulation.column (one lab per value of a column) is not available for "
                      "this schema: list the labs' files under [[labs]] instead")


def load_simulation_lab(cfg: FederationConfig, index: int) -> LabData:
    """The data of virtual lab ``index`` of a simulation."""
    from fedlab.data import partition

    names = simulation_labs(cfg)
    if not 0 <= index < len(names):
        raise ConfigError(f"virtual lab {index} does not exist (the simulation has {len(names)})")
    sim = cfg.simulation
    if sim.partition == "natural" and not sim.column:
        return load_lab(cfg, names[index])
    x, y, report = _pooled_table(cfg)
    if sim.partition == "iid":
        parts = partition.iid(len(y), sim.num_labs, cfg.seed)
    else:
        parts = partition.dirichlet(y, sim.num_labs, sim.alpha, cfg.seed)
    rows = parts[index]
    if len(rows) < 2:
        raise DataError(f"virtual lab {names[index]} got {len(rows)} rows from the partition; "
                        "use fewer labs or a larger alpha")
    return _lab_from_arrays(names[index], x[rows], y[rows], cfg, report)
