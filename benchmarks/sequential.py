"""The same federated job as `fedlab simulate`, run sequentially in one process.

No Flower, no Ray, no messages: each lab's local training one after the other on one
cached model, then the server rule. It is the floor a simulation can approach (the
"pure sequential Keras training of the same work") and the fast loop used to tune
the built-in defaults on validation rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from fedlab import codec
from fedlab.config import FederationConfig
from fedlab.data import LabData
from fedlab.task import task_shape
from fedlab.training import LocalTrainer
from server.strategy import ServerOptimizer


@dataclass
class History:
    val_accuracy: list[float] = field(default_factory=list)  # pooled validation, per round
    test_accuracy: list[float] = field(default_factory=list)  # pooled test, per round
    round_seconds: list[float] = field(default_factory=list)


def pooled_accuracy(trainer: LocalTrainer, labs: list[LabData], split: str) -> float:
    n = correct = 0.0
    for lab in labs:
        x, y = getattr(lab, f"x_{split}"), getattr(lab, f"y_{split}")
        if len(y):
            r = trainer.evaluate(None, x, y)
            n += r.num_examples
            correct += r.accuracy * r.num_examples
    return correct / n if n else float("nan")


def run_sequential(cfg: FederationConfig, labs: list[LabData], *, evaluate: bool = True,
                   trainer: LocalTrainer | None = None) -> History:
    shape = task_shape(cfg)
    trainer = trainer or LocalTrainer(cfg.model, shape.num_features, shape.num_classes,
                                      cfg.training, cfg.strategy, seed=cfg.seed)
    global_vec = codec.flatten(trainer.get_weights())
    opt = ServerOptimizer(cfg.strategy, global_vec.size)
    hist = History()
    for rnd in range(1, cfg.rounds + 1):
        t0 = time.perf_counter()
        total = np.zeros(global_vec.size)
        weight = 0
        for i, lab in enumerate(labs):
            w = codec.unflatten(global_vec, trainer.shapes)
            fit = trainer.fit(w, lab.x_train, lab.y_train, round_seed=rnd * 1000 + i)
            total += fit.num_examples * (codec.flatten(fit.weights) - global_vec)
            weight += fit.num_examples
        global_vec = opt.apply(global_vec, total / weight)
        hist.round_seconds.append(time.perf_counter() - t0)
        if evaluate:
            trainer.set_weights(codec.unflatten(global_vec, trainer.shapes))
            hist.val_accuracy.append(pooled_accuracy(trainer, labs, "val"))
            hist.test_accuracy.append(pooled_accuracy(trainer, labs, "test"))
    return hist
