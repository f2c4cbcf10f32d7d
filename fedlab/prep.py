"""Federated preprocessing steps: statistics of all labs' data, summed before training.

Some preprocessing needs every lab's data: feature means and spreads to standardise
with, the federation's missing-value means and category frequencies to impute with,
a text vocabulary. fedlab computes them the way it aggregates updates: each lab turns
its *own raw data* into a vector of integers, the vectors are summed (through secure
aggregation when ``federation.secure = true``, so the server learns only the sum), the
server turns the sum into a small JSON result, and every lab applies that result to
its own rows before round 1. No row ever leaves a lab.

A step
======

A :class:`Step` is defined once, here or in any module that calls :func:`register`:

- ``name``: e.g. ``"feature-stats"``, ``"vocabulary"`` (recorded in the run folder);
- ``segments(cfg)``: the layout of the lab's vector, the same at the server and at
  every lab: a tuple of :class:`Segment` (name, length, ``bits``: a bound on every
  value's magnitude at one lab, ``|v| < 2**bits``, and whether values may be negative);
- ``contribute(raw, cfg)``: at the lab, from its raw data (``raw``, see below) to
  ``{segment name: integers}`` (int arrays, or object arrays of Python ints for values
  beyond 64 bits). Integers only: sums of integers come out exact, in plain and in
  secure mode alike. A value at or beyond ``2**bits`` is refused at the lab
  (:class:`~fedlab.errors.ProtocolError`, naming the lab, step, segment and index);
  nothing ever wraps;
- ``finish(sums, cfg)``: at the server, from ``{segment name: summed integers}`` (int64,
  or object arrays of Python ints for wide segments) to the result, a JSON-able dict;
  raise :class:`~fedlab.errors.ConfigError` or ``DataError`` to stop the run with a
  message (e.g. no token held by enough labs);
- ``apply(raw, data, result, cfg)``: at the lab, from its raw data and the result to the
  :class:`~fedlab.data.LabData` it trains and evaluates on (``data`` is what the step
  before produced, ``None`` for the first step).

``raw`` is whatever the lab's loader produced: for tabular data sets a ``LabData``
whose ``raw_train/raw_val/raw_test`` keep the parsed rows before imputation and
scaling (:class:`~fedlab.data.csv.RawRows`); for text data sets a
:class:`~fedlab.data.text.TextLab` (texts kept raw until the vocabulary is known).
The lab's :class:`~client.lab.LabWorker` keeps ``raw`` and replaces its training arrays
with the output of the steps.

Which steps a run uses is decided by :func:`steps_for` from the config:
``feature-stats`` for tabular data when ``data.standardize = "federated"`` or the
schema's ``missing_policy = "impute"``; ``vocabulary`` for text data sets.

How a step's vector travels
===========================

The steps of a run are concatenated into one vector, so all of them cost one sum.
Each integer is split into *limbs* of ``b`` bits (the sign on every limb), so any
width travels exactly through the 32-bit ring of secure aggregation: ``b`` is the
largest width whose sum over every lab of the roster cannot wrap
(:func:`limb_bits`: 22 bits for 2 labs, at least 20 up to 8 labs, 13 for 1000). The server recombines the
summed limbs with Python integers. The secure sum uses its own protocol run id
(``<run>#prep``, :func:`prep_run_id`) and its own sessions (own keys, seeds, masks,
signatures), so nothing is shared with the training rounds; the encoder is the one
of :mod:`fedlab.secure.encoding` with weight 1 and ``clip = 2**b - 1``, and the lab
checks every limb is within the clip before encoding (an encoder clip would be a
silent change of value).

The exchanges are in :mod:`server.prep` (server) and :mod:`client.prep` (lab).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from fedlab.config import FederationConfig
from fedlab.errors import ConfigError, DataError, ProtocolError

log = logging.getLogger(__name__)

FEATURE_STATS = "feature-stats"
VOCABULARY = "vocabulary"
MAX_LIMB_BITS = 24


# --------------------------------------------------------------------------- the API
@dataclass(frozen=True)
class Segment:
    """A named run of integers in a lab's vector: ``length`` values, each ``|v| < 2**bits``."""

    name: str
    length: int
    bits: int
    signed: bool = False

    def __post_init__(self) -> None:
        if not self.name or self.length < 0 or not 1 <= self.bits <= 4096:
            raise ConfigError(f"preprocessing segment {self.name!r}: length {self.length} and "
                              f"bits {self.bits} (1..4096) do not describe a segment")


