"""Real fedlab processes for the deployment tests: start, follow their output, stop, and
find leftovers in /proc."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fedlab.data import heart_disease as hd

HOSPITALS = hd.HOSPITALS
FEDLAB = [sys.executable, "-m", "fedlab.cli"]


def secure_ready() -> bool:
    """Secure aggregation on when its glue is importable (FEDLAB_TEST_PLAIN=1 forces plain)."""
    if os.environ.get("FEDLAB_TEST_PLAIN"):
        return False
    try:
        import client.secure  # noqa: F401
        import server.secure  # noqa: F401
    except ImportError:
        return False
    return True


def federation_toml(address: str, *, labs: Sequence[str] = HOSPITALS, secure: bool = True,
                    rounds: int = 3, min_labs: int = 2, stage_timeout: float = 30.0,
                    hosts: Sequence[str] | None = None, name: str = "test-hospitals",
                    standardize: str = "range") -> str:
    """A test federation. Range scaling by default: the federated standardisation (the
    default of a real federation) adds a secure-aggregation session of four exchanges
    before round 1, about 45 s of Flower polling per run; `fedlab demo --deployment`
    (tests/deploy/test_demo.py) runs it on the defaults and checks its records."""
    host = address.rpartition(":")[0]
    hosts = list(hosts) if hosts is not None else [host]
    text = f"""[federation]
name = "{name}"
rounds = {rounds}
min_labs = {min_labs}
secure = {str(secure).lower()}
stage_timeout = {stage_timeout}

[training]
local_epochs = 1
batch_size = 16
learning_rate = 0.1

[strategy]
name = "fedavg"

[model]
name = "logistic"

[data]
dataset = "heart-disease"
standardize = "{standardize}"

[server]
address = "{address}"
hosts = {hosts!r}
""".replace("'", '"')
    for lab in labs:
        text += f'\n[[labs]]\nname = "{lab}"\n'
    return text


def hospital_file(dest: Path, hospital: str) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / hd.data_file(hospital).name
    if not path.exists():
        shutil.copyfile(hd.data_file(hospital), path)
    return path


class Proc:
    """A fedlab command running in the background, its output in a file."""

    def __init__(self, name: str, args: Sequence[str], log: Path, env: dict[str, str],
                 prefix: Sequence[str] = ()) -> None:
        self.name = name
        self.log = log
        self.args = list(args)
        with open(log, "wb") as f:
            self.popen = subprocess.Popen([*prefix, *FEDLAB, *args], stdout=f,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=env)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: str, timeout: float, *, count: int = 1) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            found = list(rx.finditer(self.text()))
            if len(found) >= count:
                return found[count - 1]
            if self.popen.poll() is not None:
                found = list(rx.finditer(self.text()))
                if len(found) >= count:
                    return found[count - 1]
                raise AssertionError(f"{self.name} exited ({self.popen.returncode}) before "
                                     f"{pattern!r}:\n{self.text()[-3000:]}")
            time.sleep(0.2)
        raise AssertionError(f"{self.name}: no {pattern!r} within {timeout:.0f} s:\n"
                             f"{self.text()[-3000:]}")

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"{self.name} still running after {timeout:.0f} s:\n"
                                 f"{self.text()[-3000:]}") from exc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)
            try:
                return self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
                raise AssertionError(f"{self.name} did not stop within {timeout:.0f} s "
                                     f"after signal {sig}") from None
        return self.popen.returncode


def env_for(tmp: Path) -> dict[str, str]:
    """Environment of every process a test starts: its temporary files (worker socket,
    Flower's home) under ``tmp``, which also marks them for the leftover check."""
    (tmp / "t").mkdir(exist_ok=True)
    env = dict(os.environ)
    env["TMPDIR"] = str(tmp / "t")
    env["FEDLAB_TEST_MARK"] = str(tmp)
    env.pop("FEDLAB_TEST_PLAIN", None)
    return env


def leftovers(mark: str) -> list[str]:
    """Live processes whose environment carries ``FEDLAB_TEST_MARK=mark`` (from /proc)."""
    needle = f"FEDLAB_TEST_MARK={mark}".encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            state = stat[stat.rfind(")") + 2:].split()[0]
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in environ.split(b"\0") and state != "Z":
            out.append(f"{entry} {cmd[:200]}")
    return out


def wait_no_leftovers(mark: str, timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    left = leftovers(mark)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = leftovers(mark)
    return left
