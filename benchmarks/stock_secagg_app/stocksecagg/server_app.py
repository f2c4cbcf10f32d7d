"""ServerApp of the stock SecAgg+ baseline: legacy FedAvg in a ``LegacyContext`` run by
``DefaultWorkflow`` with ``SecAggPlusWorkflow`` as its fit workflow (or the default
plain fit workflow when ``secagg`` is false); no federated evaluation.

``flwr run`` prints no per-round timing, so the strategy's ``evaluate_fn`` (called after
initialisation and after every round) appends a timestamp per round to the ``times``
file of the job, and the Grid is wrapped to record every exchange (start, end, reply
bytes per node) there too. Nothing else changes what Flower does."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.common import ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from stocksecagg.task import append_jsonl, load_job, synthetic_vector

app = ServerApp()


def _payload_bytes(msg: Message) -> int:
    """Bytes of arrays and byte values in a reply (what travels, roughly)."""
    if not msg.has_content():
        return 0
    total = 0
    for rec in msg.content.array_records.values():
        for arr in rec.values():
            total += len(arr.data)
    for rec in msg.content.config_records.values():
        for value in rec.values():
            if isinstance(value, bytes | str):
                total += len(value)
            elif isinstance(value, list):
                total += sum(len(v) for v in value if isinstance(v, bytes | str))
    return total


class TimedGrid:
    """Delegates to Flower's Grid; records each send_and_receive."""

    def __init__(self, grid: Any, times: str) -> None:
        self._grid = grid
        self._times = times

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        stage = "fit"
        if messages:
            configs = messages[0].content.config_records.get(RECORD_KEY_CONFIGS)
            stage = "fit" if configs is None else str(configs.get(Key.STAGE, "?"))
        t0 = time.time()
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        t1 = time.time()
        sizes = {str(m.metadata.src_node_id): _payload_bytes(m) for m in replies}
        append_jsonl(self._times, {"exchange": stage, "t0": t0, "t1": t1, "sent": len(messages),
                                   "replies": len(replies),
                                   "errors": sum(1 for m in replies if m.has_error()),
                                   "bytes": sizes})
        return replies


@app.main()
def main(grid: Any, context: Context) -> None:
    job = load_job(str(context.run_config["job"]))
    params, labs, rounds = int(job["params"]), int(job["labs"]), int(job["rounds"])
    times = str(job["times"])
    final: dict[str, Any] = {}

    def stamp(server_round: int, parameters: Any, config: Any) -> None:
        append_jsonl(times, {"round": server_round, "t": time.time()})
        if server_round == rounds:
            final["vec"] = parameters[0]
        return None

    strategy = FedAvg(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=labs,
        min_available_clients=labs,
        initial_parameters=ndarrays_to_parameters([np.zeros(params, dtype=np.float32)]),
        evaluate_fn=stamp,
    )
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds),
                           strategy=strategy)
    fit_workflow = None
    if job["secagg"]:
        fit_workflow = SecAggPlusWorkflow(num_shares=int(job["num_shares"]),
                                          reconstruction_threshold=int(job["threshold"]),
                                          timeout=float(job["timeout"]))
    DefaultWorkflow(fit_workflow=fit_workflow)(TimedGrid(grid, times), legacy)
    row: dict[str, Any] = {"done": True}
    if job.get("check") and "vec" in final:
        got = np.asarray(final["vec"], dtype=np.float64)
        want = np.zeros(params, dtype=np.float64)
        for p in range(labs):
            want += synthetic_vector(p, params)
        want /= labs
        row["max_abs_error"] = float(np.max(np.abs(got - want)))
    append_jsonl(times, row)
