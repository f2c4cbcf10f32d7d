"""Local training and evaluation of the federation's Keras model at one lab.

A :class:`LocalTrainer` builds and compiles its model once and reuses it for every
round: each round only sets the weights, resets the optimizer's state and runs the
same traced ``tf.function`` train step (fixed input signature, so no retracing).
FedProx adds ``mu/2 * ||w - w_global||^2`` to the loss inside the same step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedlab.codec import Shapes, shapes_of
from fedlab.config import ModelConfig, StrategyConfig, TrainingConfig
from fedlab.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitResult:
    weights: list[np.ndarray]
    num_examples: int
    loss: float
    seconds: float


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    num_examples: int


def dp_steps(n: int, batch_size: int, epochs: int) -> int:
    """DP-SGD steps of one round: ``epochs`` passes in expectation, Poisson rate batch/n."""
    from fedlab.privacy import steps_per_epoch

    return epochs * steps_per_epoch(min(1.0, batch_size / n))


class LocalTrainer:
    """A compiled model plus its train and evaluate steps, built once per process."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        num_features: int,
        num_classes: int,
        training: TrainingConfig,
        strategy: StrategyConfig | None = None,
        *,
        seed: int = 0,
    ) -> None:
        import keras
        import tensorflow as tf

        from fedlab.models import build_model

        self.num_features = num_features
        self.num_classes = num_classes
        self.training = training
        self.seed = seed
        self.model = build_model(model_cfg, num_features, num_classes, seed=seed)
        self.binary = num_classes == 2
        if training.optimizer == "sgd":
            self.optimizer = keras.optimizers.SGD(learning_rate=training.learning_rate)
        else:
            self.optimizer = keras.optimizers.Adam(learning_rate=training.learning_rate)
        self.optimizer.build(self.model.trainable_variables)
        # Snapshot of the fresh optimizer (iteration 0, moments 0, the learning rate): each
        # round starts from it, so no optimizer state leaks from one round into the next.
        self._initial_opt = [np.array(v.numpy(), copy=True) for v in self.optimizer.variables]
        mu = strategy.mu if strategy is not None and strategy.name == "fedprox" else 0.0
        self._mu = tf.Variable(mu, dtype=tf.float32, trainable=False)
        self._anchor = [tf.Variable(v, trainable=False) for v in self.model.trainable_variables]
        self.shapes: Shapes = shapes_of(self.model.get_weights())
        model, optimizer, anchor, mu_var = self.model, self.optimizer, self._anchor, self._mu
        binary = self.binary

        def loss_fn(y: Any, p: Any) -> Any:
            if binary:
                return keras.losses.binary_crossentropy(tf.reshape(y, (-1, 1)), p)
            return keras.losses.sparse_categorical_crossentropy(y, p)

        spec_x = tf.TensorSpec((None, num_features), tf.float32)
        spec_y = tf.TensorSpec((None,), tf.float32)

        @tf.function(input_signature=[spec_x, spec_y], reduce_retracing=True)
        def train_step(x: Any, y: Any) -> Any:
            with tf.GradientTape() as tape:
                p = model(x, training=True)
                loss = tf.reduce_mean(loss_fn(y, p))
                prox = tf.add_n([tf.reduce_sum(tf.square(w - a))
                                 for w, a in zip(model.trainable_variables, anchor, strict=True)])
                total = loss + 0.5 * mu_var * prox
            grads = tape.gradient(total, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        @tf.function(input_signature=[spec_x, spec_y], reduce_retracing=True)
        def eval_step(x: Any, y: Any) -> Any:
            p = model(x, training=False)
            losses = loss_fn(y, p)
            if binary:
                pred = tf.cast(tf.reshape(p, (-1,)) >= 0.5, tf.float32)
            else:
                pred = tf.cast(tf.argmax(p, axis=-1), tf.float32)
            correct = tf.reduce_sum(tf.cast(tf.equal(pred, y), tf.float32))
            return tf.reduce_sum(losses), correct

        self._train_step = train_step
        self._eval_step = eval_step
        self._loss_fn = loss_fn
        self.dp: Any = None  # a fedlab.privacy.DpSgdStep once record-level DP is on

    def enable_record_dp(self, *, l2_clip: float, noise_multiplier: float,
                         expected_batch_size: int) -> None:
        """Train with DP-SGD from now on: per-example clipping and Gaussian noise (vectorised,
        traced once), on Poisson-sampled batches drawn from the OS CSPRNG."""
        from fedlab.privacy import DpSgdStep

        mu = self._mu if float(self._mu.numpy()) > 0 else None
        self.dp = DpSgdStep(self.model, self.optimizer, self._loss_fn, l2_clip=l2_clip,
                            noise_multiplier=noise_multiplier,
                            anchor=self._anchor if mu is not None else None, mu=mu,
                            expected_batch_size=expected_batch_size)

    # -- weights -------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        return [np.asarray(w, dtype=np.float32) for w in self.model.get_weights()]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        if shapes_of(weights) != self.shapes:
            raise DataError(f"model weights have shapes {shapes_of(weights)}, this model needs "
                            f"{self.shapes}: lab and server disagree on the model or schema")
        self.model.set_weights(list(weights))

    # -- training ------------------------------------------------------------
    def fit(self, weights: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray, *,
            epochs: int | None = None, round_seed: int = 0,
            after_epoch: Callable[[int], None] | None = None) -> FitResult:
        """Train from ``weights`` on (x, y); returns the new weights (the model keeps them).

        ``after_epoch(k)`` (without DP) is called after pass ``k`` (1-based) with the
        model holding that pass's weights (the baselines use it to pick a pass)."""
        t0 = time.perf_counter()
        self.set_weights(weights)
        for var, a in zip(self.model.trainable_variables, self._anchor, strict=True):
            a.assign(var)
        for var, init in zip(self.optimizer.variables, self._initial_opt, strict=True):
            var.assign(init)
        n = int(len(x))
        if n == 0:
            raise DataError("a lab has no training rows; check its data file and split")
        bs = self.training.batch_size
        rng = np.random.default_rng([self.seed, round_seed])
        xf = np.asarray(x, dtype=np.float32)
        yf = np.asarray(y, dtype=np.float32)
        losses: list[float] = []
        n_epochs = epochs if epochs is not None else self.training.local_epochs
        if self.dp is not None:
            from fedlab.privacy import poisson_batches

            self.dp.reseed()
            q = min(1.0, bs / n)
            total = 0.0
            steps = 0
            for idx in poisson_batches(n, q, dp_steps(n, bs, n_epochs)):
                total += float(self.dp.step(xf[idx], yf[idx]))
                steps += 1
            losses.append(total / max(steps, 1))
            return FitResult(self.get_weights(), n, losses[-1], time.perf_counter() - t0)
        for _ in range(n_epochs):
            order = rng.permutation(n)
            epoch_loss = 0.0
            for start in range(0, n, bs):
                idx = order[start:start + bs]
                epoch_loss += float(self._train_step(xf[idx], yf[idx])) * len(idx)
            losses.append(epoch_loss / n)
            if after_epoch is not None:
                after_epoch(len(losses))
        return FitResult(self.get_weights(), n, losses[-1], time.perf_counter() - t0)

    def evaluate(self, weights: Sequence[np.ndarray] | None, x: np.ndarray, y: np.ndarray
                 ) -> EvalResult:
        """Loss and accuracy of ``weights`` (or the current weights) on (x, y)."""
        if weights is not None:
            self.set_weights(weights)
        n = int(len(x))
        if n == 0:
            return EvalResult(float("nan"), float("nan"), 0)
        loss_sum, correct = self._eval_step(np.asarray(x, dtype=np.float32),
                                            np.asarray(y, dtype=np.float32))
        return EvalResult(float(loss_sum) / n, float(correct) / n, n)