@dataclass(frozen=True)
class Step:
    """One federated preprocessing step (see the module docstring)."""

    name: str
    segments: Callable[[FederationConfig], tuple[Segment, ...]]
    contribute: Callable[[Any, FederationConfig], Mapping[str, Any]]
    finish: Callable[[Mapping[str, np.ndarray], FederationConfig], dict[str, Any]]
    apply: Callable[[Any, Any, Mapping[str, Any], FederationConfig], Any]
    summary: Callable[[Mapping[str, Any]], str] = lambda result: ""


STEPS: dict[str, Step] = {}


def register(step: Step) -> Step:
    """Make ``step`` known by its name (a second step of the same name replaces it)."""
    STEPS[step.name] = step
    return step


def get_step(name: str) -> Step:
    try:
        return STEPS[name]
    except KeyError:
        raise ConfigError(f"unknown preprocessing step {name!r} (known: "
                          f"{', '.join(sorted(STEPS))})") from None


def steps_for(cfg: FederationConfig) -> tuple[str, ...]:
    """The preprocessing steps a run of ``cfg`` computes before round 1, in order."""
    from fedlab.task import is_text, schema_for

    if is_text(cfg):
        return (VOCABULARY,)
    if cfg.data.standardize == "federated" or schema_for(cfg).missing_policy == "impute":
        return (FEATURE_STATS,)
    return ()


# --------------------------------------------------------------------------- transport
def limb_bits(max_labs: int) -> int:
    """Bits per limb: the widest ``b`` (at most 24) whose sum over ``max_labs`` labs, with
    weight 1 and ``clip = 2**b - 1``, fits the secure ring with 8 fractional bits to spare."""
    from fedlab.secure.encoding import FixedPointEncoder

    for b in range(MAX_LIMB_BITS, 0, -1):
        try:
            enc = FixedPointEncoder(float(2**b - 1), 1, max_labs)
        except ProtocolError:
            continue
        if enc.frac_bits >= 0:
            return b
    raise ConfigError(f"federated preprocessing: {max_labs} labs leave no room in the 32-bit "
                      "secure ring for even one bit a lab")


def prep_run_id(run_id: str) -> str:
    """The protocol run id of a run's preprocessing sum (never the training rounds' id)."""
    return f"{run_id}#prep"


def prep_params(run_id: str, labs: Sequence[str], min_labs: int) -> Any:
    """Secure-aggregation parameters of the preprocessing sum of run ``run_id``: the
    training rounds' graph and threshold, its own run id, weight 1, limb-sized clip."""
    from fedlab.updates import secagg_params

    base = secagg_params(prep_run_id(run_id), tuple(labs), min_labs)
    return dataclasses.replace(base, clip=float(2 ** limb_bits(base.max_labs) - 1), max_weight=1)


def prep_codec(cfg: FederationConfig, names: Sequence[str], roster_size: int) -> IntCodec:
    """The limb layout of a run's preprocessing vector (plain and secure mode alike)."""
    return IntCodec(layout(cfg, names), limb_bits(max(2, roster_size)))


