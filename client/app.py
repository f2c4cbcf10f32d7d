"""fedlab's Flower ClientApp: thin glue from Flower messages to the lab's worker.

Every message becomes one call ``handle(kind, cfg, vector, state)`` on the lab's
:class:`~client.lab.LabWorker`:

- in simulation each Ray actor keeps one warm worker per virtual lab (data, compiled
  model, identity key), built on the lab's first message and reused afterwards;
- in deployment the worker is a long-lived process owned by ``fedlab client`` and the
  ClientApp forwards the call over a local socket (``client.worker``), so the process
  Flower starts per message imports no TensorFlow and never sees data or keys.

In simulation a virtual lab's state between messages (secure-aggregation keys, privacy
counters, preprocessing results; encrypted under its identity key) lives in a file of
the run's private work folder, read and written under a lock on that lab
(:func:`lab_state`), so it does not matter which actor serves the next message, and two
messages of one lab never run on the same state at once. Flower's engine can hand a lab
its next message while a late one is still running (after a stage timeout); with the
state in ``Context.state`` the late reply's older state could overwrite the newer one
and the lab was refused the round after. The deployment worker keeps the state itself.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.reply import Reply
from fedlab import codec
from fedlab.errors import ConfigError

log = logging.getLogger(__name__)

app = ClientApp()

_WORKERS: dict[tuple[str, int], object] = {}
STATE_DIR = "state"  # beside the virtual labs' keys: <job keys_dir>/../state/


@dataclass
class StateSlot:
    """A lab's state as read at the start of a message; set ``state`` to keep a new one."""

    state: bytes | None


@contextmanager
def lab_state(folder: Path, run_id: int, lab_index: int) -> Iterator[StateSlot]:
    """Hold the lock of one virtual lab's state for one message of one Flower run.

    The state file is named by Flower's run id (as ``Context.state`` is per run), so a
    runtime restarted after a crash starts from no state, as the server starts a new
    secure-aggregation session. Written atomically (temporary file, ``os.replace``), 0600;
    the lock is ``flock`` on a separate file, released when the message is answered (or
    when the process holding it dies)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"run{run_id}-lab{lab_index}.state"
    fd = os.open(folder / f"lab{lab_index}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            before = path.read_bytes()
        except FileNotFoundError:
            before = None
        slot = StateSlot(before)
        yield slot
        if slot.state is not None and slot.state != before:
            tmp = path.with_name(path.name + ".tmp")
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                f.write(slot.state)
            os.replace(tmp, path)
    finally:
        os.close(fd)  # releases the lock


def _local_worker(context: Context) -> object:
    """The warm in-process worker of the lab this simulated node plays (built on first use)."""
    job_path = str(context.run_config["job"])
    index = int(context.node_config["partition-id"])
    key = (job_path, index)
    worker = _WORKERS.get(key)
    if worker is None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from client.lab import LabWorker
        from fedlab.job import load_job
        from fedlab.task import load_simulation_lab
        from fedlab.updates import roster_from_hex

        job = load_job(job_path)
        cfg = job.config()
        lab = job.labs[index]
        key_path = Path(job.keys_dir) / f"{lab}.key"
        identity = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(identity, Ed25519PrivateKey):
            raise ConfigError(f"{key_path} is not an Ed25519 identity key")
        roster = roster_from_hex(job.roster)
        if job.synthetic_params:
            from client.lab import SyntheticLabWorker

            worker = SyntheticLabWorker(cfg, lab, job.synthetic_params, identity, roster)
        else:
            worker = LabWorker(cfg, lab, load_simulation_lab(cfg, index), identity, roster)
        if cfg.privacy.mode != "off":
            # Each virtual lab's own record of its privacy spending, in the run folder (all
            # labs are this one machine): a resumed run continues from it (fedlab.ledger).
            from fedlab.ledger import LedgerStore

            worker.ledger_store = LedgerStore(Path(job.run_dir) / "privacy", cfg.name,
                                              per_run_folder=True)
        worker.state_dir = Path(job.keys_dir).parent / STATE_DIR  # type: ignore[attr-defined]
        _WORKERS[key] = worker
    return worker


def _handle(kind: str, msg: Message, context: Context) -> Message:
    cfg = dict(msg.content["cfg"]) if "cfg" in msg.content else {}
    vector = None
    if "model" in msg.content:
        rec = msg.content["model"]
        vector = codec.array_of(rec["v"], "the server's model") if "v" in rec else None
    if "worker" in context.node_config:  # deployment: hand the work to the warm worker
        from client.worker import call_worker

        reply: Reply = call_worker(str(context.node_config["worker"]), kind, cfg, vector)
    else:
        worker = _local_worker(context)
        with lab_state(worker.state_dir, msg.metadata.run_id,  # type: ignore[attr-defined]
                       int(context.node_config["partition-id"])) as slot:
            reply = worker.handle(kind, cfg, vector, slot.state)  # type: ignore[attr-defined]
            if reply.state is not None:
                slot.state = reply.state
        reply.state = None
    return to_message(msg, reply)


def to_message(msg: Message, reply: Reply) -> Message:
    content = RecordDict({"meta": ConfigRecord(reply.meta)})
    if reply.metrics:
        content["metrics"] = MetricRecord(reply.metrics)
    if reply.vector is not None:
        content["update"] = codec.to_record(np.ascontiguousarray(reply.vector))
    return Message(content, reply_to=msg)


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    return _handle("hello", msg, context)


@app.train("round")
def train_round(msg: Message, context: Context) -> Message:
    return _handle("round", msg, context)


@app.train("setup")
def setup(msg: Message, context: Context) -> Message:
    return _handle("setup", msg, context)


@app.train("share")
def share(msg: Message, context: Context) -> Message:
    return _handle("share", msg, context)


@app.train("unmask")
def unmask(msg: Message, context: Context) -> Message:
    return _handle("unmask", msg, context)


@app.evaluate("final")
def final(msg: Message, context: Context) -> Message:
    return _handle("final", msg, context)


@app.query("done")
def done(msg: Message, context: Context) -> Message:
    return _handle("done", msg, context)


@app.query("prep")
def prep(msg: Message, context: Context) -> Message:
    """Federated preprocessing before round 1 (client.prep)."""
    return _handle("prep", msg, context)
