"""A lab's own record of the differential privacy it has spent in a run.

The privacy counters a lab carries between messages (``client.lab.pack_state``) live in
whatever serves the lab: Flower's node state in simulation, the warm worker's memory in
deployment, both keyed by the protocol run id. A resumed run gets a new protocol run id
(``<run folder>.N``) and, in simulation, new node states, so those counters would start
again at zero and the lab's spent epsilon would be under-counted. A lab must not rely on
the server (nor on Flower) to remember what it has spent, so it also keeps a ledger file
of its own, written atomically after every round it trained and before the round's
update leaves the lab:

- deployment: ``<lab kit>/state/privacy/<federation>/<run>.json`` in a folder of mode
  0700, owned by the lab's worker (the federation's name from the kit's signed roster,
  ``<run>`` the base run id: the server's run folder name without the ``.N`` of a
  resumed incarnation);
- simulation (every virtual lab on one machine): ``<run folder>/privacy/<lab>.json``.

Each file (mode 0600) holds the lab's cumulative counters (DP-SGD steps, lab-level
rounds), the parameters they were spent with (mode, noise multiplier, sampling rate,
delta, accountant) and the epsilon they amount to. When the lab handles a message it
takes the larger of each counter from its carried state and from its ledger, so
neither a lost state nor a lost file makes it forget spending the other recorded. After
a trained round it adds what the round spent to what the file holds *now* (under an
exclusive lock on the folder), so two processes answering the same message never count
one round for two. Spending recorded with other parameters cannot simply be added to
(the accountant composes steps of one mechanism): the lab then refuses to train.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedlab.errors import KitError, ProtocolError, RunError
from fedlab.runs import atomic_write

FORMAT = "fedlab-privacy-ledger/1"
COUNTERS = ("steps", "rounds")  # DP-SGD steps (record), noisy rounds (lab)
PARAMS = ("mode", "noise_multiplier", "sample_rate", "delta", "accountant")
_INCARNATION = re.compile(r"\.\d+$")


def base_run_id(run_id: str) -> str:
    """The run a protocol run id belongs to: ``<folder>`` for ``<folder>`` and for a resumed
    incarnation ``<folder>.N`` (run folder names end in a digit after ``-``, never ``.N``)."""
    return _INCARNATION.sub("", run_id)


def _file_name(name: str) -> str:
    """``name`` as one safe path component; a short hash is added when characters had to
    be replaced, so two different names never share a file."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip(".-")
    if safe == name and safe:
        return safe
    return f"{safe or 'x'}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def _private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700; refuse one of another user."""
    try:
        missing = []
        at = path
        while not at.exists():
            missing.append(at)
            at = at.parent
        for folder in reversed(missing):  # every folder created here is 0700, not just the last
            folder.mkdir(mode=0o700, exist_ok=True)
        st = path.stat()
        if st.st_uid != os.getuid():
            raise KitError(f"{path} belongs to another user; the lab's privacy ledger must be "
                           "kept in a folder of the lab's own user")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, 0o700)
    except OSError as exc:
        raise KitError(f"cannot create the lab's privacy ledger folder {path} ({exc}); the "
                       "lab needs a folder of its own where it may write") from exc


class LedgerStore:
    """Where one lab keeps its privacy ledgers.

    ``per_run_folder``: ``root`` lies inside one run's folder (simulation), so a ledger is
    ``root/<lab>.json``; otherwise (deployment) ``root/<federation>/<base run id>.json``.
    """

    def __init__(self, root: str | Path, federation: str, *, per_run_folder: bool = False) -> None:
        self.root = Path(root)
        self.federation = federation
        self.per_run_folder = per_run_folder

    def prepare(self) -> None:
        """Create the folder now, so a lab that could not keep its ledger says so at start."""
        _private_dir(self.root)

    def ledger(self, run_id: str, lab: str) -> LabLedger:
        run = base_run_id(run_id)
        if self.per_run_folder:
            path = self.root / f"{_file_name(lab)}.json"
        else:
            path = self.root / _file_name(self.federation) / f"{_file_name(run)}.json"
        return LabLedger(path, federation=self.federation, run=run, lab=lab,
                         check_run=not self.per_run_folder)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return bool(a == b)