class IntCodec:
    """Integers of the segments <-> one vector of signed limbs (int64, ``|limb| < 2**b``).

    Layout: segment after segment; within a segment, limb ``k`` of every value, then
    limb ``k + 1``; value ``v = sign(v) * sum_k |limb_k| * 2**(k*b)``.
    """

    def __init__(self, segments: Sequence[Segment], bits_per_limb: int) -> None:
        names = [s.name for s in segments]
        if len(set(names)) != len(names):
            raise ConfigError(f"preprocessing: segment names repeat in {names}")
        if not 1 <= bits_per_limb <= 62:
            raise ConfigError(f"preprocessing: {bits_per_limb} bits a limb is not possible")
        self.segments = tuple(segments)
        self.b = bits_per_limb
        self.limbs = {s.name: max(1, math.ceil(s.bits / bits_per_limb)) for s in segments}
        self.length = sum(s.length * self.limbs[s.name] for s in segments)

    def encode(self, values: Mapping[str, Any], who: str) -> np.ndarray:
        """The limb vector of one lab's values; ProtocolError for anything out of bounds."""
        extra = sorted(set(values) - {s.name for s in self.segments})
        if extra:
            raise ProtocolError(f"{who}: unexpected preprocessing segment(s) {extra}")
        out = np.zeros(self.length, dtype=np.int64)
        pos = 0
        mask = (1 << self.b) - 1
        for seg in self.segments:
            if seg.name not in values:
                raise ProtocolError(f"{who}: no values for segment {seg.name!r}")
            arr = _integers(values[seg.name], f"{who}, segment {seg.name!r}")
            if arr.shape != (seg.length,):
                raise ProtocolError(f"{who}, segment {seg.name!r}: {arr.size} values, the "
                                    f"federation's layout has {seg.length}; check that the lab "
                                    "uses the federation's config and schema")
            if arr.size:
                if not seg.signed and (arr < 0).any():
                    i = int(np.flatnonzero(arr < 0)[0])
                    raise ProtocolError(f"{who}, segment {seg.name!r}[{i}]: negative value "
                                        f"{arr[i]} where only counts >= 0 are allowed")
                mag = np.abs(arr)
                over = np.flatnonzero(mag >= (1 << seg.bits))
                if over.size:
                    i = int(over[0])
                    raise ProtocolError(
                        f"{who}, segment {seg.name!r}[{i}]: value {arr[i]} needs more than "
                        f"{seg.bits} bits; refused rather than wrapped in the federation's sum "
                        "(see the step's documentation for the range it takes)")
                sign = np.sign(arr)
            k_limbs = self.limbs[seg.name]
            for k in range(k_limbs):
                if arr.size:
                    limb = ((mag >> (k * self.b)) & mask) * sign
                    out[pos:pos + seg.length] = np.asarray(limb, dtype=np.int64)
                pos += seg.length
        return out

    def check(self, vec: np.ndarray, who: str) -> None:
        """A lab's limb vector as sent in plain mode (int32): right length and limb bounds."""
        if (not isinstance(vec, np.ndarray) or vec.dtype not in (np.int32, np.int64)
                or vec.shape != (self.length,)):
            raise ProtocolError(f"{who}: expected {self.length} integer limbs")
        if vec.size and int(np.abs(vec).max()) >= (1 << self.b):
            raise ProtocolError(f"{who}: a limb is outside (-2^{self.b}, 2^{self.b})")
        pos = 0
        for seg in self.segments:
            n = seg.length * self.limbs[seg.name]
            if not seg.signed and (vec[pos:pos + n] < 0).any():
                raise ProtocolError(f"{who}: negative limb in segment {seg.name!r}")
            pos += n

    def decode(self, total: np.ndarray, n_labs: int) -> dict[str, np.ndarray]:
        """The summed values of each segment from the summed limbs of ``n_labs`` labs."""
        if total.shape != (self.length,):
            raise ProtocolError(f"preprocessing sum: {total.shape} limbs, expected {self.length}")
        out: dict[str, np.ndarray] = {}
        pos = 0
        for seg in self.segments:
            k_limbs = self.limbs[seg.name]
            wide = seg.bits + max(1, n_labs).bit_length() > 62
            acc = np.zeros(seg.length, dtype=object if wide else np.int64)
            for k in range(k_limbs):
                part = total[pos:pos + seg.length]
                acc = acc + (part.astype(object) if wide else part) * (1 << (k * self.b))
                pos += seg.length
            bound = n_labs * (1 << seg.bits)
            if seg.length and (np.abs(acc) >= bound).any() or (not seg.signed and (acc < 0).any()):
                raise ProtocolError(f"preprocessing sum, segment {seg.name!r}: a value is "
                                    f"impossible for {n_labs} labs; the masks did not cancel")
            out[seg.name] = acc
        return out


