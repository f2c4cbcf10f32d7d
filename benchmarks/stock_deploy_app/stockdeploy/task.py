"""Data and model of the quickstart baseline: the same rows and model as fedlab's job.

Like the quickstart's ``task.py``: ``load_model()`` builds and compiles a new Keras
model every call and ``load_data()`` reads the node's data. The rows come from
``fedlab.task.load_lab`` on the node's own file (same split as ``fedlab client``), the
model and training settings from the same federation.toml.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from flwr.app import Context

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _cfg(context: Context) -> Any:
    from fedlab.config import load_config

    with open(str(context.run_config["job"]), encoding="utf-8") as f:
        return load_config(json.load(f)["config"])


def load_data(context: Context) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from fedlab.task import load_lab

    cfg = _cfg(context)
    lab = load_lab(cfg, str(context.node_config["lab"]), str(context.node_config["data-file"]))
    return (lab.x_train.astype(np.float32), lab.y_train.astype(np.float32),
            lab.x_test.astype(np.float32), lab.y_test.astype(np.float32))


def load_model(context: Context) -> Any:
    import keras

    from fedlab.models import build_model
    from fedlab.task import task_shape

    cfg = _cfg(context)
    shape = task_shape(cfg)
    keras.backend.clear_session()
    model = build_model(cfg.model, shape.num_features, shape.num_classes, seed=cfg.seed)
    tr = cfg.training
    optimizer = (keras.optimizers.SGD(tr.learning_rate) if tr.optimizer == "sgd"
                 else keras.optimizers.Adam(tr.learning_rate))
    binary = shape.num_classes == 2
    model.compile(optimizer=optimizer,
                  loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fedlab_training = tr
    return model


def initial_weights(config_path: str) -> list[np.ndarray]:
    from fedlab.config import load_config
    from fedlab.models import build_model
    from fedlab.task import task_shape

    cfg = load_config(config_path)
    shape = task_shape(cfg)
    model = build_model(cfg.model, shape.num_features, shape.num_classes, seed=cfg.seed)
    return [np.asarray(w, dtype=np.float32) for w in model.get_weights()]
