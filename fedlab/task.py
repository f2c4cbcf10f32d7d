"""The federation's learning task: which data each lab holds, and the model's shape.

Both sides use this one module: a lab loads *its own* file (deployment) and the
simulation loads every virtual lab's share on one machine. A lab's train/test (and
validation) rows are decided here, the same way everywhere:

- built-in heart disease: the published per-hospital split (FLamby), validation rows
  carved out of each hospital's training rows only;
- a lab's own CSV: a seeded, stratified split of its rows (``data.test_fraction``);
- simulation of one pooled file: rows spread over virtual labs by a partitioner,
  then each lab's rows split as above;
- built-in Rotten Tomatoes texts (a text data set): the labelled snippets spread
  over ``simulation.num_labs`` virtual labs by a Dirichlet partition of the labels
  (``simulation.alpha``; or iid), each lab's rows split stratified into train /
  validation / test. A text lab is a :class:`~fedlab.data.text.TextLab`: it keeps
  its raw texts until the federation's vocabulary (selected buckets) is known, then
  :func:`encode_text_lab` turns them into token ids (a :class:`LabData`).
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

from fedlab.config import TEXT_DATASETS, FederationConfig
from fedlab.data import LabData, LoadReport, split_validation
from fedlab.data import heart_disease as hd
from fedlab.data import text as tx
from fedlab.data.csv import RawRows, load_csv
from fedlab.data.schema import Schema
from fedlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

LabSource = LabData | tx.TextLab  # what a lab loads: table rows, or texts not yet encoded


@dataclass(frozen=True)
class TaskShape:
    """What the model needs to know about the data."""

    num_features: int
    num_classes: int


def is_text(cfg: FederationConfig) -> bool:
    """Whether the federation's labs hold texts (token ids through a federated vocabulary)."""
    return cfg.data.dataset in TEXT_DATASETS


def schema_for(cfg: FederationConfig) -> Schema:
    """The federation's data schema (built-in or from [data])."""
    if cfg.data.dataset == "heart-disease":
        return hd.schema(_missing_policy(cfg))
    if is_text(cfg):
        raise ConfigError(f"data.dataset = {cfg.data.dataset!r} holds labelled texts, not a table "
                          "with a column schema; a lab's text file is a CSV with a 'text' and a "
                          "'category' column (fresh / rotten)")
    return Schema.from_dict(cfg.data.schema, where="data")


def _missing_policy(cfg: FederationConfig) -> str:
    """data.missing_policy (a built-in data set's schema keeps its other keys)."""
    return str(cfg.data.schema.get("missing_policy", "drop"))


def _defer_imputation(cfg: FederationConfig) -> bool:
    """Whether missing values are imputed by the federation's statistics (fedlab.prep)
    rather than by each lab's own: then a lab may lack every value of a column."""
    from fedlab.prep import FEATURE_STATS, steps_for

    return FEATURE_STATS in steps_for(cfg)


def check_lab_file(cfg: FederationConfig, path: str | Path) -> LoadReport | tx.TextReport:
    """``fedlab check-data``: read a lab's file exactly as its training will (the schema's
    CSV loader, or the text loader for a text data set) and return the load report."""
    if is_text(cfg):
        return tx.load_text_csv(path, text_column="text", label_column="category",
                                mapping=tx.LABELS, drop_labels=("plot",))[2]
    from fedlab.data.check import check_file

    return check_file(path, schema_for(cfg))


def task_shape(cfg: FederationConfig) -> TaskShape:
    if is_text(cfg):  # token ids of the first sequence_length tokens; fresh / rotten
        return TaskShape(cfg.model.sequence_length, len(set(tx.LABELS.values())))
    schema = schema_for(cfg)
    return TaskShape(schema.num_features, schema.num_classes)


# -- text labs ----------------------------------------------------------------------------
@dataclass(frozen=True)
class VocabularySettings:
    """How the federation's vocabulary is chosen (see :mod:`fedlab.data.text`)."""

    buckets: int  # hash buckets each lab counts its training tokens into
    vocab_size: int  # buckets selected (token ids 2 .. vocab_size + 1)
    min_labs: int  # a bucket is eligible when at least this many labs hold a token in it
    max_len: int  # tokens kept per text (the model's sequence_length)


