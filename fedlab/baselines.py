"""What federation buys: the same model trained by each lab alone and on all data pooled.

Only a simulation can compute these (all labs' data are on one machine). Each
baseline trains the same model with the same optimiser, batch size and number of
passes over its data as the federated run (rounds x local epochs), and is evaluated
on every lab's test rows and on the pooled test rows.

With validation rows (``data.validation_fraction > 0``) a baseline keeps the weights
after the pass with the best accuracy on the validation rows it could see (a lab alone:
its own; pooled training: all labs'), recorded in ``best_pass``: a model that
overfits within the run's passes is then compared at its best, not at its last pass.
The federated model is always the final round's (no selection).

Text data sets: a baseline has no federation to agree a vocabulary with, so each
selects its own from the training texts it holds (the same hashed buckets, the
``model.vocab_size`` most frequent, no ``min_labs``): the pooled model from the
pooled training texts, a lab alone from its own; every test set is encoded with the
vocabulary of the model that is evaluated on it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fedlab.config import FederationConfig
from fedlab.data import LabData
from fedlab.data.text import TextLab

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


def _own_vocabulary(cfg: FederationConfig, raws: list[TextLab], holders: list[TextLab],
                    sizes: dict[str, int], name: str) -> list[LabData]:
    """Every lab's texts encoded with the vocabulary a party holding only ``holders``'
    training texts would select (its size recorded in ``sizes[name]``)."""
    from fedlab.data.text import central_vocabulary
    from fedlab.task import encode_text_lab, vocabulary_settings

    v = vocabulary_settings(cfg)
    selected = central_vocabulary([t for h in holders for t in h.train_texts], v.buckets,
                                  v.vocab_size)
    sizes[name] = int(selected.size)
    return [encode_text_lab(cfg, raw, selected) for raw in raws]


def _fit(trainer: Any, initial: list[np.ndarray], labs: list[LabData], epochs: int) -> int:
    """Train on the training rows of ``labs`` for ``epochs`` passes; with validation rows,
    leave the trainer holding the weights of the pass with the best accuracy on them (the
    earliest on a tie). Returns that pass (``epochs`` without validation rows)."""
    x = np.concatenate([lab.x_train for lab in labs])
    y = np.concatenate([lab.y_train for lab in labs])
    xv = np.concatenate([lab.x_val for lab in labs])
    yv = np.concatenate([lab.y_val for lab in labs])
    if not len(yv):
        trainer.fit(initial, x, y, epochs=epochs, round_seed=1)
        return epochs
    kept: dict[str, Any] = {"accuracy": -1.0, "pass": 0, "weights": None}

    def keep_best(k: int) -> None:
        acc = trainer.evaluate(None, xv, yv).accuracy
        if acc > kept["accuracy"]:
            kept.update(accuracy=acc, weights=trainer.get_weights())
            kept["pass"] = k

    trainer.fit(initial, x, y, epochs=epochs, round_seed=1, after_epoch=keep_best)
    trainer.set_weights(kept["weights"])
    return int(kept["pass"])


def run_baselines(cfg: FederationConfig, lab_names: list[str]) -> dict[str, Any]:
    """Local-only (each lab alone) and pooled-training baselines."""
    from fedlab.prep import prepare_locally
    from fedlab.task import is_text, load_simulation_lab, task_shape
    from fedlab.training import LocalTrainer

    raws = [load_simulation_lab(cfg, i) for i in range(len(lab_names))]
    texts = [r for r in raws if isinstance(r, TextLab)] if is_text(cfg) else []
    sizes: dict[str, int] = {}
    # The same federated preprocessing as the run (computed in the clear: the simulation
    # holds every lab's data anyway), so the baselines see the same features. Text: each
    # regime's own vocabulary instead (see the module docstring).
    labs, _ = (raws, {}) if texts else prepare_locally(cfg, raws)
    shape = task_shape(cfg)
    trainer = LocalTrainer(cfg.model, shape.num_features, shape.num_classes, cfg.training,
                           None, seed=cfg.seed)
    initial = trainer.get_weights()
    epochs = cfg.rounds * cfg.training.local_epochs
    out: dict[str, Any] = {"epochs": epochs, "local_only": {}}
    best: dict[str, int] = {}
    for i, lab in enumerate(labs):
        view = _own_vocabulary(cfg, texts, [texts[i]], sizes, lab.name) if texts else labs
        best[lab.name] = _fit(trainer, initial, [view[i]], epochs)
        out["local_only"][lab.name] = _evaluate_everywhere(trainer, view)
    view = _own_vocabulary(cfg, texts, texts, sizes, "pooled") if texts else labs
    best["pooled"] = _fit(trainer, initial, view, epochs)
    out["pooled_training"] = _evaluate_everywhere(trainer, view)
    if sizes:
        out["vocabulary_size"] = sizes
    if any(lab.num_val for lab in view):
        out["best_pass"] = best
    log.info("baselines: pooled training %.3f on the pooled test set",
             out["pooled_training"]["pooled_test"]["accuracy"])
    return out
