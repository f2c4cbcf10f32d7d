"""The run folder: what every run (simulated or deployed) leaves behind.

``runs/<name>-<timestamp>/``:

- ``federation.toml``  the config as used
- ``metrics.jsonl``    one JSON line per round and lab (and per round for the server)
- ``summary.json``     final results under stable keys (see README, "summary.json")
- ``audit.jsonl``      every event, each line chained to the previous one by SHA-256
- ``model.keras``, ``model.sha256``   the final global model and its weights hash
- ``checkpoints/``     the global model after each round (``round-NNNN.npz`` + hash)
- ``report.md`` + ``*.png``   human report with plots

Writes are atomic (write to a temporary file, fsync, rename) so a crash never leaves
a half-written file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fedlab.errors import RunError

GENESIS = "0" * 64


def new_run_dir(parent: str | Path, name: str) -> Path:
    """Create ``parent/<name>-<UTC timestamp>`` (unique)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = Path(parent) / f"{safe}-{stamp}"
    path = base
    i = 1
    while True:
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            i += 1
            path = Path(f"{base}-{i}")


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=_json_default, allow_nan=True)


class AuditLog:
    """Append-only, hash-chained event log: each line carries the SHA-256 of the previous line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.prev = GENESIS
        self.seq = 0
        if path.exists():
            lines = path.read_bytes().splitlines()
            if lines:
                self.prev = hashlib.sha256(lines[-1]).hexdigest()
                self.seq = len(lines)

    def record(self, event: str, **fields: Any) -> None:
        entry = {"seq": self.seq, "time": datetime.now(UTC).isoformat(), "event": event,
                 "prev": self.prev, **fields}
        line = dumps(entry).encode()
        with open(self.path, "ab") as f:
            f.write(line + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self.prev = hashlib.sha256(line).hexdigest()
        self.seq += 1


def verify_audit(path: Path) -> int:
    """Check the hash chain of an audit log; returns the number of lines, raises RunError naming
    the first line that does not match."""
    if not path.exists():
        raise RunError(f"{path}: no audit log here; give a run folder written by fedlab")
    prev = GENESIS
    lines = path.read_bytes().splitlines()
    for i, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise RunError(f"{path}: line {i} is not valid JSON: the log was edited") from exc
        if not isinstance(entry, dict) or entry.get("prev") != prev or entry.get("seq") != i - 1:
            raise RunError(f"{path}: line {i} does not follow line {i - 1} (its 'prev' hash or "
                           "sequence number does not match): the log was edited, reordered or "
                           "cut here")
        prev = hashlib.sha256(line).hexdigest()
    return len(lines)


class RunFolder:
    """Writer of one run folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "checkpoints").mkdir(exist_ok=True)
        self.audit = AuditLog(self.path / "audit.jsonl")
        self._metrics = self.path / "metrics.jsonl"

    def write_config(self, toml_text: str) -> None:
        atomic_write(self.path / "federation.toml", toml_text.encode())

    def metric(self, **row: Any) -> None:
        row.setdefault("time", time.time())
        with open(self._metrics, "a", encoding="utf-8") as f:
            f.write(dumps(row) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        if not self._metrics.exists():
            return []
        return [json.loads(line) for line in self._metrics.read_text().splitlines() if line]

    def write_json(self, name: str, obj: Mapping[str, Any]) -> None:
        atomic_write(self.path / name, (json.dumps(obj, indent=2, sort_keys=True,
                                                   default=_json_default) + "\n").encode())

    def checkpoint(self, round_: int, weights: Sequence[np.ndarray], state: Mapping[str, Any],
                   weights_sha256: str) -> Path:
        """Save the global model after ``round_`` (and server state) atomically."""
        import io

        buf = io.BytesIO()
        arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(weights)}
        arrays.update({f"state_{k}": np.asarray(v) for k, v in state.items()})
        np.savez(buf, **arrays)
        path = self.path / "checkpoints" / f"round-{round_:04d}.npz"
        atomic_write(path, buf.getvalue())
        atomic_write(path.with_suffix(".sha256"), (weights_sha256 + "\n").encode())
        return path
