"""Deployment: the aggregation host's server, a lab's node, and a one-machine demo.

``fedlab server KIT`` (:func:`run_server`)
    Starts Flower's SuperLink with the kit's TLS certificate, SuperNode
    authentication on, and exactly the roster's active labs registered (revoked
    labs unregistered); keeps the SuperLink's state in ``KIT/state``; writes the
    job (mode "deployment") and submits it with ``flwr run``; reports which labs
    joined and which are awaited, round by round; stops everything it started at
    the end, on Ctrl-C or on SIGTERM.

``fedlab client KIT --data FILE`` (:func:`run_client`)
    Checks the data against the federation's schema, starts the lab's warm
    training worker (``python -m client.worker``: TensorFlow, data, model, keys)
    behind a Unix socket only the lab's user can open, then the SuperNode with the
    kit's CA and node key, pointing the ClientApp at the worker's socket. When the
    SuperNode stops (server gone for good, network), it is restarted and the
    worker stays warm; when the server refuses the node key, it stops with a
    message that says why.

``fedlab demo --deployment`` (:func:`demo`)
    A four-hospital federation over TLS on loopback, one process per lab, each
    with only its own hospital's file.

Every process is started with a parent-death signal, and the fedlab process is a
child subreaper, so nothing outlives it (not even what Flower detaches).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlab.errors import ConfigError, DataError, FedlabError, KitError, RunError

log = logging.getLogger(__name__)

Status = Callable[[str], None]
CONNECTION = "fedlab"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1")
# Flower's SuperExec looks for a new ClientApp task once a second by default; a
# message then waits up to that long before its process even starts. 250 ms (an
# average wait of 125 ms) costs about 2 % of a core at idle (Flower reads this
# variable; no patch).
SUPEREXEC_POLL = "0.25"
EXIT_REFUSED = 3  # `fedlab client`: the server refused this lab; restarting will not help


class NodeRefused(KitError):
    """The server (or its certificate) refused this lab's node: a restart will not help."""


NOT_REGISTERED = ("this lab's node key is not registered at the server: it may have been "
                  "revoked, or the kit is from another federation. Ask the coordinator; if the "
                  "lab was added recently, the server must be restarted to admit it")


def _log_status(msg: str) -> None:
    log.info("%s", msg)


# ------------------------------------------------------------------------------ processes


