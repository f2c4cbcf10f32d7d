"""ClientApp of the stock SecAgg+ baseline: a NumPyClient that returns a fixed random
vector, with Flower's ``secaggplus_mod``. Two extra mods, neither of which touches the
messages: one routes plain (non-SecAgg+) train messages around ``secaggplus_mod`` (which
raises a KeyError on them), one appends each message's handling time to a file."""

from __future__ import annotations

import time

from flwr.app import Context, Message
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from stocksecagg.task import NUM_EXAMPLES, append_jsonl, load_job, synthetic_vector


class SyntheticClient(NumPyClient):
    def __init__(self, partition: int, params: int) -> None:
        self.partition = partition
        self.params = params

    def fit(self, parameters, config):  # type: ignore[no-untyped-def]
        return [synthetic_vector(self.partition, self.params)], NUM_EXAMPLES, {}


def client_fn(context: Context):  # type: ignore[no-untyped-def]
    job = load_job(str(context.run_config["job"]))
    partition = int(context.node_config["partition-id"])
    synthetic_vector(partition, int(job["params"]))  # made once per client process
    return SyntheticClient(partition, int(job["params"])).to_client()


def _stage(msg: Message) -> str:
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    if configs is None:
        return "fit"
    return str(configs.get(Key.STAGE, "?"))


def secagg_if_asked(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def timing(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    stage = _stage(msg)
    t0 = time.perf_counter()
    reply = call_next(msg, ctxt)
    seconds = time.perf_counter() - t0
    job = load_job(str(ctxt.run_config["job"]))
    append_jsonl(str(job.get("lab_times", "")), {
        "node": int(ctxt.node_config["partition-id"]), "group": msg.metadata.group_id,
        "stage": stage, "s": seconds, "end": time.time()})
    return reply


app = ClientApp(client_fn=client_fn, mods=[timing, secagg_if_asked])