def _integers(values: Any, what: str) -> np.ndarray:
    """A 1-D array of integers (int64, or object of Python ints), never floats."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ProtocolError(f"{what}: expected a 1-D list of integers, found shape {arr.shape}")
    if arr.dtype == object:
        if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in arr):
            raise ProtocolError(f"{what}: expected integers only")
        return np.array([int(v) for v in arr], dtype=object)
    if arr.dtype.kind == "u":
        if arr.size and int(arr.max()) >= 1 << 63:
            return np.array([int(v) for v in arr], dtype=object)
        return arr.astype(np.int64)
    if arr.dtype.kind == "i" or (arr.size == 0 and arr.dtype.kind == "f"):
        return arr.astype(np.int64)
    raise ProtocolError(f"{what}: expected integers, found {arr.dtype} (scale values to "
                        "integers in the step's contribute function)")


def layout(cfg: FederationConfig, names: Sequence[str]) -> tuple[Segment, ...]:
    """The segments of all ``names`` steps, each prefixed ``<step>/``."""
    out: list[Segment] = []
    for name in names:
        for seg in get_step(name).segments(cfg):
            out.append(dataclasses.replace(seg, name=f"{name}/{seg.name}"))
    return tuple(out)


def contribution(cfg: FederationConfig, names: Sequence[str], raw: Any, lab: str
                 ) -> dict[str, Any]:
    """The values of every step of ``names`` from one lab's raw data (layout of :func:`layout`)."""
    out: dict[str, Any] = {}
    for name in names:
        try:
            part = get_step(name).contribute(raw, cfg)
        except (DataError, ConfigError, ProtocolError) as exc:
            raise type(exc)(f"lab {lab}, preprocessing step {name!r}: {exc}") from None
        for key, value in part.items():
            out[f"{name}/{key}"] = value
    return out


def finish(cfg: FederationConfig, names: Sequence[str], sums: Mapping[str, np.ndarray]
           ) -> dict[str, dict[str, Any]]:
    """Each step's result from the summed values (keys as in :func:`layout`)."""
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        prefix = f"{name}/"
        mine = {k[len(prefix):]: v for k, v in sums.items() if k.startswith(prefix)}
        result = get_step(name).finish(mine, cfg)
        json.dumps(result)  # a result must be plain JSON (fails loudly here, not at the labs)
        results[name] = result
    return results


def apply_results(cfg: FederationConfig, raw: Any, results: Mapping[str, Mapping[str, Any]],
                  lab: str = "") -> Any:
    """The lab's training data: ``raw`` through every step's ``apply``, in the run's order."""
    names = steps_for(cfg)
    if set(results) != set(names):
        raise ProtocolError(
            f"lab {lab}: the server's preprocessing results are for steps {sorted(results)}, "
            f"this lab's config asks for {list(names)}; the lab and the server must use the "
            "same federation.toml")
    data = None
    for name in names:
        data = get_step(name).apply(raw, data, results[name], cfg)
    return data


def results_blob(results: Mapping[str, Mapping[str, Any]]) -> tuple[bytes, str]:
    """Canonical JSON bytes of the results and their SHA-256 (hex): what labs receive."""
    blob = json.dumps(results, sort_keys=True, separators=(",", ":"),
                      allow_nan=False).encode()
    return blob, hashlib.sha256(blob).hexdigest()


def contribution_digest(vec: np.ndarray, steps: str) -> bytes:
    """What a lab signs beside its plain-mode contribution (and the server verifies)."""
    from fedlab.updates import digest_update

    return digest_update(vec, {"steps": steps})


def parse_blob(blob: bytes, sha: str, lab: str = "") -> dict[str, dict[str, Any]]:
    if hashlib.sha256(blob).hexdigest() != sha:
        raise ProtocolError(f"lab {lab}: the preprocessing results do not match their hash")
    try:
        out = json.loads(blob)
    except ValueError as exc:
        raise ProtocolError(f"lab {lab}: preprocessing results are not JSON ({exc})") from None
    if not isinstance(out, dict) or not all(isinstance(v, dict) for v in out.values()):
        raise ProtocolError(f"lab {lab}: preprocessing results must map step names to tables")
    return out


