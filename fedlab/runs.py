"""The run folder: what every run (simulated or deployed) leaves behind.

``runs/<name>-<timestamp>/``:

- ``federation.toml``  the config as used
- ``metrics.jsonl``    one JSON line per round and lab (and per round for the server)
- ``summary.json``     final results under stable keys (see README, "summary.json")
- ``audit.jsonl``      every event, each line chained to the previous one by SHA-256
- ``model.keras``, ``model.sha256``   the final global model and its weights hash
- ``checkpoints/``     the global model after each round (``round-NNNN.npz`` + hash)
- ``report.md`` + ``*.png``   human report with plots
- ``tensorboard/``     TensorBoard event files, per-round scalars (``server.board``)
- ``privacy/``         simulation with DP: each virtual lab's privacy ledger (``fedlab.ledger``)

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


def _entry_hash(entry: Mapping[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(dumps(body).encode()).hexdigest()


class AuditLog:
    """Append-only, hash-chained event log.

    Each line carries ``prev`` (the ``hash`` of the line before it; zeros for the first)
    and its own ``hash`` (SHA-256 of its canonical JSON without ``hash``), so an edited
    line fails its own hash, and a deleted, inserted or reordered line breaks the chain
    where it happened. ``audit.head`` (written atomically after every line) holds the
    sequence number and hash of the last line, so cutting lines off the end shows too.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.head = path.with_name(path.stem + ".head")
        self.prev = GENESIS
        self.seq = 0
        if path.exists():
            lines = path.read_bytes().splitlines()
            if lines:
                try:
                    last = json.loads(lines[-1])
                    self.prev = str(last["hash"])
                    self.seq = int(last["seq"]) + 1
                except (ValueError, KeyError, TypeError) as exc:
                    raise RunError(f"{path}: the last line is damaged ({exc}); run "
                                   "'fedlab audit verify' on this run folder") from exc

    def record(self, event: str, **fields: Any) -> None:
        entry: dict[str, Any] = {"seq": self.seq, "time": datetime.now(UTC).isoformat(),
                                 "event": event, "prev": self.prev, **fields}
        entry["hash"] = _entry_hash(entry)
        line = dumps(entry).encode()
        with open(self.path, "ab") as f:
            f.write(line + b"\n")
            f.flush()
            os.fsync(f.fileno())
        atomic_write(self.head, dumps({"seq": self.seq, "hash": entry["hash"]}).encode() + b"\n")
        self.prev = entry["hash"]
        self.seq += 1


def verify_audit(path: Path) -> int:
    """Check an audit log; returns its number of lines, or raises RunError naming the first
    line that does not match (edited, inserted, deleted, reordered) or the cut-off end."""
    if not path.exists():
        raise RunError(f"{path}: no audit log here; give a run folder written by fedlab")
    prev = GENESIS
    lines = path.read_bytes().splitlines()
    for i, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise RunError(f"{path}: line {i} is not valid JSON: the log was edited here") from exc
        if not isinstance(entry, dict) or entry.get("hash") != _entry_hash(entry):
            raise RunError(f"{path}: line {i} does not match its own hash: it was edited")
        if entry.get("prev") != prev or entry.get("seq") != i - 1:
            raise RunError(f"{path}: line {i} does not follow line {i - 1} (its 'prev' hash or "
                           "sequence number does not match): a line was deleted, inserted or "
                           "moved here")
        prev = entry["hash"]
    head_path = path.with_name(path.stem + ".head")
    try:
        head = json.loads(head_path.read_text())
    except (OSError, ValueError) as exc:
        raise RunError(f"{head_path}: missing or damaged, so a cut-off end cannot be ruled "
                       "out") from exc
    if head.get("seq") != len(lines) - 1 or head.get("hash") != prev:
        raise RunError(f"{path}: the log ends at line {len(lines)} but {head_path.name} "
                       f"records line {int(head.get('seq', -2)) + 1}: lines were cut off the "
                       "end or the log was replaced")
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

    def drop_metrics_after(self, round_: int) -> None:
        """Remove metrics rows written by rounds after ``round_`` (a resumed run redoes them).
        Evaluation rows of round r are written while round r + 1 runs, so they go too."""
        rows = self.metrics()
        keep = [r for r in rows
                if (r.get("kind") == "eval" and int(r.get("round", 0)) < round_)
                or (r.get("kind") != "eval" and int(r.get("round", 0)) <= round_)]
        atomic_write(self._metrics, "".join(dumps(r) + "\n" for r in keep).encode())

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


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(round, path) of every checkpoint of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    out = []
    for p in folder.glob("round-*.npz"):
        try:
            out.append((int(p.stem.split("-")[1]), p))
        except (IndexError, ValueError):
            continue
    return sorted(out)


def load_checkpoint(path: Path) -> tuple[list[np.ndarray], dict[str, np.ndarray], str]:
    """Weights, server state and recorded weights hash of one checkpoint; RunError if its
    hash file is missing or does not match the weights (a damaged or edited checkpoint)."""
    from fedlab.codec import weights_hash

    try:
        with np.load(path) as z:
            keys = sorted((k for k in z.files if k.startswith("w") and k[1:].isdigit()),
                          key=lambda k: int(k[1:]))
            weights = [np.asarray(z[k], dtype=np.float32) for k in keys]
            state = {k.removeprefix("state_"): np.asarray(z[k]) for k in z.files
                     if k.startswith("state_")}
    except (OSError, ValueError, EOFError) as exc:
        raise RunError(f"{path}: checkpoint cannot be read ({exc})") from exc
    sha_path = path.with_suffix(".sha256")
    try:
        recorded = sha_path.read_text().strip()
    except OSError as exc:
        raise RunError(f"{sha_path}: missing; the checkpoint cannot be trusted") from exc
    actual = weights_hash(weights)
    if actual != recorded:
        raise RunError(f"{path}: weights hash {actual[:12]}... does not match {sha_path.name} "
                       f"({recorded[:12]}...): the checkpoint was damaged or edited")
    return weights, state, recorded


def verify_run(run_dir: str | Path) -> int:
    """Check a run folder: the audit chain, and every model hash the audit log records
    against the checkpoint of that round. Returns the number of audit lines; raises
    RunError naming the first line or file that does not match."""
    path = Path(run_dir)
    audit = path / "audit.jsonl"
    n = verify_audit(audit)
    checkpoints = dict(list_checkpoints(path))
    for i, line in enumerate(audit.read_bytes().splitlines(), start=1):
        entry = json.loads(line)
        if entry.get("event") != "round_completed":
            continue
        rnd = int(entry["round"])
        ckpt = checkpoints.get(rnd)
        if ckpt is None:
            raise RunError(f"{audit}: line {i} records round {rnd} but checkpoints/ has no "
                           f"round-{rnd:04d}.npz")
        _, _, recorded = load_checkpoint(ckpt)
        if recorded != entry.get("model_sha256"):
            raise RunError(f"{audit}: line {i} records model {str(entry.get('model_sha256'))[:12]}"
                           f"... for round {rnd}, but the checkpoint holds {recorded[:12]}...")
    return n
