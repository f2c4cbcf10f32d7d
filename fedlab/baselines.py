"""What federation buys: the same model trained by each lab alone and on all data pooled.

Only a simulation can compute these (all labs' data are on one machine). Each
baseline trains the same model with the same optimiser, batch size and number of
passes over its data as the federated run (rounds x local epochs), and is evaluated
on every lab's test rows and on the pooled test rows.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fedlab.config import FederationConfig
from fedlab.data import LabData

log = logging.getLogger(__name__)


def _evaluate_everywhere(trainer: Any, labs: list[LabData]) -> dict[str, Any]:
    per_lab: dict[str, dict[str, float | int]] = {}
    n = loss = acc = 0.0
    for lab in labs:
        r = trainer.evaluate(None, lab.x_test, lab.y_test)
        per_lab[lab.name] = {"accuracy": r.accuracy, "loss": r.loss, "examples": r.num_examples}
        n += r.num_examples
        loss += r.loss * r.num_examples
        acc += r.accuracy * r.num_examples
    return {"pooled_test": {"accuracy": acc / n, "loss": loss / n, "examples": int(n)},
            "labs": per_lab}


def run_baselines(cfg: FederationConfig, lab_names: list[str]) -> dict[str, Any]:
    """Local-only (each lab alone) and pooled-training baselines."""
    from fedlab.task import load_simulation_lab, task_shape
    from fedlab.training import LocalTrainer

    labs = [load_simulation_lab(cfg, i) for i in range(len(lab_names))]
    shape = task_shape(cfg)
    trainer = LocalTrainer(cfg.model, shape.num_features, shape.num_classes, cfg.training,
                           None, seed=cfg.seed)
    initial = trainer.get_weights()
    epochs = cfg.rounds * cfg.training.local_epochs
    out: dict[str, Any] = {"epochs": epochs, "local_only": {}}
    for lab in labs:
        trainer.fit(initial, lab.x_train, lab.y_train, epochs=epochs, round_seed=1)
        out["local_only"][lab.name] = _evaluate_everywhere(trainer, labs)
    x = np.concatenate([lab.x_train for lab in labs])
    y = np.concatenate([lab.y_train for lab in labs])
    trainer.fit(initial, x, y, epochs=epochs, round_seed=1)
    out["pooled_training"] = _evaluate_everywhere(trainer, labs)
    log.info("baselines: pooled training %.3f on the pooled test set",
             out["pooled_training"]["pooled_test"]["accuracy"])
    return out
