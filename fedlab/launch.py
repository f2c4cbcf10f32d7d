"""Starting, watching and stopping Flower's processes; nothing is left running.

Simulation runs on Flower's own simulation runtime: a private ``flower-superlink
--simulation`` on a free loopback port, with its own FLWR_HOME, no run-time
dependency installation, no telemetry, no update check; the run is submitted with
``flwr run`` and Flower's Ray backend runs the virtual labs (or an existing Ray
cluster, given its address). The ``fedlab`` process makes itself a child subreaper,
so every process Flower starts (even the SuperExec it detaches) stays its
descendant and is stopped at the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from fedlab.errors import RunError

log = logging.getLogger(__name__)

APP_DIR = Path(__file__).parent / "flower_app"
PR_SET_CHILD_SUBREAPER = 36


def flower_env(flwr_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes: offline, quiet, isolated."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.update({
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        "RAY_DEDUP_LOGS": "0",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
    })
    if extra:
        env.update(extra)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None,
                  what: str = "server") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RunError(f"{what} exited with code {proc.returncode} before it listened on "
                           f"{host}:{port}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise RunError(f"{what} did not listen on {host}:{port} within {timeout:.0f} s")


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux), so detached Flower processes can be stopped."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except OSError:
        return False


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        # comm may hold spaces and parentheses: the ppid follows the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) < 2:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().decode(errors="replace")
        return state[state.rfind(")") + 2:].split()[0] != "Z"
    except OSError:
        return False


def stop_tree(pids: Sequence[int], grace: float = 5.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL whatever is left; reap zombies."""
    targets = [p for p in pids if _alive(p)]
    for p in targets:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in targets):
        _reap()
        time.sleep(0.05)
    for p in targets:
        if _alive(p):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
    time.sleep(0.05)
    _reap()


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def stop_all_descendants(grace: float = 5.0) -> None:
    """Stop every process this process started (directly or through Flower)."""
    stop_tree(descendants(os.getpid()), grace=grace)
    left = [p for p in descendants(os.getpid()) if _alive(p)]
    if left:
        stop_tree(left, grace=1.0)


@contextlib.contextmanager
def simulation_superlink(workdir: Path, *, ray_address: str = "") -> Iterator[tuple[str, dict[str, str]]]:
    """A private simulation SuperLink; yields (connection name, env for `flwr`)."""
    become_subreaper()
    home = workdir / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "fedlab-sim"\n\n[superlink.fedlab-sim]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    # Without an address, Ray's init would join any cluster already running on this machine
    # (another user's simulation, a `ray start`); "local" always starts a private one.
    extra = {"RAY_ADDRESS": ray_address or "local"}
    env = flower_env(home, extra)
    log_path = workdir / "superlink.log"
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(
            ["flower-superlink", "--simulation", "--insecure", "--host", "127.0.0.1",
             "--port", str(port), "--disable-runtime-dependency-installation",
             "--database", ":flwr-in-memory:"],
            env=env, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=workdir,
        )
    try:
        wait_for_port("127.0.0.1", port, 60, proc, "the simulation SuperLink")
        yield "fedlab-sim", env
    finally:
        tree = [proc.pid, *descendants(proc.pid)]
        stop_tree(tree)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        stop_all_descendants()


def run_flwr(app_dir: Path, connection: str, env: dict[str, str], *, job_path: Path,
             federation_config: str, log_path: Path, on_poll: object = None,
             timeout: float | None = None, started: Path | None = None,
             start_timeout: float = 600.0) -> int:
    """``flwr run`` the app; returns its exit code. ``on_poll()`` is called while it runs.

    ``started``: a file the ServerApp creates once it runs; if it has not appeared after
    ``start_timeout`` seconds the run is stopped with a clear error. (Seen here on an
    overloaded machine: Flower's simulation process, slow to import Ray and TensorFlow,
    misses its first heartbeat, its task token expires, and Flower starts it again and
    again without ever saying so.)"""
    cmd = ["flwr", "run", str(app_dir), connection, "--stream",
           "--run-config", f"job={json.dumps(str(job_path))}"]
    if federation_config:
        cmd += ["--federation-config", federation_config]
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        t0 = time.monotonic()
        while proc.poll() is None:
            if callable(on_poll):
                on_poll()
            if timeout is not None and time.monotonic() - t0 > timeout:
                stop_tree([proc.pid, *descendants(proc.pid)])
                raise RunError(f"the run did not finish within {timeout:.0f} s; log: {log_path}")
            if (started is not None and not started.exists()
                    and time.monotonic() - t0 > start_timeout):
                stop_tree([proc.pid, *descendants(proc.pid)])
                raise RunError(f"Flower did not start the run within {start_timeout:.0f} s "
                               "(its simulation process never got going; is the machine "
                               f"overloaded?); log: {log_path}")
            time.sleep(0.25)
    return int(proc.returncode)


def private_tempdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
