"""ClientApp of the stock baselines.

``floor``: returns the received arrays at once; the module imports only Flower, so the
``flwr-clientapp`` process Flower starts per message costs what Flower itself costs.

``quickstart``: as Flower's TensorFlow quickstart: every message loads the node's data
(its file is in the node config, ``data-file``), builds and compiles a fresh Keras model,
sets the received weights and fits (train) or evaluates (evaluate).
"""

from __future__ import annotations

import json

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def _mode(context: Context) -> str:
    with open(str(context.run_config["job"]), encoding="utf-8") as f:
        return str(json.load(f)["mode"])


@app.train()
def train(msg: Message, context: Context) -> Message:
    if _mode(context) == "floor":
        return Message(content=RecordDict({"arrays": msg.content["arrays"],
                                           "metrics": MetricRecord({"num-examples": 1})}),
                       reply_to=msg)
    from stockdeploy.task import load_data, load_model

    x_train, y_train, _, _ = load_data(context)
    model = load_model(context)
    model.set_weights(msg.content["arrays"].to_numpy_ndarrays())
    tr = model.fedlab_training
    history = model.fit(x_train, y_train, epochs=tr.local_epochs, batch_size=tr.batch_size,
                        verbose=0)
    metrics = {"num-examples": len(x_train), "train_loss": float(history.history["loss"][-1])}
    return Message(content=RecordDict({"arrays": ArrayRecord(model.get_weights()),
                                       "metrics": MetricRecord(metrics)}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from stockdeploy.task import load_data, load_model

    _, _, x_test, y_test = load_data(context)
    model = load_model(context)
    model.set_weights(msg.content["arrays"].to_numpy_ndarrays())
    loss, acc = model.evaluate(x_test, y_test, verbose=0)
    metrics = {"eval_loss": float(loss), "eval_acc": float(acc), "num-examples": len(x_test)}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
