"""federation.toml: the one config loader.

A federation is described by one TOML file. Every key is validated; an unknown key
is an error (a typo must never be silently ignored), and each problem is reported
with its key path and the allowed values. All problems of a file are reported at
once, so a user fixes them in one go.

With no file, :func:`default_config` gives the built-in federation: the four
heart-disease hospitals, each lab holding its own hospital's file, secure
aggregation on.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlab.errors import ConfigError

STRATEGIES = ("fedavg", "fedprox", "fedadam")
OPTIMIZERS = ("sgd", "adam")
BUILTIN_MODELS = ("logistic", "mlp", "text")
PARTITIONS = ("natural", "iid", "dirichlet")
AGGREGATORS = ("mean", "median", "trimmed_mean", "krum")
BUILTIN_DATASETS = ("heart-disease", "rotten-tomatoes")
STANDARDIZE = ("federated", "range")
# Chosen on validation rows (tests/test_prep.py, README "Federated preprocessing").
DEFAULT_STANDARDIZE = "federated"
TEXT_DATASETS = ("rotten-tomatoes",)  # labelled texts: token ids through a federated vocabulary
LAB_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MODEL_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class TrainingConfig:
    """How each lab trains locally in a round."""

    local_epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 0.05
    optimizer: str = "sgd"


@dataclass(frozen=True)
class StrategyConfig:
    """How the server turns the aggregate update into the next global model."""

    name: str = "fedavg"
    mu: float = 0.0  # FedProx proximal weight
    server_learning_rate: float = 1.0  # FedAdam (and a damped FedAvg when < 1)
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3


@dataclass(frozen=True)
class ModelConfig:
    """Which Keras model every lab trains."""

    name: str = "logistic"
    hidden: tuple[int, ...] = (32,)
    options: Mapping[str, Any] = field(default_factory=dict)
    # The text model: token ids (padded to sequence_length) -> Embedding(vocab_size + 2 rows,
    # embedding_dim) -> average -> Dense sigmoid. vocab_size is also how many buckets the
    # federated vocabulary selects.
    embedding_dim: int = 16
    sequence_length: int = 40
    vocab_size: int = 10_000


@dataclass(frozen=True)
class LabConfig:
    """A lab of the federation and, where known, its data file."""

    name: str
    data: str = ""  # path, "builtin:<hospital>", or "" (given at the lab with --data)


@dataclass(frozen=True)
class SimulationConfig:
    """How `fedlab simulate` spreads data over virtual labs and runs them."""

    partition: str = "natural"
    num_labs: int = 0  # 0: one virtual lab per configured lab
    alpha: float = 0.5
    column: str = ""
    cpus_per_lab: float = 1.0
    ray_address: str = ""
    baselines: bool = True


@dataclass(frozen=True)
class DataConfig:
    """What the labs' data looks like and how it is split."""

    dataset: str = ""  # a built-in data set name, or "" for a schema given here
    schema: Mapping[str, Any] = field(default_factory=dict)  # [data] schema keys (checked by fedlab.data)
    file: str = ""  # one pooled file to partition in simulation
    test_fraction: float = 0.25
    validation_fraction: float = 0.0
    # Numeric columns: "federated" = standardised with the mean and standard deviation of
    # every lab's training rows (computed by secure aggregation before round 1, fedlab.prep);
    # "range" = scaled to [0, 1] by the schema's declared min/max.
    standardize: str = DEFAULT_STANDARDIZE
    # Text data sets: the federated vocabulary (hashed token buckets, see fedlab.data.text).
    vocabulary_min_labs: int = 2  # a bucket enters only if this many labs hold a token in it
    vocabulary_buckets: int = 2**18  # hash buckets a lab counts its tokens into


