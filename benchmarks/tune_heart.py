"""Choose the built-in heart-disease defaults on validation rows, never on test.

20 % of each hospital's *training* rows are held out as validation rows (seeded,
stratified). Each candidate (strategy, learning rate, local epochs, batch size) is
trained federatedly (sequential FedAvg loop, same maths as `fedlab simulate`) for up
to R rounds, for several seeds; the score is the mean pooled validation accuracy
over the last rounds (a setting that peaks and then drifts scores badly). Prints one
JSON line per candidate, then the best. Test accuracy is printed for information
only; it plays no part in the choice.

    .venv/bin/python benchmarks/tune_heart.py [--rounds 40] [--seeds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json

import numpy as np

from benchmarks.sequential import run_sequential
from fedlab.config import StrategyConfig, TrainingConfig, default_config
from fedlab.prep import prepare_locally
from fedlab.task import load_lab


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--window", type=int, default=10, help="score = mean val acc of last rounds")
    args = ap.parse_args()
    base = default_config()
    grid = list(itertools.product(
        [("fedavg", 1.0), ("fedprox", 1.0), ("fedadam", 0.01), ("fedadam", 0.03)],
        [0.01, 0.05, 0.1], [1, 3], [16]))
    results = []
    for (strategy, slr), lr, epochs, batch in grid:
        vals, tests = [], []
        curves = []
        for seed in range(args.seeds):
            cfg = dataclasses.replace(
                base, rounds=args.rounds, seed=seed,
                training=TrainingConfig(local_epochs=epochs, batch_size=batch, learning_rate=lr),
                strategy=StrategyConfig(name=strategy, mu=0.01 if strategy == "fedprox" else 0.0,
                                        server_learning_rate=slr),
                data=dataclasses.replace(base.data, validation_fraction=0.2))
            # The run's federated preprocessing (standardisation), computed in the clear.
            labs, _ = prepare_locally(cfg, [load_lab(cfg, name) for name in cfg.lab_names()])
            h = run_sequential(cfg, labs)
            vals.append(np.mean(h.val_accuracy[-args.window:]))
            tests.append(h.test_accuracy[-1])
            curves.append(h.val_accuracy)
        row = {"strategy": strategy, "server_lr": slr, "lr": lr, "local_epochs": epochs,
               "batch_size": batch, "val_score": float(np.mean(vals)),
               "val_curve_mean": [round(float(v), 3) for v in np.mean(curves, axis=0)[::5]],
               "test_last_info_only": float(np.mean(tests))}
        print(json.dumps(row), flush=True)
        results.append(row)
    best = max(results, key=lambda r: r["val_score"])
    print(json.dumps({"best": best}))


if __name__ == "__main__":
    main()