def vocabulary_settings(cfg: FederationConfig) -> VocabularySettings:
    return VocabularySettings(buckets=cfg.data.vocabulary_buckets,
                              vocab_size=cfg.model.vocab_size,
                              min_labs=cfg.data.vocabulary_min_labs,
                              max_len=cfg.model.sequence_length)


def text_encoder(cfg: FederationConfig, selected: np.ndarray) -> tx.TextEncoder:
    """The encoder of the selected buckets (the federation's vocabulary, rank order)."""
    v = vocabulary_settings(cfg)
    selected = np.asarray(selected)
    if selected.ndim != 1 or selected.size > v.vocab_size:
        raise DataError(f"vocabulary: {selected.size} buckets for a model of {v.vocab_size} "
                        "(model.vocab_size); the server and the labs must use the same "
                        "federation.toml")
    return tx.TextEncoder(selected, v.buckets, v.max_len)


def encode_text_lab(cfg: FederationConfig, lab: tx.TextLab, selected: np.ndarray) -> LabData:
    """A text lab's rows as token ids, once the federation's vocabulary is known."""
    return lab.encode(text_encoder(cfg, selected))


def _text_labs(cfg: FederationConfig) -> list[tx.TextLab]:
    """The bundled texts over the simulation's virtual labs (partition order)."""
    from fedlab.data import partition

    sim = cfg.simulation
    texts, labels = tx.load_rotten_tomatoes()
    fractions = {"test_fraction": cfg.data.test_fraction,
                 "val_fraction": cfg.data.validation_fraction}
    if sim.partition == "dirichlet":  # label skew; every lab keeps >= 10 rows
        splits = tx.rotten_tomatoes_labs(sim.num_labs, alpha=sim.alpha, seed=cfg.seed, **fractions)
    elif sim.partition == "iid":
        splits = tx.split_labs(labels, partition.iid(len(labels), sim.num_labs, cfg.seed),
                               seed=cfg.seed, **fractions)
    else:
        raise ConfigError(f"simulation.partition = {sim.partition!r}: the {cfg.data.dataset!r} "
                          "texts are spread by \"dirichlet\" or \"iid\"")
    report = tx.rotten_tomatoes_report()
    return [dataclasses.replace(tx.TextLab.from_split(split, texts, labels, report=report),
                                name=f"lab-{i}") for i, split in enumerate(splits)]


def _text_lab_file(cfg: FederationConfig, lab: str, path: Path) -> tx.TextLab:
    """A lab's own text file (same columns as the bundled corpus), split seeded and
    stratified like any lab's own file."""
    texts, y, report = tx.load_text_csv(path, text_column="text", label_column="category",
                                        mapping=tx.LABELS, drop_labels=("plot",))
    split = _lab_split(lab, y, cfg)
    return tx.TextLab.from_split(tx.TextLabSplit(lab, *split), texts, y, report=report)


def _lab_seed(seed: int, purpose: str, lab: str) -> list[int]:
    """A public, per-lab, per-purpose seed (reproducible splits that differ between labs)."""
    return [seed, zlib.crc32(f"{purpose}:{lab}".encode())]


def _lab_split(name: str, y: np.ndarray, cfg: FederationConfig
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices (train, validation, test) of one lab's own rows (seeded, stratified);
    validation rows come out of the training rows only."""
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
    return train, val, test


def _lab_from_arrays(name: str, x: np.ndarray, y: np.ndarray, lines: np.ndarray,
                     cfg: FederationConfig, report: LoadReport | None,
                     raw: RawRows | None = None) -> LabData:
    """Split one lab's rows into train / validation / test (seeded, stratified); validation
    rows come out of the training rows only. ``raw``: the rows as parsed (kept beside the
    encoded ones for federated preprocessing)."""
    train, val, test = _lab_split(name, y, cfg)
    return LabData(name=name, x_train=x[train], y_train=y[train], x_val=x[val], y_val=y[val],
                   x_test=x[test], y_test=y[test], report=report, lines_train=lines[train],
                   lines_val=lines[val], lines_test=lines[test],
                   raw_train=raw.take(train) if raw is not None else None,
                   raw_val=raw.take(val) if raw is not None else None,
                   raw_test=raw.take(test) if raw is not None else None)


def load_lab(cfg: FederationConfig, lab: str, data_path: str | Path | None = None) -> LabSource:
    """Load one lab's data. ``data_path`` overrides the config (a lab's own file).

    A text lab comes back as a :class:`~fedlab.data.text.TextLab` (raw texts, encoded
    once the federation's vocabulary is known); any other as :class:`LabData`."""
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
                                    seed=cfg.seed, missing_policy=_missing_policy(cfg))
            return dataclasses.replace(data, name=lab)
        # A lab's own copy of a hospital file: same schema, and where it is the bundled
        # file itself, the published split by line number.
        return _heart_lab_file(cfg, lab, cfg.resolve(spec))
    if not spec:
        raise ConfigError(f"lab {lab!r} has no data file: set data = \"...\" in its [[labs]] "
                          "entry or pass --data")
    if is_text(cfg):
        return _text_lab_file(cfg, lab, cfg.resolve(spec))
    table = load_csv(cfg.resolve(spec), schema_for(cfg), defer_imputation=_defer_imputation(cfg))
    return _lab_from_arrays(lab, table.x, table.y, table.lines, cfg, table.report, table.raw)


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
            data = hd.load_hospital(hospital, val_fraction=cfg.data.validation_fraction,
                                    seed=cfg.seed, missing_policy=_missing_policy(cfg))
            return dataclasses.replace(data, name=lab)
    table = load_csv(path, schema_for(cfg), defer_imputation=_defer_imputation(cfg))
    return _lab_from_arrays(lab, table.x, table.y, table.lines, cfg, table.report, table.raw)


