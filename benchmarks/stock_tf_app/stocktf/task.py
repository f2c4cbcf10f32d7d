"""Model and data of the stock app: the same job fedlab's federation.toml describes.

Written like Flower's TensorFlow quickstart ``task.py``: ``load_model()`` builds and
compiles a fresh Keras model every time it is called, ``load_data()`` returns one
node's (x_train, y_train, x_test, y_test). The arrays come from ``fedlab.task`` so
both systems train on exactly the same rows; the architecture, optimizer, learning
rate, batch size and epochs come from the same federation.toml.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@functools.lru_cache(maxsize=4)
def load_job(job_path: str) -> dict[str, Any]:
    with open(job_path, encoding="utf-8") as f:
        return json.load(f)


@functools.lru_cache(maxsize=4)
def load_cfg(job_path: str) -> Any:
    from fedlab.config import load_config

    return load_config(load_job(job_path)["config"])


@functools.lru_cache(maxsize=64)
def load_data(job_path: str, partition_id: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One virtual lab's rows. Cached per process, as the quickstart caches its
    FederatedDataset (the quickstart re-partitions on every call; caching the partition
    only makes the stock numbers better, never worse)."""
    from fedlab.task import load_simulation_lab

    lab = load_simulation_lab(load_cfg(job_path), int(partition_id))
    return (lab.x_train.astype(np.float32), lab.y_train.astype(np.float32),
            lab.x_test.astype(np.float32), lab.y_test.astype(np.float32))


def load_model(job_path: str) -> Any:
    """A new, compiled Keras model (the quickstart's ``load_model``)."""
    import keras

    from fedlab.task import task_shape

    cfg = load_cfg(job_path)
    shape = task_shape(cfg)
    if cfg.model.name != "mlp":
        raise ValueError("the stock baseline app implements the 'mlp' model only")
    binary = shape.num_classes == 2
    layers = [keras.Input(shape=(shape.num_features,))]
    layers += [keras.layers.Dense(h, activation="relu") for h in cfg.model.hidden]
    layers.append(keras.layers.Dense(1, activation="sigmoid") if binary
                  else keras.layers.Dense(shape.num_classes, activation="softmax"))
    model = keras.Sequential(layers)
    tr = cfg.training
    optimizer = (keras.optimizers.SGD(tr.learning_rate) if tr.optimizer == "sgd"
                 else keras.optimizers.Adam(tr.learning_rate))
    model.compile(optimizer=optimizer,
                  loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def initial_weights(job_path: str) -> list[np.ndarray]:
    """fedlab's initial global model for this config (same seed), so both runs start
    from identical weights."""
    from fedlab.models import build_model
    from fedlab.task import task_shape

    cfg = load_cfg(job_path)
    shape = task_shape(cfg)
    model = build_model(cfg.model, shape.num_features, shape.num_classes, seed=cfg.seed)
    return [np.asarray(w, dtype=np.float32) for w in model.get_weights()]
