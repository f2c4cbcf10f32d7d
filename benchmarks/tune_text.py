"""Choose the settings of examples/text-sentiment.toml on validation rows, never on test.

10 % of each lab's *training* rows are held out as validation rows (seeded, stratified;
the example's own split). For each candidate (embedding size, vocabulary size, Adam
learning rate, local epochs, rounds) the federation's vocabulary is computed as the run
computes it (``fedlab.prep.prepare_locally``: the same sums, in the clear), FedAvg runs
sequentially (``benchmarks.sequential``: same maths as `fedlab simulate`, no Flower), and
the pooled model is trained as the run's baseline (own vocabulary, best validation pass).
The score is the federated model's pooled validation accuracy after the last round.
Prints one JSON line per candidate. Test accuracy is printed for information only; it
plays no part in the choice.

    .venv/bin/python benchmarks/tune_text.py
"""

from __future__ import annotations

import dataclasses
import json

from benchmarks.sequential import pooled_accuracy, run_sequential
from fedlab.baselines import _fit, _own_vocabulary
from fedlab.config import load_config
from fedlab.prep import prepare_locally
from fedlab.task import load_simulation_lab, simulation_labs, task_shape
from fedlab.training import LocalTrainer

# (embedding_dim, vocab_size, learning rate, local epochs, rounds)
GRID = [(16, 10_000, 0.002, 2, 10), (16, 10_000, 0.003, 2, 10), (16, 10_000, 0.005, 1, 15),
        (16, 10_000, 0.001, 2, 10), (8, 4_000, 0.002, 2, 10), (8, 4_000, 0.005, 2, 10)]


def main() -> None:
    base = load_config("examples/text-sentiment.toml")
    for emb, vocab, lr, epochs, rounds in GRID:
        cfg = dataclasses.replace(
            base, rounds=rounds,
            model=dataclasses.replace(base.model, embedding_dim=emb, vocab_size=vocab),
            training=dataclasses.replace(base.training, learning_rate=lr, local_epochs=epochs),
            data=dataclasses.replace(base.data, validation_fraction=0.1))
        raws = [load_simulation_lab(cfg, i) for i in range(len(simulation_labs(cfg)))]
        labs, results = prepare_locally(cfg, raws)
        hist = run_sequential(cfg, labs)
        shape = task_shape(cfg)
        pooled = LocalTrainer(cfg.model, shape.num_features, shape.num_classes, cfg.training,
                              None, seed=cfg.seed)
        view = _own_vocabulary(cfg, raws, raws, {}, "pooled")
        best = _fit(pooled, pooled.get_weights(), view, rounds * epochs)
        print(json.dumps({
            "embedding_dim": emb, "vocab_size": vocab, "learning_rate": lr,
            "local_epochs": epochs, "rounds": rounds,
            "vocabulary": len(results["vocabulary"]["selected"]),
            "val_federated": round(hist.val_accuracy[-1], 4),
            "val_curve": [round(v, 3) for v in hist.val_accuracy],
            "val_pooled_best": round(pooled_accuracy(pooled, view, "val"), 4), "best_pass": best,
            "test_federated_info_only": round(hist.test_accuracy[-1], 4),
            "test_pooled_info_only": round(pooled_accuracy(pooled, view, "test"), 4)}),
            flush=True)


if __name__ == "__main__":
    main()