@dataclass(frozen=True)
class ServerConfig:
    """Where the aggregation server listens (deployment)."""

    address: str = "127.0.0.1:9092"
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class RobustnessConfig:
    """What the server accepts and how it combines updates it can see (plain mode)."""

    aggregator: str = "mean"  # mean | median | trimmed_mean | krum (the last three: plain only)
    trim_fraction: float = 0.1  # trimmed_mean: fraction cut from each end per coordinate
    byzantine: int = 1  # krum: number of labs that may be hostile
    max_update_norm: float = 1e4  # L2 bound on an update (plain) or the aggregate (secure)
    max_message_mb: float = 512.0  # a larger update is refused before it is decoded


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy (off by default)."""

    mode: str = "off"  # off | record (DP-SGD at each lab) | lab (clipped, noised updates)
    epsilon: float = 1.0  # target epsilon over the whole run (calibrates the noise)
    delta: float = 1e-5
    clip: float = 1.0  # L2 bound: per example (record) or per update (lab)
    noise_multiplier: float = 0.0  # > 0: use this instead of calibrating; epsilon is the budget
    accountant: str = "rdp"  # rdp | pld (dp-accounting)


@dataclass(frozen=True)
class FederationConfig:
    """The whole, validated federation.toml."""

    name: str = "four-hospitals"
    rounds: int = 20
    min_labs: int = 2
    seed: int = 0
    secure: bool = True
    stage_timeout: float = 120.0
    training: TrainingConfig = field(default_factory=TrainingConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    labs: tuple[LabConfig, ...] = ()
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    source: str = ""  # the TOML text this was parsed from ("" for the built-in default)
    base_dir: str = ""  # folder relative data paths are resolved against

    def lab_names(self) -> tuple[str, ...]:
        return tuple(lab.name for lab in self.labs)

    def resolve(self, path: str) -> Path:
        """Resolve a data path from the config against the config file's folder."""
        p = Path(path).expanduser()
        if not p.is_absolute() and self.base_dir:
            p = Path(self.base_dir) / p
        return p

    def to_toml(self) -> str:
        """The config as TOML (the source text if it came from a file)."""
        return self.source or DEFAULT_TOML


# The built-in federation. Choices (strategy, rounds, local steps) were picked on
# validation rows carved from each hospital's training rows; see
# benchmarks/tune_heart.py and the README.
DEFAULT_TOML = """\
# fedlab built-in federation: the four UCI heart-disease hospitals, each lab
# holding only its own hospital's file (published FLamby train/test split).
[federation]
name = "four-hospitals"
rounds = 30
min_labs = 2
seed = 0
secure = true

[training]
local_epochs = 3
batch_size = 16
learning_rate = 0.1
optimizer = "sgd"

[strategy]
name = "fedadam"
server_learning_rate = 0.03

[model]
name = "logistic"

[data]
dataset = "heart-disease"

[[labs]]
name = "cleveland"
data = "builtin:cleveland"

[[labs]]
name = "hungary"
data = "builtin:hungary"

[[labs]]
name = "switzerland"
data = "builtin:switzerland"

[[labs]]
name = "va"
data = "builtin:va"
"""


