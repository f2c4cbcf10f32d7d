"""ClientApp of the stock baseline, in the style of Flower's TensorFlow quickstart:
every message clears the Keras session, builds and compiles a new model, sets the
received weights and calls ``model.fit`` / ``model.evaluate`` with ``verbose=0``.

With ``"cache_model": true`` in the job file, one compiled model is kept per actor
process instead (the cheapest fix a Flower user could make; reported as a separate
variant, not as "stock").

With ``"floor": true`` the ClientApp answers a train message with the arrays it
received, at once, importing nothing heavy: what remains of a round is Flower's own
cost (Ray actors, the in-process SuperLink, message (de)serialisation) for one
exchange with every node, the floor under any simulated round of this job.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from stocktf.task import load_cfg, load_data, load_job, load_model

app = ClientApp()

_CACHED: dict[str, Any] = {}


def _model(job_path: str) -> Any:
    if load_job(job_path).get("cache_model"):
        model = _CACHED.get(job_path)
        if model is None:
            model = _CACHED[job_path] = load_model(job_path)
        return model
    import keras

    keras.backend.clear_session()  # as the quickstart does before building its model
    return load_model(job_path)


@app.train()
def train(msg: Message, context: Context) -> Message:
    job_path = str(context.run_config["job"])
    if load_job(job_path).get("floor"):
        return Message(content=RecordDict({"arrays": msg.content["arrays"],
                                           "metrics": MetricRecord({"num-examples": 1})}),
                       reply_to=msg)
    x_train, y_train, _, _ = load_data(job_path, int(context.node_config["partition-id"]))
    model = _model(job_path)
    model.set_weights(msg.content["arrays"].to_numpy_ndarrays())
    tr = load_cfg(job_path).training
    history = model.fit(x_train, y_train, epochs=tr.local_epochs, batch_size=tr.batch_size,
                        verbose=0)
    metrics = {"num-examples": len(x_train), "train_loss": float(history.history["loss"][-1])}
    content = RecordDict({"arrays": ArrayRecord(model.get_weights()),
                          "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    job_path = str(context.run_config["job"])
    _, _, x_test, y_test = load_data(job_path, int(context.node_config["partition-id"]))
    model = _model(job_path)
    model.set_weights(msg.content["arrays"].to_numpy_ndarrays())
    loss, acc = model.evaluate(x_test, y_test, verbose=0)
    metrics = {"eval_loss": float(loss), "eval_acc": float(acc), "num-examples": len(x_test)}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
