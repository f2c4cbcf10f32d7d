"""`fedlab simulate`: a whole federation on one machine, on Flower's simulation runtime."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlab.config import FederationConfig, apply_overrides, default_config, load_config
from fedlab.errors import RunError
from fedlab.job import Job
from fedlab.runs import atomic_write, new_run_dir

log = logging.getLogger(__name__)


def make_identities(keys_dir: Path, labs: list[str]) -> dict[str, str]:
    """An Ed25519 identity key per virtual lab (mode 0600); returns the roster (public, hex)."""
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    roster: dict[str, str] = {}
    for lab in labs:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        atomic_write(keys_dir / f"{lab}.key", pem, mode=0o600)
        roster[lab] = key.public_key().public_bytes(serialization.Encoding.Raw,
                                                    serialization.PublicFormat.Raw).hex()
    return roster


def check_simulation_data(cfg: FederationConfig) -> list[str]:
    """Load every virtual lab's data before starting anything (clear errors, fast)."""
    from fedlab.task import load_simulation_lab, simulation_labs

    labs = simulation_labs(cfg)
    for i, lab in enumerate(labs):
        data = load_simulation_lab(cfg, i)
        log.info("lab %s: %d train, %d validation, %d test rows", lab, len(data.y_train),
                 len(data.y_val), len(data.y_test))
    return labs


class _Progress:
    """Follows metrics.jsonl of the run and shows a progress bar per round."""

    def __init__(self, run_dir: Path, rounds: int, enabled: bool) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.rounds = rounds
        self.seen = 0
        self.enabled = enabled
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                                     TimeElapsedColumn())
            self.progress.start()
            self.task = self.progress.add_task("starting Flower + Ray", total=self.rounds,
                                               status="")
        return self

    def poll(self) -> None:
        if not self.enabled or not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        acc = None
        done = None
        for line in lines[self.seen:]:
            try:
                row = json.loads(line)
            except ValueError:
                break
            self.seen += 1
            if row.get("kind") == "round":
                done = int(row["round"])
            if row.get("kind") == "eval" and row.get("lab") == "pooled":
                acc = row.get("accuracy")
        if done is not None:
            status = "" if acc is None or math.isnan(acc) else f"pooled test acc {acc:.3f}"
            self.progress.update(self.task, completed=done, description="rounds", status=status)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.poll()
            self.progress.stop()