def prepare_locally(cfg: FederationConfig, raws: Sequence[Any], names: Sequence[str] | None = None
                    ) -> tuple[list[Any], dict[str, dict[str, Any]]]:
    """Every step computed in the clear over labs held in one process (the simulation's
    baselines, benchmarks, tests): the same integers, sums and results as a federated
    run. Returns the labs' training data and the results."""
    names = steps_for(cfg) if names is None else tuple(names)
    if not names:
        return list(raws), {}
    lay = layout(cfg, names)
    totals: dict[str, Any] = {}
    for i, raw in enumerate(raws):
        values = contribution(cfg, names, raw, getattr(raw, "name", str(i)))
        codec = IntCodec(lay, 62)  # checks the values against the layout's bounds
        codec.encode(values, f"lab {getattr(raw, 'name', i)}")
        for key, v in values.items():
            arr = _integers(v, key).astype(object)
            totals[key] = arr if key not in totals else totals[key] + arr
    sums = {seg.name: _narrow(totals[seg.name], seg.bits + len(raws).bit_length())
            for seg in lay}
    results = finish(cfg, names, sums)
    data = [apply_results(cfg, raw, results, getattr(raw, "name", "")) for raw in raws]
    return data, results


def _narrow(values: np.ndarray, bits: int) -> np.ndarray:
    """Object integers as int64 when they fit (what :meth:`IntCodec.decode` gives)."""
    return values.astype(np.int64) if bits <= 62 else values


# --------------------------------------------------------------------------- feature-stats
# Numeric values travel as q = round(x * 2**F) (F per column: from the declared range so
# that |q| <= 2**40, else 20), sums of q and of q**2 as exact integers.
_Q_BITS = 62  # |q| < 2**62 at a lab, else refused
_ROW_BITS = 40  # rows a lab may have: < 2**40


def _tabular(cfg: FederationConfig) -> Any:
    from fedlab.task import schema_for

    return schema_for(cfg)


def frac_bits_of(column: Any) -> int:
    """Fixed-point fractional bits of a numeric column's values in the statistics."""
    if column.min is not None and column.max is not None:
        m = max(abs(float(column.min)), abs(float(column.max)))
        if m > 0:
            return max(0, min(60, 40 - math.ceil(math.log2(m))))
    return 20


def _stat_columns(schema: Any) -> tuple[list[Any], list[Any], list[Any]]:
    numeric = [c for c in schema.columns if c.type == "numeric"]
    categorical = [c for c in schema.columns if c.type == "categorical"]
    counted = [c for c in schema.columns if c.type != "ignore"]
    return numeric, categorical, counted


def _stats_segments(cfg: FederationConfig) -> tuple[Segment, ...]:
    numeric, categorical, counted = _stat_columns(_tabular(cfg))
    n_levels = sum(len(c.levels) for c in categorical)
    return (Segment("rows", 1, _ROW_BITS),
            Segment("count", len(numeric), _ROW_BITS),
            Segment("sum", len(numeric), _Q_BITS + _ROW_BITS, signed=True),
            Segment("sumsq", len(numeric), 2 * _Q_BITS + _ROW_BITS),
            Segment("levels", n_levels, _ROW_BITS),
            Segment("missing", len(counted), _ROW_BITS))


def _stats_contribute(raw: Any, cfg: FederationConfig) -> dict[str, Any]:
    from fedlab.data.csv import RawRows

    schema = _tabular(cfg)
    numeric, categorical, counted = _stat_columns(schema)
    rows = getattr(raw, "raw_train", None)
    if not isinstance(rows, RawRows):
        raise DataError("the lab's data keeps no raw rows (loaded without them); federated "
                        "feature statistics need the loader of fedlab.task")
    if rows.numeric.shape[1] != len(numeric) or rows.codes.shape[1] != len(categorical):
        raise DataError("the lab's raw rows do not have the schema's columns")
    count = np.zeros(len(numeric), dtype=np.int64)
    total = np.zeros(len(numeric), dtype=object)
    total_sq = np.zeros(len(numeric), dtype=object)
    for j, col in enumerate(numeric):
        v = rows.numeric[:, j]
        v = v[~np.isnan(v)]
        count[j] = v.size
        f = frac_bits_of(col)
        scaled = v * 2.0**f
        if v.size and float(np.abs(scaled).max()) >= 2.0**_Q_BITS:
            big = float(v[int(np.argmax(np.abs(scaled)))])
            raise DataError(
                f"column {col.name!r}: value {big:g} is too large for the federated statistics "
                f"(|value| < {2.0**(_Q_BITS - f):.3g} with {f} fractional bits); declare the "
                "column's min and max in the schema, or rescale it")
        q = np.rint(scaled)
        qi = [int(x) for x in q]
        total[j] = sum(qi)
        total_sq[j] = sum(x * x for x in qi)
    levels: list[int] = []
    for k, col in enumerate(categorical):
        codes = rows.codes[:, k]
        present = codes[codes >= 0]
        levels.extend(int(n) for n in np.bincount(present, minlength=len(col.levels)))
    missing = _missing_counts(raw, schema, counted)
    return {"rows": [len(rows)], "count": count, "sum": total, "sumsq": total_sq,
            "levels": levels, "missing": missing}


