"""DP-SGD at each lab: step speed against the non-private step, and accuracy per epsilon.

    .venv/bin/python benchmarks/privacy_calibration.py speed [--repeats 15]
    .venv/bin/python benchmarks/privacy_calibration.py accuracy [--epsilons 10 1 0.1] [--seeds 3]

``speed``: the LocalTrainer step (baseline) against the DP-SGD step with per-example
gradients from ``tf.vectorized_map`` ("vmap") and from ``GradientTape.jacobian``
("jacobian"), for a logistic model (13 features) and an MLP (64, 64), batches 16-64.
Steps of the variants are timed interleaved (the machine may be shared) and the
median per-step time over repeats is reported, with the ratio to the baseline.

``accuracy``: the four heart-disease hospitals, FedAvg/FedAdam over labs training with
DP-SGD (Poisson batches of expected size ``batch``, each lab's noise multiplier
calibrated with the RDP accountant for its own q = batch / n and its total steps,
delta 1e-5, so every lab ends the run at exactly its budget). Settings are scored on
*validation* rows (20 % of each hospital's training rows): mean per-lab validation
accuracy over the last rounds, averaged over seeds; test accuracy is printed for
information only. One JSON line per setting, then the best per epsilon. The best
is chosen among many noisy candidates, so confirm it on fresh seeds (``--setting``
with ``--seed-offset``): that is the number to quote.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import time
from functools import cache

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from fedlab import codec, privacy  # noqa: E402
from fedlab.config import ModelConfig, StrategyConfig, TrainingConfig, default_config  # noqa: E402
from fedlab.training import LocalTrainer  # noqa: E402

DELTA = 1e-5


# -- speed -----------------------------------------------------------------------


def _bench_speed(repeats: int, steps: int) -> None:
    rng = np.random.default_rng(0)
    for name, model_cfg in (("logistic", ModelConfig("logistic")),
                            ("mlp64x64", ModelConfig("mlp", hidden=(64, 64)))):
        trainer = LocalTrainer(model_cfg, 13, 2, TrainingConfig(learning_rate=0.01))
        loss_fn = _trainer_loss(trainer)
        variants = {"plain": trainer._train_step}
        for how in privacy.PER_EXAMPLE:
            variants[how] = privacy.make_dp_train_step(
                trainer.model, trainer.optimizer, loss_fn, l2_clip=1.0, noise_multiplier=1.0,
                anchor=trainer._anchor, mu=trainer._mu, per_example=how)
        for batch in (16, 32, 64):
            x = rng.normal(size=(batch, 13)).astype(np.float32)
            y = (rng.random(batch) > 0.5).astype(np.float32)
            wall: dict[str, list[float]] = {k: [] for k in variants}
            cpu: dict[str, list[float]] = {k: [] for k in variants}
            for step in variants.values():
                step(x, y)  # warm-up (the trace happened at the first batch size)
            for _ in range(repeats):
                for key, step in variants.items():
                    t0, c0 = time.perf_counter(), time.process_time()
                    for _ in range(steps):
                        step(x, y)
                    wall[key].append((time.perf_counter() - t0) / steps)
                    cpu[key].append((time.process_time() - c0) / steps)
            base_wall, base_cpu = statistics.median(wall["plain"]), statistics.median(cpu["plain"])
            for key in variants:
                w, c = statistics.median(wall[key]), statistics.median(cpu[key])
                print(json.dumps({"bench": "dp_step_speed", "model": name, "batch": batch,
                                  "step": key, "wall_us": round(w * 1e6, 1),
                                  "ratio_vs_plain": round(w / base_wall, 2),
                                  "cpu_us": round(c * 1e6, 1),
                                  "cpu_ratio_vs_plain": round(c / base_cpu, 2),
                                  "traces": int(variants[key].experimental_get_tracing_count())}),
                      flush=True)


def _trainer_loss(trainer: LocalTrainer):  # the same per-example loss LocalTrainer uses
    import keras
    import tensorflow as tf

    if trainer.binary:
        return lambda y, p: keras.losses.binary_crossentropy(tf.reshape(y, (-1, 1)), p)
    return lambda y, p: keras.losses.sparse_categorical_crossentropy(y, p)


# -- accuracy ----------------------------------------------------------------------


@cache
def _noise(epsilon: float, q: float, steps: int) -> float:
    return privacy.calibrate_noise(epsilon, DELTA, q, steps)


class _Federation:
    """One trainer and one DP step per lab, built (traced) once and reconfigured per run."""

    def __init__(self, cfg, n_labs: int) -> None:
        from fedlab.task import task_shape

        shape = task_shape(cfg)
        self.trainer = LocalTrainer(cfg.model, shape.num_features, shape.num_classes,
                                    cfg.training, cfg.strategy, seed=cfg.seed)
        loss_fn = _trainer_loss(self.trainer)
        t = self.trainer
        self.dps = [privacy.DpSgdStep(t.model, t.optimizer, loss_fn, l2_clip=1.0,
                                      noise_multiplier=0.0, anchor=t._anchor, mu=t._mu)
                    for _ in range(n_labs)]

    def fit(self, dp: privacy.DpSgdStep, weights, x, y, q: float, epochs: int, lr: float):
        """LocalTrainer.fit with Poisson batches and the DP step (the integration under test)."""
        t = self.trainer
        t.set_weights(weights)
        for var, a in zip(t.model.trainable_variables, t._anchor, strict=True):
            a.assign(var)
        for var, init in zip(t.optimizer.variables, t._initial_opt, strict=True):
            var.assign(init)
        t.optimizer.learning_rate = lr
        dp.reseed()
        xf, yf = np.asarray(x, np.float32), np.asarray(y, np.float32)
        for idx in privacy.poisson_batches(len(xf), q, epochs * privacy.steps_per_epoch(q)):
            dp.step(xf[idx], yf[idx])
        return codec.flatten(t.get_weights())


_FEDERATIONS: dict[int, _Federation] = {}


def _per_lab_accuracy(trainer: LocalTrainer, labs, split: str) -> float:
    accs = []
    for lab in labs:
        x, y = getattr(lab, f"x_{split}"), getattr(lab, f"y_{split}")
        if len(y):
            accs.append(trainer.evaluate(None, x, y).accuracy)
    return float(np.mean(accs))


def _run_dp(cfg, labs, epsilon: float | None, clip: float, batch: int,
            window: int = 5) -> dict[str, list[float]]:
    from fedlab.models import build_model
    from server.strategy import ServerOptimizer

    fed = _FEDERATIONS.get(len(labs)) or _FEDERATIONS.setdefault(len(labs), _Federation(cfg, len(labs)))
    trainer = fed.trainer
    trainer.set_weights(build_model(cfg.model, trainer.num_features, trainer.num_classes,
                                    seed=cfg.seed).get_weights())
    epochs = cfg.training.local_epochs
    rates = []
    for lab, dp in zip(labs, fed.dps, strict=True):
        q = min(1.0, batch / lab.num_train)
        steps = cfg.rounds * epochs * privacy.steps_per_epoch(q)
        if epsilon is None:  # no DP: no clipping, no noise
            dp.configure(l2_clip=1e9, noise_multiplier=0.0, expected_batch_size=batch)
        else:
            dp.configure(l2_clip=clip, noise_multiplier=_noise(epsilon, q, steps),
                         expected_batch_size=batch)
        rates.append(q)
    global_vec = codec.flatten(trainer.get_weights())
    opt = ServerOptimizer(cfg.strategy, global_vec.size)
    val, test = [], []
    for rnd in range(cfg.rounds):
        total = np.zeros(global_vec.size)
        weight = 0
        for lab, dp, q in zip(labs, fed.dps, rates, strict=True):
            w = codec.unflatten(global_vec, trainer.shapes)
            new = fed.fit(dp, w, lab.x_train, lab.y_train, q, epochs, cfg.training.learning_rate)
            total += lab.num_train * (new - global_vec)
            weight += lab.num_train
        global_vec = opt.apply(global_vec, total / weight)
        trainer.set_weights(codec.unflatten(global_vec, trainer.shapes))
        if rnd >= cfg.rounds - window:  # only the scored rounds are evaluated
            val.append(_per_lab_accuracy(trainer, labs, "val"))
            test.append(_per_lab_accuracy(trainer, labs, "test"))
    return {"val": val, "test": test, "noise": [float(d.noise_multiplier) for d in fed.dps]}


def _bench_accuracy(epsilons: list[float | None], seeds: int, window: int, quick: bool,
                    setting: str = "", seed_offset: int = 0) -> None:
    from fedlab.task import load_lab

    base = default_config()
    grid = [tuple(json.loads(setting))] if setting else itertools.product(
        [("fedavg", 1.0), ("fedadam", 0.03)],  # strategy, server lr
        [30],                                   # rounds (the built-in federation's)
        [1],                                    # local epochs (fewer steps: less noise each)
        [16, 32] if not quick else [16],        # expected batch
        [0.1, 0.3] if not quick else [0.3],     # lab learning rate
        [0.5, 2.0] if not quick else [1.0],     # clip
    )
    grid = list(grid)
    for epsilon in epsilons:
        rows = []
        for (strategy, slr), rounds, epochs, batch, lr, clip in grid:
            if epsilon is None and clip != grid[0][5]:
                continue  # clip plays no part without DP
            vals, tests, noises = [], [], []
            for seed in range(seed_offset, seed_offset + seeds):
                cfg = dataclasses.replace(
                    base, rounds=rounds, seed=seed,
                    training=TrainingConfig(local_epochs=epochs, batch_size=batch, learning_rate=lr),
                    strategy=StrategyConfig(name=strategy, server_learning_rate=slr),
                    data=dataclasses.replace(base.data, validation_fraction=0.2))
                labs = [load_lab(cfg, name) for name in cfg.lab_names()]
                h = _run_dp(cfg, labs, epsilon, clip, batch, window)
                vals.append(np.mean(h["val"][-window:]))
                tests.append(h["test"][-1])
                noises = h["noise"]
            row = {"bench": "dp_accuracy", "epsilon": epsilon, "delta": DELTA, "strategy": strategy,
                   "server_lr": slr, "rounds": rounds, "local_epochs": epochs, "batch": batch,
                   "lr": lr, "clip": clip, "noise_multipliers": [round(n, 3) for n in noises],
                   "seeds": seeds, "val_per_lab_mean": round(float(np.mean(vals)), 4),
                   "val_sd_over_seeds": round(float(np.std(vals)), 4),
                   "test_per_lab_mean_info_only": round(float(np.mean(tests)), 4),
                   "test_sd_over_seeds": round(float(np.std(tests)), 4)}
            print(json.dumps(row), flush=True)
            rows.append(row)
        best = max(rows, key=lambda r: r["val_per_lab_mean"])
        print(json.dumps({**best, "bench": "dp_accuracy_best"}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    sp = sub.add_parser("speed")
    sp.add_argument("--repeats", type=int, default=15)
    sp.add_argument("--steps", type=int, default=50)
    ac = sub.add_parser("accuracy")
    ac.add_argument("--epsilons", type=str, nargs="+", default=["none", "10", "1", "0.1"])
    ac.add_argument("--seeds", type=int, default=3)
    ac.add_argument("--window", type=int, default=5)
    ac.add_argument("--quick", action="store_true")
    ac.add_argument("--setting", default="", help='one setting only, as JSON: '
                    '[["fedavg", 1.0], 30, 1, 16, 0.3, 0.5] (strategy, rounds, epochs, batch, lr, clip)')
    ac.add_argument("--seed-offset", type=int, default=0,
                    help="confirm a chosen setting on seeds it was not chosen on")
    args = ap.parse_args()
    if args.what == "speed":
        _bench_speed(args.repeats, args.steps)
    else:
        eps = [None if e == "none" else float(e) for e in args.epsilons]
        _bench_accuracy(eps, args.seeds, args.window, args.quick, args.setting, args.seed_offset)


if __name__ == "__main__":
    main()
