"""The job a fedlab run hands to its Flower apps.

The CLI writes one ``job.json`` per run and passes its path to ``flwr run`` as the
run config ``job``; the ServerApp and (in simulation) the ClientApp read it. It says
which federation, which run folder, and, in simulation, where the virtual labs'
identity keys are. It never holds a key itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedlab.config import FederationConfig, apply_overrides, parse_config
from fedlab.errors import ConfigError

MODES = ("simulation", "deployment")


@dataclass(frozen=True)
class Job:
    mode: str
    config_toml: str
    config_where: str
    base_dir: str
    run_dir: str
    labs: tuple[str, ...]  # the roster's labs (simulation: in partition order)
    roster: dict[str, str] = field(default_factory=dict)  # lab -> Ed25519 public key (hex)
    keys_dir: str = ""  # simulation only: <keys_dir>/<lab>.key
    resume: bool = False
    overrides: dict[str, object] = field(default_factory=dict)  # e.g. {"rounds": 5}
    synthetic_params: int = 0  # benchmarks only: labs send random updates of this size

    def config(self) -> FederationConfig:
        cfg = parse_config(self.config_toml, where=self.config_where, base_dir=self.base_dir)
        return apply_overrides(cfg, self.overrides)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))


def load_job(path: str | Path) -> Job:
    p = Path(path)
    try:
        raw = json.loads(p.read_text())
        raw["labs"] = tuple(raw["labs"])
        job = Job(**raw)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{p}: not a fedlab job file ({exc}); start runs with the fedlab "
                          "command, not flwr run directly") from exc
    if job.mode not in MODES:
        raise ConfigError(f"{p}: mode {job.mode!r} is not one of {MODES}")
    return job