def simulate(config_path: str | None, out: str | Path = "runs", *, rounds: int | None = None,
             plain: bool = False, ray_address: str = "", progress: bool = True,
             timeout: float | None = None, synthetic_params: int = 0,
             synthetic_labs: int = 0, resume: str | Path | None = None,
             app_dir: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Run a simulated federation; returns (run folder, summary).

    ``synthetic_params``/``synthetic_labs`` (benchmarks only): that many virtual labs send
    seeded random updates of that many values and train nothing, to measure what fedlab
    adds around training at large model sizes.

    ``resume``: a run folder whose run was interrupted; it goes on after its newest valid
    checkpoint with the same config (``config_path`` and the overrides must then be unset).
    ``app_dir``: another Flower App folder (tests use one whose lab misbehaves)."""
    from fedlab.launch import APP_DIR, private_tempdir, run_flwr, simulation_superlink

    overrides: dict[str, object] = {}
    if resume is not None:
        run_dir, cfg, overrides, synthetic_params, synthetic_labs = _resume_settings(Path(resume))
        config_path = str(run_dir / "federation.toml")
    else:
        cfg = load_config(config_path) if config_path else default_config()
        if rounds is not None:
            overrides["rounds"] = rounds
        if plain:
            overrides["secure"] = False
    cfg = apply_overrides(cfg, overrides)
    if synthetic_params:
        labs = [f"lab-{i}" for i in range(synthetic_labs or len(cfg.labs))]
    else:
        labs = check_simulation_data(cfg)
    if len(labs) < cfg.min_labs:
        raise RunError(f"the simulation has {len(labs)} labs but min_labs is {cfg.min_labs}")
    if resume is None:
        run_dir = new_run_dir(out, cfg.name).resolve()
        (run_dir / "run.json").write_text(json.dumps({
            "overrides": overrides, "synthetic_params": synthetic_params,
            "synthetic_labs": synthetic_labs, "labs": labs, "base_dir": cfg.base_dir}, indent=2))
    work = private_tempdir("fedlab-sim-")
    started = time.time() - 1
    try:
        roster = make_identities(work / "keys", labs)
        job = Job(mode="simulation", config_toml=cfg.to_toml(),
                  config_where=str(config_path or "built-in federation"), base_dir=cfg.base_dir,
                  run_dir=str(run_dir), labs=tuple(labs), roster=roster,
                  keys_dir=str(work / "keys"), overrides=overrides,
                  synthetic_params=synthetic_params, resume=resume is not None)
        job_path = work / "job.json"
        job.save(job_path)
        sim = cfg.simulation
        fed_cfg = f"num-supernodes={len(labs)} client-resources-num-cpus={sim.cpus_per_lab:g}"
        summary_path = run_dir / "summary.json"
        log_path = run_dir / "flower.log"
        for attempt in range(1, RESTARTS + 2):
            log_start = log_path.stat().st_size if log_path.exists() else 0
            with simulation_superlink(work, ray_address=ray_address or sim.ray_address) as (
                    conn, env):
                with _Progress(run_dir, cfg.rounds, progress) as prog:
                    rc = run_flwr(app_dir or APP_DIR, conn, env, job_path=job_path,
                                  federation_config=fed_cfg, log_path=log_path,
                                  on_poll=prog.poll, timeout=timeout,
                                  started=run_dir / "audit.jsonl")
            if summary_path.exists() and summary_path.stat().st_mtime >= started:
                break
            crash = _worker_crash(log_path, log_start)
            if crash is None or attempt > RESTARTS:
                break
            # A simulation worker process died (Flower never replaces a dead Ray actor, so
            # the run cannot go on in that runtime): start the runtime again and resume
            # from the last checkpoint; the round in progress is redone.
            log.warning("a simulation worker died (%s); restarting the runtime and resuming "
                        "from the last checkpoint (attempt %d)", crash, attempt + 1)
            job = dataclasses.replace(job, resume=True)
            job.save(job_path)
        if not summary_path.exists() or summary_path.stat().st_mtime < started:
            tail = (run_dir / "flower.log").read_text(errors="replace").splitlines()[-25:]
            raise RunError(f"the simulation ended (flwr run exit code {rc}) without results; "
                           f"last lines of {run_dir / 'flower.log'}:\n" + "\n".join(tail))
        summary = json.loads(summary_path.read_text())
        if summary.get("rounds_completed", 0) == 0:
            raise RunError(f"no round completed; see {run_dir / 'audit.jsonl'}")
        return run_dir, summary
    finally:
        shutil.rmtree(work, ignore_errors=True)


RESTARTS = 2
_CRASH_SIGNS = ("Fatal Python error", "ActorDiedError", "RayActorError", "SIGABRT received",
                "SIGSEGV received", "worker died unexpectedly")


def _worker_crash(log_path: Path, start: int) -> str | None:
    """The sign of a crashed simulation worker in the part of the log written since
    ``start``, or None."""
    try:
        with open(log_path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    for sign in _CRASH_SIGNS:
        if sign in text:
            return sign
    return None


def _resume_settings(run_dir: Path) -> tuple[Path, FederationConfig, dict[str, object], int, int]:
    run_dir = run_dir.resolve()
    cfg_path = run_dir / "federation.toml"
    info_path = run_dir / "run.json"
    if not cfg_path.exists() or not info_path.exists():
        raise RunError(f"{run_dir}: not a simulation run folder (federation.toml and run.json "
                       "are needed to resume); start a new run instead")
    try:
        info = json.loads(info_path.read_text())
        overrides = dict(info.get("overrides", {}))
        synthetic_params = int(info.get("synthetic_params", 0))
        synthetic_labs = int(info.get("synthetic_labs", 0))
        base_dir = str(info.get("base_dir", ""))
    except (ValueError, TypeError, AttributeError) as exc:
        raise RunError(f"{info_path} is damaged ({exc}); start a new run instead") from exc
    if (run_dir / "summary.json").exists():
        raise RunError(f"{run_dir}: this run already finished (summary.json exists); "
                       "nothing to resume")
    from fedlab.config import parse_config

    cfg = parse_config(cfg_path.read_text(), where=str(cfg_path), base_dir=base_dir)
    return run_dir, cfg, overrides, synthetic_params, synthetic_labs
