"""fedlab's Flower ClientApp: thin glue from Flower messages to the lab's worker.

In simulation each Ray actor keeps one warm :class:`~client.lab.LabWorker` per
virtual lab (data, compiled model, identity key), built on the lab's first message
and reused for every later one. Secure-aggregation state travels in the node's
``Context.state``, so it does not matter which actor serves the next message.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.lab import LabWorker, Reply
from fedlab import codec
from fedlab.errors import ConfigError
from fedlab.job import load_job
from fedlab.updates import roster_from_hex

log = logging.getLogger(__name__)

app = ClientApp()

_WORKERS: dict[tuple[str, int], LabWorker] = {}


def _load_identity(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 identity key")
    return key


def worker_for(context: Context) -> LabWorker:
    """The warm worker of the lab this node simulates (built on first use)."""
    job_path = str(context.run_config["job"])
    index = int(context.node_config["partition-id"])
    key = (job_path, index)
    worker = _WORKERS.get(key)
    if worker is None:
        from fedlab.task import load_simulation_lab

        job = load_job(job_path)
        cfg = job.config()
        lab = job.labs[index]
        data = load_simulation_lab(cfg, index)
        identity = _load_identity(Path(job.keys_dir) / f"{lab}.key")
        worker = LabWorker(cfg, lab, data, identity, roster_from_hex(job.roster))
        _WORKERS[key] = worker
    return worker


def to_message(msg: Message, reply: Reply) -> Message:
    content = RecordDict({"meta": ConfigRecord(reply.meta)})
    if reply.metrics:
        content["metrics"] = MetricRecord(reply.metrics)
    if reply.vector is not None:
        content["update"] = codec.to_record(reply.vector)
    return Message(content, reply_to=msg)


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    worker = worker_for(context)
    return to_message(msg, worker.hello(str(msg.content["cfg"]["run"])))


@app.train("round")
def train_round(msg: Message, context: Context) -> Message:
    worker = worker_for(context)
    cfg = msg.content["cfg"]
    global_vec = codec.from_record(msg.content["model"], length=worker.size,
                                   dtype=np.float32)
    return to_message(msg, worker.plain_round(str(cfg["run"]), int(cfg["round"]), global_vec))


@app.evaluate("final")
def final(msg: Message, context: Context) -> Message:
    worker = worker_for(context)
    global_vec = codec.from_record(msg.content["model"], length=worker.size,
                                   dtype=np.float32)
    return to_message(msg, worker.final(global_vec))