def _missing_counts(raw: Any, schema: Any, counted: list[Any]) -> list[int]:
    """Missing values per column in the lab's own file (the loader's report: rows dropped
    for a missing value plus values imputed), else in the lab's kept rows."""
    report = getattr(raw, "report", None)
    if report is not None and hasattr(report, "dropped_missing"):
        return [int(report.dropped_missing.get(c.name, 0)) + int(report.imputed.get(c.name, 0))
                for c in counted]
    from fedlab.data.csv import RawRows

    out = []
    parts = [p for p in (raw.raw_train, getattr(raw, "raw_val", None),
                         getattr(raw, "raw_test", None)) if isinstance(p, RawRows)]
    numeric_names = [c.name for c in schema.columns if c.type == "numeric"]
    categorical_names = [c.name for c in schema.columns if c.type == "categorical"]
    for c in counted:
        n = 0
        for p in parts:
            if c.name in numeric_names:
                n += int(np.isnan(p.numeric[:, numeric_names.index(c.name)]).sum())
            elif c.name in categorical_names:
                n += int((p.codes[:, categorical_names.index(c.name)] < 0).sum())
        out.append(n)
    return out


def _stats_finish(sums: Mapping[str, np.ndarray], cfg: FederationConfig) -> dict[str, Any]:
    schema = _tabular(cfg)
    numeric, categorical, counted = _stat_columns(schema)
    names, means, stds = [], [], []
    columns: dict[str, Any] = {}
    for j, col in enumerate(numeric):
        n, s, sq = int(sums["count"][j]), int(sums["sum"][j]), int(sums["sumsq"][j])
        if n <= 0:
            raise DataError(f"federated feature statistics: no lab has a value of column "
                            f"{col.name!r} in its training rows")
        f = frac_bits_of(col)
        mean = Fraction(s, n * (1 << f))
        var = Fraction(n * sq - s * s, n * n * (1 << (2 * f)))
        std = math.sqrt(max(var, Fraction(0)))
        names.append(col.name)
        means.append(float(mean))
        stds.append(std)
        columns[col.name] = {"count": n, "mean": float(mean), "std": std}
    categories: dict[str, dict[str, int]] = {}
    pos = 0
    for col in categorical:
        counts = [int(x) for x in sums["levels"][pos:pos + len(col.levels)]]
        pos += len(col.levels)
        categories[col.name] = {str(lv): c for lv, c in zip(col.levels, counts, strict=True)}
    missing = {c.name: int(m) for c, m in zip(counted, sums["missing"], strict=True)}
    return {"rows": int(sums["rows"][0]),
            "stats": {"names": names, "mean": means, "std": stds},
            "numeric": columns, "categories": categories, "missing": missing,
            "standardize": cfg.data.standardize, "missing_policy": schema.missing_policy}


def feature_stats_of(result: Mapping[str, Any]) -> Any:
    """The :class:`~fedlab.data.stats.FeatureStats` in a feature-stats result."""
    from fedlab.data.stats import FeatureStats

    st = result["stats"]
    return FeatureStats(names=tuple(st["names"]), mean=tuple(st["mean"]), std=tuple(st["std"]))


def _stats_apply(raw: Any, data: Any, result: Mapping[str, Any], cfg: FederationConfig) -> Any:
    from fedlab.data.csv import RawRows, encode_rows

    schema = _tabular(cfg)
    stats = feature_stats_of(result)
    mean, _ = stats.aligned(schema.numeric_names)
    fill_codes = []
    for col in (c for c in schema.columns if c.type == "categorical"):
        counts = [int(result["categories"][col.name][str(lv)]) for lv in col.levels]
        fill_codes.append(int(np.argmax(counts)))  # ties: the first level listed
    use = stats if cfg.data.standardize == "federated" else None
    out = {}
    for part in ("train", "val", "test"):
        rows = getattr(raw, f"raw_{part}")
        if not isinstance(rows, RawRows):
            raise DataError(f"lab {raw.name}: no raw {part} rows to preprocess")
        out[f"x_{part}"] = encode_rows(rows, schema, stats=use, fill_numeric=mean,
                                       fill_codes=np.asarray(fill_codes, dtype=np.int64),
                                       where=f"lab {raw.name} ({part} rows)",
                                       lines=getattr(raw, f"lines_{part}"))
    return dataclasses.replace(raw, **out)