class _Errors:
    """Collects every problem of a file, so all are reported at once."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.items: list[str] = []

    def add(self, key: str, msg: str) -> None:
        self.items.append(f"{key}: {msg}")

    def raise_if_any(self) -> None:
        if self.items:
            lines = "\n  - ".join(self.items)
            raise ConfigError(f"{self.where} has {len(self.items)} problem(s):\n  - {lines}")


_Check = Callable[[Any], str | None]


def _take(
    errs: _Errors,
    table: Mapping[str, Any],
    prefix: str,
    spec: Mapping[str, tuple[type | tuple[type, ...], Any, _Check | None]],
) -> dict[str, Any]:
    """Validate one TOML table against a spec {key: (types, default, check)}."""
    out: dict[str, Any] = {}
    for key in table:
        if key not in spec:
            allowed = ", ".join(sorted(spec))
            errs.add(f"{prefix}{key}", f"unknown key; allowed keys here: {allowed}")
    for key, (types, default, check) in spec.items():
        if key not in table:
            out[key] = default
            continue
        value = table[key]
        # bool is an int in Python; never accept it where a number is meant.
        if isinstance(value, bool) and bool not in _as_tuple(types):
            errs.add(f"{prefix}{key}", f"expected {_type_names(types)}, got a boolean")
            continue
        if not isinstance(value, types):
            errs.add(
                f"{prefix}{key}", f"expected {_type_names(types)}, got {type(value).__name__}"
            )
            continue
        if check is not None:
            problem = check(value)
            if problem:
                errs.add(f"{prefix}{key}", problem)
                continue
        out[key] = value
    return out


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _type_names(types: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "a list", dict: "a table"}
    return " or ".join(names.get(t, t.__name__) for t in _as_tuple(types))


def _positive(v: float) -> str | None:
    return None if v > 0 else f"must be > 0, got {v}"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else f"must be >= 0, got {v}"


def _one_of(options: tuple[str, ...]) -> _Check:
    def check(v: str) -> str | None:
        return None if v in options else f"{v!r} is not allowed; use one of: {', '.join(options)}"

    return check


def _fraction(v: float) -> str | None:
    return None if 0 <= v < 1 else f"must be in [0, 1), got {v}"


def _model_name(v: str) -> str | None:
    if v in BUILTIN_MODELS or MODEL_REF.match(v):
        return None
    return (f"{v!r} is not a model; use one of: {', '.join(BUILTIN_MODELS)}, "
            "or your own builder as 'module:function'")


def _hidden(v: list[Any]) -> str | None:
    if not v or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in v):
        return "must be a non-empty list of positive integers, e.g. [64, 32]"
    return None


def _hosts(v: list[Any]) -> str | None:
    if not v or not all(isinstance(h, str) and h for h in v):
        return 'must be a non-empty list of host names or addresses, e.g. ["lab-server.example.org"]'
    return None


def _address(v: str) -> str | None:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{v!r} is not host:port, e.g. \"aggregator.example.org:9092\""
    return None


def parse_config(text: str, *, where: str = "federation.toml", base_dir: str = "") -> FederationConfig:
    """Parse and validate federation.toml text; raises ConfigError listing every problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}. Fix the syntax and try again.") from exc
    errs = _Errors(where)
    sections = ("federation", "training", "strategy", "model", "data", "labs", "simulation",
                "server", "robustness", "privacy")
    for key in raw:
        if key not in sections:
            errs.add(key, f"unknown section; allowed: {', '.join(sections)}")

    def table(name: str) -> Mapping[str, Any]:
        value = raw.get(name, {})
        if not isinstance(value, dict):
            errs.add(name, "must be a table, e.g. [" + name + "]")
            return {}
        return value

    fed = _take(errs, table("federation"), "federation.", {
        "name": (str, "federation", lambda v: None if v.strip() else "must not be empty"),
        "rounds": (int, 20, lambda v: None if 1 <= v <= 100_000 else "must be in 1..100000"),
        "min_labs": (int, 2, lambda v: None if v >= 1 else "must be >= 1"),
        "seed": (int, 0, None),
        "secure": (bool, True, None),
        "stage_timeout": ((int, float), 120.0, _positive),
    })
    tr = _take(errs, table("training"), "training.", {
        "local_epochs": (int, 1, lambda v: None if v >= 1 else "must be >= 1"),
        "batch_size": (int, 16, lambda v: None if v >= 1 else "must be >= 1"),
        "learning_rate": ((int, float), 0.05, _positive),
        "optimizer": (str, "sgd", _one_of(OPTIMIZERS)),
    })
    st = _take(errs, table("strategy"), "strategy.", {
        "name": (str, "fedavg", _one_of(STRATEGIES)),
        "mu": ((int, float), 0.0, _non_negative),
        "server_learning_rate": ((int, float), 1.0, _positive),
        "beta1": ((int, float), 0.9, _fraction),
        "beta2": ((int, float), 0.99, _fraction),
        "tau": ((int, float), 1e-3, _positive),
    })
    if st.get("name") == "fedprox" and "mu" in table("strategy") and st.get("mu", 0) == 0:
        errs.add("strategy.mu", "fedprox needs mu > 0 (e.g. 0.01); with mu = 0 use fedavg")
    if st.get("name") == "fedprox" and "mu" not in table("strategy"):
        st["mu"] = 0.01
    if st.get("name") == "fedadam" and "server_learning_rate" not in table("strategy"):
        st["server_learning_rate"] = 0.01
    mo_raw = dict(table("model"))
    mo = _take(errs, mo_raw, "model.", {
        "name": (str, "logistic", _model_name),
        "hidden": (list, [32], _hidden),
        "options": (dict, {}, None),
        "embedding_dim": (int, 16, lambda v: None if 1 <= v <= 4096 else "must be in 1..4096"),
        "sequence_length": (int, 40, lambda v: None if 1 <= v <= 10_000 else
                            "must be in 1..10000 (tokens kept per text)"),
        "vocab_size": (int, 10_000, lambda v: None if 1 <= v <= 1_000_000 else
                       "must be in 1..1000000"),
    })
    text_keys = [k for k in ("embedding_dim", "sequence_length", "vocab_size") if k in mo_raw]
    if text_keys and mo.get("name") in ("logistic", "mlp"):
        errs.add(f"model.{text_keys[0]}", f"only the text model uses it (model.name = "
                 f"{mo['name']!r}); remove it or set name = \"text\"")
    da_raw = dict(table("data"))
    schema_keys = ("missing", "missing_policy", "header", "columns")
    schema = {k: da_raw.pop(k) for k in schema_keys if k in da_raw}
    da = _take(errs, da_raw, "data.", {
        "dataset": (str, "", lambda v: None if v in BUILTIN_DATASETS or not v else
                    f"{v!r} is not a built-in data set; use one of: {', '.join(BUILTIN_DATASETS)}"
                    ", or describe your columns under [[data.columns]]"),
        "file": (str, "", None),
        "test_fraction": ((int, float), 0.25, lambda v: None if 0 < v < 1 else
                          f"must be in (0, 1), got {v}"),
        "validation_fraction": ((int, float), 0.0, _fraction),
        "standardize": (str, DEFAULT_STANDARDIZE, _one_of(STANDARDIZE)),
        "vocabulary_min_labs": (int, 2, lambda v: None if v >= 1 else "must be >= 1"),
        "vocabulary_buckets": (int, 2**18, lambda v: None if 1 <= v <= 2**24 else
                               "must be in 1..16777216 (2^18 = 262144 is a good size)"),
    })
    text_data = da.get("dataset") in TEXT_DATASETS
    for key in ("vocabulary_min_labs", "vocabulary_buckets"):
        if key in da_raw and not text_data:
            errs.add(f"data.{key}", "only a text data set (dataset = \"rotten-tomatoes\") has a "
                     "vocabulary; remove it")
    if text_data and mo.get("name") in ("logistic", "mlp"):
        errs.add("model.name", f"the text data set {da['dataset']!r} needs a model that reads "
                 "token ids: set name = \"text\" (or your own builder 'module:function')")
    if mo.get("name") == "text" and da.get("dataset") not in TEXT_DATASETS:
        errs.add("model.name", "the text model reads token ids of a text data set; use it with "
                 "dataset = \"rotten-tomatoes\", or use logistic / mlp for table data")
    if da.get("dataset") and schema.get("columns"):
        errs.add("data.columns", f"the built-in data set {da['dataset']!r} has its own schema; "
                 "remove [[data.columns]] or remove data.dataset")
    if text_data and "standardize" in da_raw:
        errs.add("data.standardize", "texts have no numeric columns to standardise; remove it")
    if da.get("dataset"):
        for key in ("missing", "header") + (("missing_policy",) if text_data else ()):
            if key in schema:
                errs.add(f"data.{key}", f"the built-in data set {da['dataset']!r} has its own "
                         "schema; remove it")
        policy = schema.get("missing_policy")
        if policy is not None and not text_data and policy not in ("drop", "impute"):
            errs.add("data.missing_policy", f"{policy!r} is not allowed; use one of: drop, impute")
    if not da.get("dataset") and "columns" not in schema:
        errs.add("data", 'needs either a built-in dataset ("heart-disease", "rotten-tomatoes") '
                 "or a schema: [[data.columns]] tables with name and type")
    sim = _take(errs, table("simulation"), "simulation.", {
        "partition": (str, "natural", _one_of(PARTITIONS)),
        "num_labs": (int, 0, lambda v: None if v >= 0 else "must be >= 0"),
        "alpha": ((int, float), 0.5, _positive),
        "column": (str, "", None),
        "cpus_per_lab": ((int, float), 1.0, _positive),
        "ray_address": (str, "", None),
        "baselines": (bool, True, None),
    })
    srv = _take(errs, table("server"), "server.", {
        "address": (str, "127.0.0.1:9092", _address),
        "hosts": (list, ["localhost", "127.0.0.1"], _hosts),
    })

    rb = _take(errs, table("robustness"), "robustness.", {
        "aggregator": (str, "mean", _one_of(AGGREGATORS)),
        "trim_fraction": ((int, float), 0.1, lambda v: None if 0 <= v < 0.5 else
                          f"must be in [0, 0.5), got {v}"),
        "byzantine": (int, 1, lambda v: None if v >= 0 else "must be >= 0"),
        "max_update_norm": ((int, float), 1e4, _positive),
        "max_message_mb": ((int, float), 512.0, _positive),
    })
    if rb.get("aggregator", "mean") != "mean" and fed.get("secure", True):
        errs.add("robustness.aggregator", f"{rb['aggregator']!r} needs each lab's update, which "
                 "secure aggregation hides from the server; set federation.secure = false "
                 "(plain mode, for trusted settings) or use aggregator = \"mean\"")

    pv = _take(errs, table("privacy"), "privacy.", {
        "mode": (str, "off", _one_of(("off", "record", "lab"))),
        "epsilon": ((int, float), 1.0, _positive),
        "delta": ((int, float), 1e-5, lambda v: None if 0 < v < 1 else f"must be in (0, 1), got {v}"),
        "clip": ((int, float), 1.0, _positive),
        "noise_multiplier": ((int, float), 0.0, _non_negative),
        "accountant": (str, "rdp", _one_of(("rdp", "pld"))),
    })
    if pv.get("mode", "off") != "off" and not text_data:
        # The federated feature statistics are exact sums with no noise and no accounting:
        # under DP they would leak what the epsilon claims to protect.
        if "standardize" in da_raw and da.get("standardize") == "federated":
            errs.add("data.standardize", "federated standardisation shares exact sums of every "
                     "lab's training rows, which differential privacy does not cover; use "
                     "standardize = \"range\" with [privacy], or turn privacy off")
        elif "standardize" not in da_raw:
            da["standardize"] = "range"  # the default, without statistics, under DP
        if schema.get("missing_policy") == "impute":
            errs.add("data.missing_policy", "mean imputation uses the federation's exact "
                     "column means, which differential privacy does not cover; use "
                     "missing_policy = \"drop\" with [privacy], or turn privacy off")
    if pv.get("mode") == "lab" and not fed.get("secure", True):
        errs.add("privacy.mode", "lab-level noise is split across labs and relies on secure "
                 "aggregation to hide each share; set federation.secure = true or use "
                 "mode = \"record\"")

    labs: list[LabConfig] = []
    raw_labs = raw.get("labs", [])
    if not isinstance(raw_labs, list):
        errs.add("labs", "must be an array of tables: [[labs]] name = ... data = ...")
        raw_labs = []
    seen: set[str] = set()
    for i, entry in enumerate(raw_labs):
        if not isinstance(entry, dict):
            errs.add(f"labs[{i}]", "must be a table with name and data")
            continue
        lab = _take(errs, entry, f"labs[{i}].", {
            "name": (str, None, lambda v: None if LAB_NAME.match(v) else
                     f"{v!r} is not a lab name: use lower-case letters, digits, '-' and '_'"),
            "data": (str, "", None),
        })
        if "name" not in entry:
            errs.add(f"labs[{i}].name", "is required")
            continue
        name = lab.get("name")
        if name is None:
            continue
        if name in seen:
            errs.add(f"labs[{i}].name", f"lab {name!r} is listed twice")
        seen.add(name)
        labs.append(LabConfig(name=name, data=lab.get("data", "")))

    if da.get("dataset") == "heart-disease" and not raw_labs:
        labs = [LabConfig(h, f"builtin:{h}") for h in ("cleveland", "hungary", "switzerland", "va")]
    partition = sim.get("partition", "natural")
    if text_data and partition == "natural" and not labs:
        errs.add("simulation.partition", f"the {da['dataset']!r} texts have no natural labs; "
                 "spread them over virtual labs with partition = \"dirichlet\" (label skew) or "
                 "\"iid\" and num_labs = 5, or list [[labs]] with their own text files")
    elif text_data and sim.get("column"):
        errs.add("simulation.column", f"the {da['dataset']!r} data set is spread by partition "
                 "= \"dirichlet\" or \"iid\"; remove simulation.column")
    elif partition == "natural" and sim.get("column"):
        pass  # labs come from the column's values at load time
    elif not labs and not ((da.get("file") or text_data) and sim.get("num_labs", 0) > 0):
        errs.add("labs", "no labs: add [[labs]] tables (name, data), or in simulation give "
                 "data.file with simulation.partition and simulation.num_labs")
    if partition in ("iid", "dirichlet") and sim.get("num_labs", 0) < 1:
        errs.add("simulation.num_labs", f"partition {partition!r} needs num_labs >= 1")
    if partition in ("iid", "dirichlet") and not da.get("file") and not da.get("dataset"):
        errs.add("data.file", f"partition {partition!r} spreads one pooled file: set data.file")
    n_labs = sim.get("num_labs") or len(labs)
    if n_labs and fed.get("min_labs", 2) > n_labs:
        errs.add("federation.min_labs", f"is {fed.get('min_labs')} but the federation has only "
                 f"{n_labs} labs")
    if text_data and n_labs and da.get("vocabulary_min_labs", 2) > n_labs:
        errs.add("data.vocabulary_min_labs", f"is {da.get('vocabulary_min_labs')} but the "
                 f"federation has only {n_labs} labs, so no token could enter the vocabulary; "
                 f"use a value in 1..{n_labs}")

    if not errs.items and schema and not da.get("dataset"):
        # The schema's own keys are checked by the data package (same error style).
        from fedlab.data.schema import Schema

        try:
            Schema.from_dict(schema, where="data")
        except ConfigError as exc:
            errs.add("data", str(exc))
    errs.raise_if_any()

    return FederationConfig(
        name=fed["name"],
        rounds=fed["rounds"],
        min_labs=fed["min_labs"],
        seed=fed["seed"],
        secure=fed["secure"],
        stage_timeout=float(fed["stage_timeout"]),
        training=TrainingConfig(
            local_epochs=tr["local_epochs"], batch_size=tr["batch_size"],
            learning_rate=float(tr["learning_rate"]), optimizer=tr["optimizer"],
        ),
        strategy=StrategyConfig(
            name=st["name"], mu=float(st["mu"]),
            server_learning_rate=float(st["server_learning_rate"]),
            beta1=float(st["beta1"]), beta2=float(st["beta2"]), tau=float(st["tau"]),
        ),
        model=ModelConfig(name=mo["name"], hidden=tuple(mo["hidden"]), options=mo["options"],
                          embedding_dim=mo["embedding_dim"],
                          sequence_length=mo["sequence_length"], vocab_size=mo["vocab_size"]),
        data=DataConfig(
            dataset=da["dataset"], schema=schema, file=da["file"],
            test_fraction=float(da["test_fraction"]),
            validation_fraction=float(da["validation_fraction"]),
            standardize=da["standardize"],
            vocabulary_min_labs=da["vocabulary_min_labs"],
            vocabulary_buckets=da["vocabulary_buckets"],
        ),
        labs=tuple(labs),
        simulation=SimulationConfig(
            partition=sim["partition"], num_labs=sim["num_labs"], alpha=float(sim["alpha"]),
            column=sim["column"], cpus_per_lab=float(sim["cpus_per_lab"]),
            ray_address=sim["ray_address"], baselines=sim["baselines"],
        ),
        server=ServerConfig(address=srv["address"], hosts=tuple(srv["hosts"])),
        robustness=RobustnessConfig(
            aggregator=rb["aggregator"], trim_fraction=float(rb["trim_fraction"]),
            byzantine=rb["byzantine"], max_update_norm=float(rb["max_update_norm"]),
            max_message_mb=float(rb["max_message_mb"]),
        ),
        privacy=PrivacyConfig(
            mode=pv["mode"], epsilon=float(pv["epsilon"]), delta=float(pv["delta"]),
            clip=float(pv["clip"]), noise_multiplier=float(pv["noise_multiplier"]),
            accountant=pv["accountant"],
        ),
        source=text,
        base_dir=base_dir,
    )


def load_config(path: str | Path) -> FederationConfig:
    """Read and validate a federation.toml file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: no such file. Give the path to your federation.toml, "
                          "or run without one for the built-in four-hospital federation.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot be read as UTF-8 text ({exc}).") from exc
    return parse_config(text, where=str(p), base_dir=str(p.resolve().parent))


def default_config() -> FederationConfig:
    """The built-in federation (four heart-disease hospitals)."""
    return parse_config(DEFAULT_TOML, where="built-in federation")


OVERRIDABLE = {"rounds": int, "secure": bool, "min_labs": int, "seed": int}


def apply_overrides(cfg: FederationConfig, overrides: Mapping[str, object]) -> FederationConfig:
    """Command-line overrides of top-level [federation] values (e.g. --rounds, --plain)."""
    import dataclasses

    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        kind = OVERRIDABLE.get(key)
        if kind is None or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"cannot override {key!r} with {value!r}; overridable: "
                              + ", ".join(OVERRIDABLE))
        if key == "rounds" and not 1 <= int(value) <= 100_000:  # type: ignore[call-overload]
            raise ConfigError(f"--rounds must be in 1..100000, got {value}")
        changes[key] = value
    return dataclasses.replace(cfg, **changes) if changes else cfg
