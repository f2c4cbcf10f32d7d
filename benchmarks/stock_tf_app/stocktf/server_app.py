"""ServerApp of the stock baseline: Flower's own FedAvg (Message API) over every node,
train then federated evaluation each round, as in the quickstart. ``flwr run`` prints
no per-round timing, so ``evaluate_fn`` (called before round 1 and after each round)
appends a timestamp per round to the file named in the job; the per-round federated
evaluation accuracy is written at the end."""

from __future__ import annotations

import json
import time

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from stocktf.task import initial_weights, load_cfg, load_job

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    job_path = str(context.run_config["job"])
    job = load_job(job_path)
    cfg = load_cfg(job_path)
    n = int(job["num_labs"])
    times = open(job["times"], "a", encoding="utf-8")  # noqa: SIM115 (closed below)

    def stamp(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        times.write(json.dumps({"round": server_round, "t": time.time()}) + "\n")
        times.flush()
        return None

    # floor mode (see client_app): one exchange per round, no federated evaluation
    floor = bool(job.get("floor"))
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0 if floor else 1.0,
                      min_train_nodes=n, min_evaluate_nodes=0 if floor else n,
                      min_available_nodes=n)
    try:
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(initial_weights(job_path)),
                                num_rounds=cfg.rounds, evaluate_fn=stamp)
        acc = {int(r): float(m["eval_acc"])
               for r, m in result.evaluate_metrics_clientapp.items() if "eval_acc" in m}
        if floor:
            acc = {0: 0.0}  # nothing was trained or evaluated
        times.write(json.dumps({"done": True, "eval_acc": acc}) + "\n")
    finally:
        times.close()