def _pdeathsig() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def spawn(cmd: Sequence[str], *, env: dict[str, str], log_path: Path,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with output to ``log_path``; it gets SIGTERM if this process dies."""
    log.debug("starting %s (log %s)", " ".join(cmd), log_path)
    with open(log_path, "ab") as logf:
        return subprocess.Popen(list(cmd), env=env, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd, preexec_fn=_pdeathsig)


def stop(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    """Stop ``proc`` and everything below it."""
    stop_many([proc] if proc is not None else [], grace)


def stop_many(procs: Sequence[subprocess.Popen[bytes]], grace: float = 5.0) -> None:
    """Stop several process trees at once (SIGTERM to all, one grace period, SIGKILL)."""
    from fedlab.launch import descendants, stop_tree

    pids: list[int] = []
    for proc in procs:
        pids += [proc.pid, *descendants(proc.pid)]
    if pids:
        stop_tree(pids, grace=grace)
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (and SIGHUP) raise KeyboardInterrupt, so the same cleanup runs as on Ctrl-C."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading_main():
        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    else:
        yield


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class LogTail:
    """New complete lines of a growing log file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        self.partial = b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return []
        self.pos += len(data)
        data = self.partial + data
        *full, self.partial = data.split(b"\n")
        return [line.decode("utf-8", "replace").rstrip("\r") for line in full]


def tail_text(path: Path, n: int = 20) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


def _flwr_json(args: Sequence[str], env: dict[str, str], timeout: float = 120.0) -> dict[str, Any]:
    """Run a ``flwr ... --format json`` command; its JSON answer."""
    proc = subprocess.run(["flwr", *args, "--format", "json"], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return _parse_flwr_json(proc.stdout, proc.stderr, args)


def _parse_flwr_json(stdout: str, stderr: str, args: Sequence[str]) -> dict[str, Any]:
    start = stdout.find("{")
    try:
        out = json.loads(stdout[start:]) if start >= 0 else None
    except ValueError:
        out = None
    if not isinstance(out, dict):
        raise RunError(f"`flwr {' '.join(args)}` gave no answer: {(stdout + stderr).strip()[-500:]}")
    return out


# ------------------------------------------------------------------------------ provision


def provision_hosts(hosts: Sequence[str]) -> list[str]:
    """The server certificate's hosts: the configured ones plus loopback, because the
    SuperLink's own processes (ServerApp, the flwr CLI) reach it over loopback."""
    out = list(dict.fromkeys(hosts))
    out += [h for h in LOOPBACK_HOSTS if h not in out]
    return out


def provision(config_path: str | Path, out: str | Path, *, force: bool = False) -> Any:
    """Create the CA, the server kit and one kit per lab from a federation.toml."""
    from fedlab import pki
    from fedlab.config import load_config

    cfg = load_config(config_path)
    if not cfg.labs:
        raise ConfigError(f"{config_path}: no [[labs]] to provision; list every lab by name")
    return pki.provision(Path(out), federation=cfg.name, labs=list(cfg.lab_names()),
                         server_hosts=provision_hosts(cfg.server.hosts),
                         server_address=cfg.server.address, config_text=cfg.to_toml(),
                         force=force)


# ------------------------------------------------------------------------------ server


@dataclass(frozen=True)
class Listen:
    """Where the SuperLink binds, and where fedlab's own tools reach it."""

    host: str
    port: int
    connect: str  # host:port used by the flwr CLI (and the SuperLink's own ServerApp)

    @property
    def bind(self) -> str:
        return f"{self.host}:{self.port}"


def _split_address(address: str, what: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} {address!r} is not host:port, e.g. 0.0.0.0:9092")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plan_listen(address: str, cert_hosts: Sequence[str], listen: str | None) -> Listen:
    """Bind address and local connect address for a server whose labs use ``address``.

    Default: bind the loopback address itself when the labs' address is loopback
    (a one-machine federation stays off the network), else every interface. The
    SuperLink's own ServerApp connects with TLS to the bound host (or 127.0.0.1 when
    it is 0.0.0.0), so that host must be in the certificate."""
    a_host, a_port = _split_address(address, "server.address")
    if listen:
        host, port = _split_address(listen, "--listen")
    elif _is_loopback(a_host):
        host, port = a_host, a_port
    elif "127.0.0.1" in cert_hosts:
        host, port = "0.0.0.0", a_port
    else:
        host, port = a_host, a_port
    local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if local not in cert_hosts:
        raise KitError(
            f"the server would listen on {host}:{port}, but its own processes reach it as "
            f"{local}, which its certificate does not name (it names {', '.join(cert_hosts)}); "
            f"pass --listen {a_host}:{port}, or ask the coordinator for a server certificate "
            "that includes 127.0.0.1 (fedlab provision adds it)")
    return Listen(host, port, f"{local}:{port}")


def write_flwr_config(home: Path, connect: str, ca_cert: Path) -> None:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "{connect}"\nroot-certificates = {json.dumps(str(ca_cert))}\n')


def _pem_of_openssh(line: str) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_public_key(line.encode())
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _registered_in_db(db: Path) -> dict[bytes, tuple[int, str]]:
    """{public key PEM: (node id, status)} from the SuperLink's database, read-only.

    Only used when fedlab's own record (state/nodes.json) was lost; the table layout
    is Flower's, so any surprise just means "unknown"."""
    if not db.exists():
        return {}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = con.execute("SELECT node_id, public_key, status FROM node").fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        log.debug("cannot read %s: %s", db, exc)
        return {}
    out: dict[bytes, tuple[int, str]] = {}
    for node_id, pub, status in rows:
        if isinstance(pub, bytes | str):
            out[pub.encode() if isinstance(pub, str) else pub] = (int(node_id), str(status))
    return out


def sync_registrations(kit: Any, state: Path, env: dict[str, str], status: Status) -> dict[str, int]:
    """Register every active lab's SuperNode key and unregister every other one.

    fedlab keeps {lab: {node_id, key}} in ``state/nodes.json``; returns {lab: node id}
    for the active labs."""
    path = state / "nodes.json"
    try:
        known: dict[str, dict[str, Any]] = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    active = {e.name: e.node_public_openssh for e in kit.roster.active()}
    db_rows: dict[bytes, tuple[int, str]] | None = None

    def db() -> dict[bytes, tuple[int, str]]:
        nonlocal db_rows
        if db_rows is None:
            db_rows = _registered_in_db(state / "superlink.db")
        return db_rows

    # Unregister: labs no longer active (revoked, or gone from the roster), and old keys.
    stale: dict[str, int] = {}
    for lab, rec in list(known.items()):
        if active.get(lab) != rec.get("key"):
            stale[lab] = int(rec["node_id"])
            del known[lab]
    for entry in kit.roster.labs:
        if entry.revoked and entry.name not in stale:
            row = db().get(_pem_of_openssh(entry.node_public_openssh))
            if row is not None and row[1] != "unregistered":
                stale[entry.name] = row[0]
    for lab, node_id in stale.items():
        res = _flwr_json(["supernode", "unregister", str(node_id), CONNECTION], env)
        if res.get("success") or "not found" in str(res.get("error-message", "")).lower():
            status(f"lab {lab}: SuperNode key unregistered (no longer in the roster)")
        else:
            raise RunError(f"could not unregister lab {lab}'s SuperNode {node_id}: "
                           f"{res.get('error-message')}")

    # Register the active labs not registered yet (in parallel: each flwr call takes ~2 s).
    todo = [lab for lab in active if lab not in known]
    procs = {lab: subprocess.Popen(
        ["flwr", "supernode", "register", str(kit.node_pub_paths[lab]), CONNECTION,
         "--format", "json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, stdin=subprocess.DEVNULL) for lab in todo}
    for lab, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        res = _parse_flwr_json(out, err, ["supernode", "register", lab])
        if res.get("success"):
            known[lab] = {"node_id": int(res["node-id"]), "key": active[lab]}
        elif "already in use" in str(res.get("error-message", "")):
            row = db().get(_pem_of_openssh(active[lab]))
            if row is None:
                raise RunError(f"lab {lab}'s SuperNode key is registered but its node id is "
                               f"unknown; delete {state} to start the server state afresh")
            known[lab] = {"node_id": row[0], "key": active[lab]}
        else:
            raise RunError(f"could not register lab {lab}'s SuperNode key: "
                           f"{res.get('error-message')}")
    from fedlab.runs import atomic_write

    atomic_write(path, (json.dumps(known, indent=2, sort_keys=True) + "\n").encode(), mode=0o600)
    return {lab: int(rec["node_id"]) for lab, rec in known.items()}


class _Watch:
    """Follows the run folder's audit log and reports who joined and how rounds go."""

    def __init__(self, run_dir: Path, labs: Sequence[str], min_labs: int, rounds: int,
                 status: Status) -> None:
        self.tail = LogTail(run_dir / "audit.jsonl")
        self.labs = list(labs)
        self.min_labs = min_labs
        self.rounds = rounds
        self.status = status
        self.joined: list[str] = []
        self.started = False
        self.last_wait = time.monotonic()
        self.t0 = time.monotonic()

    def awaited(self) -> list[str]:
        return [lab for lab in self.labs if lab not in self.joined]

    def poll(self) -> None:
        for line in self.tail.lines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            self._event(ev)
        if not self.started and time.monotonic() - self.last_wait > 30:
            self.last_wait = time.monotonic()
            self.status(f"waiting for labs: joined {', '.join(self.joined) or 'none'}; "
                        f"awaited {', '.join(self.awaited()) or 'none'} "
                        f"(rounds start when all have joined, or with at least "
                        f"{self.min_labs} once the join wait is over)")

    def _event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        if kind == "joined":
            self.joined.append(str(ev.get("lab")))
            self.status(f"lab {ev.get('lab')} joined ({ev.get('num_train')} training rows); "
                        f"{len(self.joined)}/{len(self.labs)} in, awaited: "
                        f"{', '.join(self.awaited()) or 'none'}")
        elif kind == "refused":
            self.status(f"refused node {ev.get('node')}: {ev.get('reason')}")
        elif kind == "prep_started":  # federated preprocessing before round 1 (server.prep)
            self.started = True
            self.status(f"rounds start with {', '.join(self.joined)} after the federated "
                        f"preprocessing ({', '.join(ev.get('steps') or [])})")
        elif kind == "prep_completed":
            self.status(f"federated preprocessing done: {', '.join(ev.get('contributors') or [])}"
                        + (f"; dropped: {', '.join(ev['dropped'])}" if ev.get("dropped") else ""))
        elif kind in ("prep_dropped", "prep_failed"):
            who = f"lab {ev['lab']}: " if ev.get("lab") else ""
            self.status(f"federated preprocessing: {who}{ev.get('reason')}")
        elif kind == "round_started":
            if not self.started:
                self.started = True
                self.status(f"rounds start with {', '.join(self.joined)}")
        elif kind == "round_completed":
            dropped = ev.get("dropped") or []
            note = f"; dropped: {', '.join(dropped)}" if dropped else ""
            self.status(f"round {ev.get('round')}/{self.rounds} done: "
                        f"{', '.join(ev.get('contributors') or [])}{note}")
        elif kind == "round_failed":
            self.status(f"round {ev.get('round')}/{self.rounds} failed: {ev.get('reason')}")
        elif kind in ("rejected", "lab_error"):
            when = f"round {ev['round']}" if ev.get("round") is not None else "setup"
            self.status(f"{when}: lab {ev.get('lab')}: {ev.get('reason')}")
        elif kind == "run_finished":
            self.status(f"run finished: {ev.get('rounds_completed')}/{self.rounds} rounds "
                        f"aggregated")


def interrupted_run(runs_parent: Path) -> Path | None:
    """The newest run folder under ``runs_parent`` that started but never finished (it
    has an audit log but no summary.json), or None."""
    if not runs_parent.is_dir():
        return None
    candidates = [p for p in runs_parent.iterdir()
                  if (p / "audit.jsonl").exists() and not (p / "summary.json").exists()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (p / "audit.jsonl").stat().st_mtime).resolve()


def run_server(kit_dir: str | Path, *, out: str | Path | None = None, listen: str | None = None,
               state_dir: str | Path | None = None, rounds: int | None = None, timeout: float | None = None,
               status: Status = _log_status,
               on_poll: Callable[[], None] | None = None,
               new_run: bool = False) -> tuple[Path, dict[str, Any]]:
    """Serve one federation run from a server kit; returns (run folder, summary).

    ``on_poll()`` is called about four times a second while the run goes on (it may
    raise to abort the run)."""
    from fedlab.config import apply_overrides, load_config
    from fedlab.job import Job
    from fedlab.launch import (
        APP_DIR,
        become_subreaper,
        flower_env,
        free_port,
        run_flwr,
        stop_all_descendants,
        wait_for_port,
    )
    from fedlab.pki import load_server_kit
    from fedlab.runs import new_run_dir

    kit_dir = Path(kit_dir).resolve()
    if (kit_dir / "lab.toml").is_file():
        raise KitError(f"{kit_dir} is a lab kit; a lab starts with `fedlab client {kit_dir} "
                       "--data FILE`, the server needs the server kit (server/)")
    kit = load_server_kit(kit_dir)
    overrides: dict[str, object] = {"rounds": rounds} if rounds is not None else {}
    cfg = apply_overrides(load_config(kit.config_path), overrides)
    active = [e.name for e in kit.roster.active()]
    if len(active) < cfg.min_labs:
        raise ConfigError(f"the roster has {len(active)} active labs but min_labs is "
                          f"{cfg.min_labs}; no round could ever run")
    where = plan_listen(cfg.server.address, kit.server_hosts, listen)
    state = Path(state_dir).resolve() if state_dir else kit_dir / "state"
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    home = state / "flwr-home"
    env = flower_env(home, {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": SUPEREXEC_POLL})
    runs_parent = Path(out) if out else kit_dir / "runs"
    resume_dir = None if new_run else interrupted_run(runs_parent)
    if resume_dir is not None:
        run_dir = resume_dir
        status(f"resuming the interrupted run {run_dir.name} after its last checkpoint "
               "(--new-run starts afresh)")
    else:
        run_dir = new_run_dir(runs_parent, cfg.name).resolve()
    become_subreaper()
    superlink = None
    with _sigterm_interrupts():
        try:
            def start_superlink(host: str, port: int, connect: str) -> subprocess.Popen[bytes]:
                write_flwr_config(home, connect, kit.ca_cert_path)
                proc = spawn(
                    ["flower-superlink", "--ssl-ca-certfile", str(kit.ca_cert_path),
                     "--ssl-certfile", str(kit.cert_path), "--ssl-keyfile", str(kit.key_path),
                     "--host", host, "--port", str(port), "--enable-supernode-auth",
                     "--database", str(state / "superlink.db"),
                     "--disable-runtime-dependency-installation"],
                    env=env, log_path=run_dir / "superlink.log", cwd=state)
                c_host, c_port = _split_address(connect, "connect")
                wait_for_port(c_host, c_port, 300, proc, "the SuperLink")
                return proc

            # First the registrations, on a loopback port no lab knows; the labs' port
            # opens only once exactly the roster's labs are admitted, so a lab that is
            # early is never refused for a key that was about to be registered.
            local = "127.0.0.1" if "127.0.0.1" in kit.server_hosts else where.connect.rpartition(":")[0]
            private = free_port(local)
            superlink = start_superlink(local, private, f"{local}:{private}")
            nodes = sync_registrations(kit, state, env, status)
            status(f"{len(nodes)} lab keys registered: {', '.join(sorted(nodes))}")
            _stop_stale_runs(env, status)
            stop(superlink)
            superlink = start_superlink(where.host, where.port, where.connect)
            status(f"server of federation {kit.federation} listening on {where.bind} (TLS); "
                   f"labs connect to {cfg.server.address}")
            job = Job(mode="deployment", config_toml=cfg.to_toml(),
                      config_where=str(kit.config_path), base_dir=str(kit_dir),
                      run_dir=str(run_dir), labs=tuple(active),
                      roster={e.name: e.identity_public.hex() for e in kit.roster.active()},
                      overrides=overrides, resume=resume_dir is not None)
            job_path = run_dir / "job.json"
            job.save(job_path)
            watch = _Watch(run_dir, active, cfg.min_labs, cfg.rounds, status)
            status(f"run {run_dir.name}: {cfg.rounds} rounds, "
                   f"{'secure' if cfg.secure else 'plain'} aggregation; awaiting labs "
                   f"{', '.join(active)}")
            def poll() -> None:
                watch.poll()
                if on_poll is not None:
                    on_poll()

            rc = run_flwr(APP_DIR, CONNECTION, env, job_path=job_path, federation_config="",
                          log_path=run_dir / "flower.log", on_poll=poll, timeout=timeout)
            watch.poll()
            if superlink.poll() is not None:
                raise RunError(f"the SuperLink stopped (exit code {superlink.returncode}); "
                               f"last lines of {run_dir / 'superlink.log'}:\n"
                               + tail_text(run_dir / "superlink.log"))
            return run_dir, _finished_summary(run_dir, rc)
        finally:
            stop(superlink)
            stop_all_descendants()


def _stop_stale_runs(env: dict[str, str], status: Status) -> None:
    """A server killed mid-run leaves its run 'running' in the persistent state; stop it so
    its ServerApp is not started again next to the new run."""
    try:
        res = _flwr_json(["ls", CONNECTION], env)
    except (RunError, subprocess.TimeoutExpired) as exc:
        log.debug("flwr ls failed: %s", exc)
        return
    for run in res.get("runs", []) or []:
        st = str(run.get("status", "")).lower()
        if st.startswith(("pending", "starting", "running")):
            run_id = str(run.get("run-id"))
            with contextlib.suppress(RunError, subprocess.TimeoutExpired):
                _flwr_json(["stop", run_id, CONNECTION], env)
                status(f"stopped run {run_id} left over from an earlier server")


def _finished_summary(run_dir: Path, rc: int) -> dict[str, Any]:
    path = run_dir / "summary.json"
    if not path.exists():
        raise RunError(f"the run ended (flwr run exit code {rc}) without results; last lines of "
                       f"{run_dir / 'flower.log'}:\n" + tail_text(run_dir / "flower.log", 25))
    summary = json.loads(path.read_text())
    if summary.get("rounds_completed", 0) == 0:
        raise RunError(f"no round completed; see {run_dir / 'audit.jsonl'}")
    return dict(summary)


# ------------------------------------------------------------------------------ lab


def check_lab_data(kit_dir: str | Path, data: str | Path) -> tuple[Any, Any, Any]:
    """Load the lab kit and check ``data`` against its federation's schema: (kit, cfg, report).

    The same check as ``fedlab check-data KIT --data FILE``; nothing is sent anywhere."""
    from fedlab.config import load_config
    from fedlab.pki import load_lab_kit
    from fedlab.task import check_lab_file

    if (Path(kit_dir) / "server.pem").is_file():
        raise KitError(f"{kit_dir} is the server kit; the server starts with `fedlab server "
                       f"{kit_dir}`, a lab needs its own lab kit (labs/<name>/)")
    kit = load_lab_kit(Path(kit_dir))
    cfg = load_config(kit.config_path)
    path = Path(data)
    if not path.is_file():
        raise DataError(f"{path}: no such data file; pass the lab's own file with --data")
    report = check_lab_file(cfg, path)
    return kit, cfg, report


@dataclass
class _Node:
    """One SuperNode run by `fedlab client` (restarted when it stops)."""

    proc: subprocess.Popen[bytes] | None = None
    tail: LogTail | None = None
    starts: int = 0
    started_at: float = 0.0
    connected: bool = False
    unreachable_said: bool = False
    sending_done: bool = False
    dones_sent: int = 0  # answers to the server's "run is over" the SuperNode handed over
    lines: list[str] = field(default_factory=list)


def _classify_node_exit(text: str, address: str) -> FedlabError | None:
    """A SuperNode's last words -> the error to stop with, or None (restart it)."""
    low = text.lower()
    if ("failed to activate supernode" in low or "[code: 2004]" in low or "[code: 2001]" in low
            or "must be registered" in low):
        return NodeRefused(NOT_REGISTERED)
    if "certificate" in low or "ssl/tls handshake" in low or "ssl:" in low:
        return NodeRefused(
            f"the server at {address} presented a TLS certificate this kit's CA (ca.crt) does "
            "not trust: the kit is from another federation, or the address points at another "
            "server. Check the address and ask the coordinator for the right kit")
    if "node auth" in low and "invalid" in low:
        return KitError("this kit's node.key was refused by Flower as invalid; restore the kit "
                        "from the coordinator")
    return None


def run_client(kit_dir: str | Path, data: str | Path, *, runs: int = 0,
               log_dir: str | Path | None = None, status: Status = _log_status,
               max_restarts: int = 1000) -> int:
    """Run a lab's node until stopped (or after ``runs`` finished runs); returns 0."""
    from fedlab.launch import become_subreaper, flower_env, free_port, stop_all_descendants

    kit_dir = Path(kit_dir).resolve()
    data = Path(data).resolve()
    kit, cfg, report = check_lab_data(kit_dir, data)
    status(f"lab {kit.name} of federation {kit.federation}: {data} matches the data schema "
           f"({_report_line(report)})")
    become_subreaper()
    work = Path(tempfile.mkdtemp(prefix=f"fedlab-{kit.name}-"))  # mode 0700
    logs = Path(log_dir).resolve() if log_dir else work
    logs.mkdir(parents=True, exist_ok=True)
    sock = work / "worker.sock"
    env = flower_env(work / "flwr-home", {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": SUPEREXEC_POLL})
    worker = None
    node = _Node()
    failed = False
    with _sigterm_interrupts():
        try:
            worker = spawn([sys.executable, "-m", "client.worker", "--kit", str(kit_dir),
                            "--data", str(data), "--socket", str(sock),
                            "--ready-file", str(work / "worker.ready"),
                            "--parent-pid", str(os.getpid())],
                           env=env, log_path=logs / "worker.log")
            wtail = LogTail(logs / "worker.log")
            # The SuperNode starts while the worker loads: a refused key shows at once, and
            # a hello that arrives before the worker is ready is simply asked again.
            status(f"loading the training worker (pid {worker.pid}); connecting to the server "
                   f"at {kit.server_address}")
            ready: dict[str, Any] | None = None
            finished = 0
            finals = 0
            last_final = 0.0
            done_at = 0.0
            while True:
                if ready is None:
                    ready = _worker_ready(worker, work / "worker.ready", logs / "worker.log")
                    if ready is not None:
                        status(f"training worker ready ({ready.get('num-train')} training rows)")
                if node.proc is None:
                    if node.starts >= max_restarts:
                        raise RunError(f"the SuperNode stopped {node.starts} times; see "
                                       f"{logs / 'supernode.log'}")
                    node.proc = spawn(
                        ["flower-supernode", "--root-certificates", str(kit.ca_cert_path),
                         "--superlink", kit.server_address,
                         "--auth-supernode-private-key", str(kit.node_key_path),
                         "--host", "127.0.0.1", "--port", str(free_port()),
                         "--node-config", f"worker={json.dumps(str(sock))}"],
                        env=env, log_path=logs / "supernode.log")
                    node.tail = node.tail or LogTail(logs / "supernode.log")
                    node.starts += 1
                    node.started_at = time.monotonic()
                    node.connected = False
                _follow_node(node, status, kit.server_address)
                for line in wtail.lines():
                    if "worker:" in line:
                        msg = line.split("worker:", 1)[1].strip()
                        status(msg)
                        if "the run is over for this lab" in msg:
                            finished += 1
                            done_at = time.monotonic()
                        elif "final evaluation sent" in msg:
                            finals += 1
                            last_final = time.monotonic()
                # A run is over for this lab once the server says it has every final
                # evaluation (stopping the node earlier could lose this lab's: see
                # server.federation.FederationServer.say_done) and the node has sent its
                # answer to that (stopping it half-way through a reply leaves Flower's
                # server retrying its content), or, should that word never come (a server
                # that died after the final evaluation), two minutes after it.
                if runs and ((finished >= runs and (node.dones_sent >= runs
                                                    or time.monotonic() - done_at > 30))
                             or (finals >= runs and time.monotonic() - last_final > 120)):
                    status(f"{finished} run(s) finished; stopping")
                    return 0
                if worker.poll() is not None:
                    raise RunError(f"the training worker stopped (exit code {worker.returncode})"
                                   f"; last lines of {logs / 'worker.log'}:\n"
                                   + tail_text(logs / "worker.log"))
                if node.proc.poll() is not None:
                    code = node.proc.returncode
                    _follow_node(node, status, kit.server_address)
                    last = "\n".join(node.lines[-40:])
                    stop(node.proc, grace=2)
                    node.proc = None
                    err = _classify_node_exit(last, kit.server_address)
                    if err is not None:
                        raise err
                    wait = min(30.0, 2.0 * node.starts) if not node.connected else 1.0
                    status(f"the SuperNode stopped (exit code {code}); restarting in "
                           f"{wait:.0f} s, the training worker stays warm")
                    _sleep(wait)
                    continue
                _sleep(0.25)
        except FedlabError:
            failed = not log_dir
            if failed:
                status(f"the worker's and SuperNode's logs are kept in {work}")
            raise
        finally:
            stop_many([p for p in (node.proc, worker) if p is not None], grace=3)
            stop_all_descendants(grace=3)
            if failed:  # keep the logs for a look; drop the socket and Flower's files
                with contextlib.suppress(OSError):
                    sock.unlink()
                shutil.rmtree(work / "flwr-home", ignore_errors=True)
            else:
                shutil.rmtree(work, ignore_errors=True)


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _report_line(report: Any) -> str:
    for attr in ("summary", "format"):
        fn = getattr(report, attr, None)
        if callable(fn):
            text = str(fn()).strip().splitlines()
            if text:
                return text[0]
    return "ok"


def _worker_ready(worker: subprocess.Popen[bytes], ready: Path, log_path: Path
                  ) -> dict[str, Any] | None:
    """The worker's ready file once it has loaded everything and listens, else None; raises
    if the worker stopped while loading (with its own error message when it gave one)."""
    try:
        info = json.loads(ready.read_text())
        if isinstance(info, dict):
            return info
    except (OSError, ValueError):
        pass
    if worker.poll() is not None:
        text = tail_text(log_path, 40)
        for line in reversed(text.splitlines()):
            if line.startswith("fedlab: error: "):
                raise RunError(line.removeprefix("fedlab: error: "))
        raise RunError(f"the training worker stopped while loading (exit code "
                       f"{worker.returncode}); last lines of {log_path}:\n{text}")
    return None


def _follow_node(node: _Node, status: Status, address: str) -> None:
    assert node.tail is not None
    for line in node.tail.lines():
        node.lines.append(line)
        if len(node.lines) > 400:
            del node.lines[:200]
        if "SuperNode ID:" in line and not node.connected:
            node.connected = True
            node.unreachable_said = False
            status(f"connected to the server at {address} (Flower node "
                   f"{line.rsplit(':', 1)[1].strip()})")
        elif "Connection attempt failed" in line and not node.unreachable_said:
            node.unreachable_said = True
            status(f"the server at {address} is not reachable; retrying (the worker stays warm)")
        elif "Sending: query.done" in line:
            node.sending_done = True
        elif "Sent successfully" in line and node.sending_done:
            node.sending_done = False
            node.dones_sent += 1
        elif "Connection successful after" in line and node.unreachable_said:
            node.unreachable_said = False
            if node.connected:
                status(f"reconnected to the server at {address}")


# ------------------------------------------------------------------------------ demo


def demo_config(address: str, *, rounds: int | None = None, secure: bool = True,
                stage_timeout: float | None = None) -> str:
    """The built-in four-hospital federation as a deployment: each lab's file comes from its
    own ``--data``, the server listens on ``address`` (loopback)."""
    import re

    from fedlab.config import DEFAULT_TOML, parse_config

    text = re.sub(r'(?m)^data = "builtin:[a-z]+"\n', "", DEFAULT_TOML)
    if rounds is not None:
        text = re.sub(r"(?m)^rounds = \d+$", f"rounds = {int(rounds)}", text)
    text = re.sub(r"(?m)^secure = (true|false)$", f"secure = {str(bool(secure)).lower()}", text)
    if stage_timeout is not None:
        text = text.replace("\n[training]", f"stage_timeout = {float(stage_timeout)}\n\n[training]",
                            1)
    host = address.rpartition(":")[0]
    text += (f'\n[server]\naddress = "{address}"\n'
             f"hosts = {json.dumps(provision_hosts([host]))}\n")
    parse_config(text, where="demo federation")  # fail here, not in a lab
    return text


def demo(*, out: str | Path | None = None, rounds: int | None = None, plain: bool = False,
         status: Status = _log_status, timeout: float = 3600.0) -> tuple[Path, dict[str, Any]]:
    """Provision a four-hospital federation in a temporary folder, run its server and four
    lab processes over TLS on loopback, and return (run folder, summary)."""
    from fedlab.data import heart_disease as hd
    from fedlab.launch import become_subreaper, free_port, stop_all_descendants

    become_subreaper()
    tmp = Path(tempfile.mkdtemp(prefix="fedlab-demo-"))
    labs: dict[str, subprocess.Popen[bytes]] = {}
    ok = False
    with _sigterm_interrupts():
        try:
            address = f"127.0.0.1:{free_port()}"
            cfg_path = tmp / "federation.toml"
            cfg_path.write_text(demo_config(address, rounds=rounds, secure=not plain))
            res = provision(cfg_path, tmp / "federation")
            status(f"provisioned federation {res.federation!r} in {res.out_dir} (server "
                   f"{address}, CA {res.ca_fingerprint[:23]}...)")
            data: dict[str, Path] = {}
            for h in hd.HOSPITALS:
                data_dir = tmp / "lab-data" / h
                data_dir.mkdir(parents=True)
                data[h] = data_dir / hd.data_file(h).name
                shutil.copyfile(hd.data_file(h), data[h])

            def start_and_check_labs() -> None:
                # The labs start once the server listens (on a busy machine four TensorFlow
                # start-ups next to the SuperLink's would only slow both down).
                if not labs:
                    for h in hd.HOSPITALS:
                        labs[h] = spawn([sys.executable, "-m", "fedlab.cli", "client",
                                         str(res.lab_kits[h]), "--data", str(data[h]),
                                         "--runs", "1"],
                                        env=dict(os.environ), log_path=tmp / f"lab-{h}.log")
                        status(f"lab {h}: started (pid {labs[h].pid}) with only {data[h]}")
                for h, proc in labs.items():
                    if proc.poll() not in (None, 0):
                        raise RunError(f"lab {h} stopped (exit code {proc.returncode}):\n"
                                       + tail_text(tmp / f"lab-{h}.log"))

            run_dir, summary = run_server(res.server_kit, out=out or "runs", timeout=timeout,
                                          status=lambda m: status(f"server: {m}"),
                                          on_poll=start_and_check_labs)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and any(p.poll() is None for p in labs.values()):
                time.sleep(0.2)
            ok = True
            return run_dir, summary
        finally:
            stop_many(list(labs.values()), grace=8)
            stop_all_descendants(grace=3)
            if ok:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                status(f"the demo's kits and logs are kept in {tmp}")