def simulation_labs(cfg: FederationConfig) -> list[str]:
    """Names of the virtual labs of a simulation, in partition order."""
    sim = cfg.simulation
    if sim.partition in ("iid", "dirichlet"):
        return [f"lab-{i}" for i in range(sim.num_labs)]
    if sim.column:
        return [name for name, _ in _natural_by_column(cfg)]
    return list(cfg.lab_names())


def _pooled_table(cfg: FederationConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                  RawRows | None]:
    """Every row of the simulation's data (x, y, lines, rows as parsed)."""
    if cfg.data.file:
        table = load_csv(cfg.resolve(cfg.data.file), schema_for(cfg),
                         defer_imputation=_defer_imputation(cfg))
        return table.x, table.y, table.lines, table.raw
    if cfg.data.dataset == "heart-disease":
        parts = [load_lab(cfg, lab) for lab in cfg.lab_names()]
        x = np.concatenate([np.concatenate([p.x_train, p.x_val, p.x_test]) for p in parts])
        y = np.concatenate([np.concatenate([p.y_train, p.y_val, p.y_test]) for p in parts])
        raw = [r for p in parts for r in (p.raw_train, p.raw_val, p.raw_test)]
        whole = RawRows.concat(raw) if all(r is not None for r in raw) else None  # type: ignore[arg-type]
        return x, y, np.zeros(len(y), dtype=np.int64), whole
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


def load_simulation_lab(cfg: FederationConfig, index: int) -> LabSource:
    """The data of virtual lab ``index`` of a simulation (a TextLab for a text data set)."""
    from fedlab.data import partition

    names = simulation_labs(cfg)
    if not 0 <= index < len(names):
        raise ConfigError(f"virtual lab {index} does not exist (the simulation has {len(names)})")
    sim = cfg.simulation
    if is_text(cfg) and sim.partition != "natural":
        return _text_labs(cfg)[index]
    if sim.partition == "natural" and not sim.column:
        return load_lab(cfg, names[index])
    if sim.partition == "natural":
        table = load_csv(cfg.resolve(cfg.data.file), schema_for(cfg),
                         defer_imputation=_defer_imputation(cfg))
        name, rows = _natural_by_column(cfg)[index]
        # The pooled file's load report is not this virtual lab's: none is attached.
        return _lab_from_arrays(name, table.x[rows], table.y[rows], table.lines[rows], cfg,
                                None, table.raw.take(rows) if table.raw is not None else None)
    x, y, lines, raw = _pooled_table(cfg)
    if sim.partition == "iid":
        parts = partition.iid(len(y), sim.num_labs, cfg.seed)
    else:
        parts = partition.dirichlet(y, sim.num_labs, sim.alpha, cfg.seed)
    rows = parts[index]
    if len(rows) < 2:
        raise DataError(f"virtual lab {names[index]} got {len(rows)} rows from the partition; "
                        "use fewer labs or a larger alpha")
    return _lab_from_arrays(names[index], x[rows], y[rows], lines[rows], cfg, None,
                            raw.take(rows) if raw is not None else None)