class LabLedger:
    """One lab's privacy ledger for one run (see the module docstring)."""

    def __init__(self, path: Path, *, federation: str, run: str, lab: str,
                 check_run: bool = True) -> None:
        self.path = path
        self.federation = federation
        self.run = run
        self.lab = lab
        self.check_run = check_run

    # -- reading ---------------------------------------------------------------------------
    def read(self) -> dict[str, Any]:
        """The ledger's content ({} if the lab has not trained in this run yet)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise RunError(f"lab {self.lab}: cannot read its privacy ledger {self.path} "
                           f"({exc}); it will not train without knowing what it has spent") from exc
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} file")
            for key in COUNTERS:
                value = data.get(key, 0)
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"{key} must be an integer >= 0, got {value!r}")
        except ValueError as exc:
            raise RunError(f"lab {self.lab}: its privacy ledger {self.path} is damaged ({exc}); "
                           "it cannot tell how much privacy this run has spent and will not "
                           "train. Restore the file from a backup, or start a new run") from exc
        wanted = {"lab": self.lab, "federation": self.federation}
        if self.check_run:
            wanted["run"] = self.run
        for key, value in wanted.items():
            if data.get(key) != value:
                raise RunError(f"lab {self.lab}: the privacy ledger {self.path} is of {key} "
                               f"{data.get(key)!r}, not {value!r}; it was copied or moved here. "
                               "Put it back where it belongs")
        return data

    def counters(self, data: Mapping[str, Any] | None = None) -> dict[str, int]:
        data = self.read() if data is None else data
        return {k: int(data.get(k, 0)) for k in COUNTERS}

    def merge(self, counters: Mapping[str, int], params: Mapping[str, Any]) -> dict[str, int]:
        """The larger of each counter in ``counters`` (the lab's carried state) and in the
        ledger; refuses (ProtocolError) spending recorded with other DP parameters."""
        data = self.read()
        self.check_params(data, params)
        recorded = self.counters(data)
        return {k: max(int(counters.get(k, 0)), recorded[k]) for k in COUNTERS}

    def check_params(self, data: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        if not any(int(data.get(k, 0)) for k in COUNTERS):
            return  # nothing spent yet: any parameters will do
        changed = [f"{k} {data.get(k)!r} -> {params.get(k)!r}" for k in PARAMS
                   if not _same(data.get(k), params.get(k))]
        if changed:
            raise ProtocolError(
                f"lab {self.lab}: its privacy ledger {self.path} records spending in this run "
                f"with other DP parameters than the lab now uses ({'; '.join(changed)}: the "
                "lab's data or the federation's [privacy] settings changed mid-run). The "
                "accountant cannot add them up, so the lab does not train; start a new run")

    # -- writing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        _private_dir(self.path.parent)
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    def add(self, before: Mapping[str, int], after: Mapping[str, int], params: Mapping[str, Any],
            epsilon: float, epsilon_of: Callable[[Mapping[str, int]], float], *,
            run_id: str = "", round_: int | None = None) -> dict[str, int]:
        """Record that the lab went from counters ``before`` to ``after`` (one trained round,
        ``epsilon`` spent in all after it): the difference is added to what the ledger holds
        now (or to ``before`` if that is more; ``epsilon_of(counters)`` then gives the
        epsilon of the sum). Returns the counters written. Raises RunError if the file
        cannot be written: the round's update must then not leave the lab."""
        try:
            with self._locked() as dir_fd:
                data = self.read()
                self.check_params(data, params)
                recorded = self.counters(data)
                out = {k: max(recorded[k], int(before.get(k, 0)))
                       + max(0, int(after.get(k, 0)) - int(before.get(k, 0))) for k in COUNTERS}
                entry: dict[str, Any] = {
                    "format": FORMAT, "federation": self.federation, "run": self.run,
                    "lab": self.lab, **{k: params.get(k) for k in PARAMS}, **out,
                    "epsilon": float(epsilon) if out == {k: int(after.get(k, 0)) for k in COUNTERS}
                    else float(epsilon_of(out)),  # another process added spending meanwhile
                    "last": {"run_id": run_id, "round": round_,
                             "time": datetime.now(UTC).isoformat()},
                }
                atomic_write(self.path, (json.dumps(entry, indent=2, allow_nan=True)
                                         + "\n").encode(), mode=0o600)
                os.fsync(dir_fd)
                return out
        except OSError as exc:
            raise RunError(f"lab {self.lab}: cannot record its privacy spending in {self.path} "
                           f"({exc}); the round's update is withheld") from exc
