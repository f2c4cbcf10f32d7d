"""ServerApp of the stock baselines. ``flwr run`` prints no per-round timing, so each
round appends a timestamp to the file named in the job.

``floor``: R rounds of one exchange each with stock ``Grid.send_and_receive``.
``quickstart``: Flower's FedAvg (Message API), train then federated evaluation each
round, as the quickstart runs it (``evaluate_fn`` stamps the end of each round).
"""

from __future__ import annotations

import json
import time

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    with open(str(context.run_config["job"]), encoding="utf-8") as f:
        job = json.load(f)
    n = int(job["num_nodes"])
    times = open(job["times"], "a", encoding="utf-8")  # noqa: SIM115 (closed below)

    def stamp(rnd: int) -> None:
        times.write(json.dumps({"round": rnd, "t": time.time()}) + "\n")
        times.flush()

    try:
        while len(list(grid.get_node_ids())) < n:
            time.sleep(0.5)
        from stockdeploy.task import initial_weights

        arrays = ArrayRecord(initial_weights(job["config"]))
        if job["mode"] == "floor":
            stamp(0)
            for rnd in range(1, int(job["rounds"]) + 1):
                msgs = [Message(RecordDict({"arrays": arrays,
                                            "config": ConfigRecord({"round": rnd})}),
                                dst_node_id=node, message_type="train")
                        for node in grid.get_node_ids()]
                replies = list(grid.send_and_receive(msgs, timeout=600))
                assert len(replies) == len(msgs) and not any(r.has_error() for r in replies)
                stamp(rnd)
        else:
            from flwr.serverapp.strategy import FedAvg

            def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
                stamp(server_round)
                return None

            strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=n,
                              min_evaluate_nodes=n, min_available_nodes=n)
            result = strategy.start(grid=grid, initial_arrays=arrays,
                                    num_rounds=int(job["rounds"]), evaluate_fn=evaluate_fn)
            acc = {int(r): float(m["eval_acc"])
                   for r, m in result.evaluate_metrics_clientapp.items() if "eval_acc" in m}
            times.write(json.dumps({"eval_acc": acc}) + "\n")
        times.write(json.dumps({"done": True}) + "\n")
    finally:
        times.close()