def _stats_summary(result: Mapping[str, Any]) -> str:
    cols = ", ".join(f"{k} {v['mean']:.4g}±{v['std']:.3g}" for k, v in result["numeric"].items())
    return f"{result['rows']} training rows; {cols}"


register(Step(FEATURE_STATS, _stats_segments, _stats_contribute, _stats_finish, _stats_apply,
              _stats_summary))


# --------------------------------------------------------------------------- vocabulary
# Settings (fedlab.task.vocabulary_settings): data.vocabulary_buckets, model.vocab_size,
# data.vocabulary_min_labs, model.sequence_length.
_COUNT_BITS = 40  # a lab's tokens in one bucket: < 2**40


def _vocab_segments(cfg: FederationConfig) -> tuple[Segment, ...]:
    from fedlab.task import vocabulary_settings

    b = vocabulary_settings(cfg).buckets
    return (Segment("counts", b, _COUNT_BITS), Segment("presence", b, 1))


def _vocab_contribute(raw: Any, cfg: FederationConfig) -> dict[str, Any]:
    """Hashed token counts and presence of the lab's *training* texts.

    ``raw`` is the lab's :class:`~fedlab.data.text.TextLab` (anything with
    ``vocabulary_contribution(buckets)`` returning counts then presence), or a plain
    sequence of training texts."""
    from fedlab.data import text
    from fedlab.task import vocabulary_settings

    b = vocabulary_settings(cfg).buckets
    if hasattr(raw, "vocabulary_contribution"):
        vec = np.asarray(raw.vocabulary_contribution(b))
    else:
        vec = text.vocabulary_contribution(raw, b)
    if vec.shape != (2 * b,):
        raise DataError(f"vocabulary contribution of {vec.shape[0]} values, expected {2 * b}")
    return {"counts": vec[:b], "presence": vec[b:]}


def _vocab_finish(sums: Mapping[str, np.ndarray], cfg: FederationConfig) -> dict[str, Any]:
    """The selected buckets: held by >= min_labs labs, most tokens first (see
    :func:`fedlab.data.text.select_buckets`)."""
    from fedlab.data import text
    from fedlab.task import vocabulary_settings

    v = vocabulary_settings(cfg)
    counts = np.asarray(sums["counts"], dtype=np.int64)
    labs = np.asarray(sums["presence"], dtype=np.int64)
    selected = text.select_buckets(counts, labs, v.vocab_size, v.min_labs)
    return {"buckets": v.buckets, "vocab_size": v.vocab_size, "min_labs": v.min_labs,
            "selected": [int(x) for x in selected],
            "eligible": int((labs >= v.min_labs).sum()),
            "held": int((labs > 0).sum()), "tokens": int(counts.sum())}


def selected_buckets(result: Mapping[str, Any]) -> np.ndarray:
    """The federation's vocabulary (bucket ids, rank order) in a vocabulary result."""
    return np.asarray(result["selected"], dtype=np.int64)


def _vocab_apply(raw: Any, data: Any, result: Mapping[str, Any], cfg: FederationConfig) -> Any:
    from fedlab.task import encode_text_lab, vocabulary_settings

    if int(result["buckets"]) != vocabulary_settings(cfg).buckets:
        raise ProtocolError(f"the vocabulary was selected from {result['buckets']} buckets, this "
                            "lab's config counts into another number; use the federation's "
                            "federation.toml")
    return encode_text_lab(cfg, raw, selected_buckets(result))


def _vocab_summary(result: Mapping[str, Any]) -> str:
    return (f"{len(result['selected'])} buckets selected of {result['eligible']} held by >= "
            f"{result['min_labs']} labs ({result['held']} held by any lab)")


register(Step(VOCABULARY, _vocab_segments, _vocab_contribute, _vocab_finish, _vocab_apply,
              _vocab_summary))
