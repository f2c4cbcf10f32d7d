"""Local training on the real heart-disease data: learns, no retracing, FedProx pulls back."""

from __future__ import annotations

import numpy as np
import pytest

from fedlab import codec
from fedlab.config import ModelConfig, StrategyConfig, TrainingConfig, default_config
from fedlab.errors import ConfigError, DataError
from fedlab.task import load_lab, task_shape
from fedlab.training import LocalTrainer


@pytest.fixture(scope="module")
def cleveland():
    return load_lab(default_config(), "cleveland")


def _trainer(model="logistic", mu=0.0, lr=0.1):
    cfg = default_config()
    shape = task_shape(cfg)
    strategy = StrategyConfig(name="fedprox" if mu else "fedavg", mu=mu)
    return LocalTrainer(ModelConfig(name=model, hidden=(16,)), shape.num_features,
                        shape.num_classes, TrainingConfig(local_epochs=5, batch_size=16,
                                                          learning_rate=lr), strategy)


def test_training_learns_on_real_data(cleveland):
    t = _trainer()
    w0 = t.get_weights()
    before = t.evaluate(w0, cleveland.x_test, cleveland.y_test)
    fit = t.fit(w0, cleveland.x_train, cleveland.y_train, round_seed=1)
    after = t.evaluate(fit.weights, cleveland.x_test, cleveland.y_test)
    assert fit.num_examples == 199 and np.isfinite(fit.loss)
    assert after.accuracy > 0.7 and after.accuracy > before.accuracy
    assert after.num_examples == 104


def test_no_retracing_across_rounds(cleveland):
    t = _trainer(model="mlp")
    w = t.get_weights()
    for r in range(4):
        w = t.fit(w, cleveland.x_train, cleveland.y_train, round_seed=r).weights
        t.evaluate(w, cleveland.x_test, cleveland.y_test)
    # one concrete function each, whatever the (last, smaller) batch size
    assert t._train_step.experimental_get_tracing_count() == 1
    assert t._eval_step.experimental_get_tracing_count() == 1


def test_same_seed_same_result_and_fresh_optimizer_each_round(cleveland):
    t = _trainer()
    w0 = t.get_weights()
    a = t.fit(w0, cleveland.x_train, cleveland.y_train, round_seed=3).weights
    t.fit(a, cleveland.x_train, cleveland.y_train, round_seed=4)  # state that must not leak
    b = t.fit(w0, cleveland.x_train, cleveland.y_train, round_seed=3).weights
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_fedprox_keeps_weights_closer_to_the_global_model(cleveland):
    plain, prox = _trainer(), _trainer(mu=5.0)
    w0 = plain.get_weights()
    d_plain = codec.flatten(plain.fit(w0, cleveland.x_train, cleveland.y_train).weights) \
        - codec.flatten(w0)
    d_prox = codec.flatten(prox.fit(w0, cleveland.x_train, cleveland.y_train).weights) \
        - codec.flatten(w0)
    assert np.linalg.norm(d_prox) < 0.8 * np.linalg.norm(d_plain)


def test_wrong_shapes_and_empty_data_are_clear_errors(cleveland):
    t = _trainer()
    with pytest.raises(DataError, match="shapes"):
        t.set_weights([np.zeros((3, 3), np.float32)])
    with pytest.raises(DataError, match="no training rows"):
        t.fit(t.get_weights(), cleveland.x_train[:0], cleveland.y_train[:0])


def test_user_model_hook_and_bad_refs():
    from fedlab.models import build_model

    m = build_model(ModelConfig(name="tests.user_model:tiny", options={"units": 3}), 13, 2)
    assert m.name == "tiny"
    with pytest.raises(ConfigError, match="cannot import module"):
        build_model(ModelConfig(name="no_such_pkg:f"), 13, 2)
    with pytest.raises(ConfigError, match="has no function"):
        build_model(ModelConfig(name="tests.user_model:missing"), 13, 2)
    with pytest.raises(ConfigError, match="not a keras.Model"):
        build_model(ModelConfig(name="tests.user_model:not_a_model"), 13, 2)
