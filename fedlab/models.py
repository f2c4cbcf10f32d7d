"""Keras model builders: logistic regression, MLP, and a user hook ``module:function``.

TensorFlow/Keras is imported only inside the builders, so importing this module
is cheap. A user builder is called as ``fn(num_features, num_classes, **options)``
and must return an (uncompiled) ``keras.Model``; fedlab compiles and trains it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedlab.config import ModelConfig
from fedlab.errors import ConfigError

if TYPE_CHECKING:
    import keras


def _output(num_classes: int) -> tuple[int, str]:
    """Units and activation of the output layer (binary tasks use one sigmoid unit)."""
    return (1, "sigmoid") if num_classes == 2 else (num_classes, "softmax")


def build_model(cfg: ModelConfig, num_features: int, num_classes: int, *, seed: int = 0) -> keras.Model:
    """Build the federation's model (same architecture and initial weights for a given seed)."""
    import keras

    if num_features < 1 or num_classes < 2:
        raise ConfigError(f"a model needs at least 1 feature and 2 classes (got {num_features} "
                          f"features, {num_classes} classes); check the data schema")
    keras.utils.set_random_seed(seed)
    units, activation = _output(num_classes)
    if cfg.name == "logistic":
        inputs = keras.Input(shape=(num_features,), name="features")
        outputs = keras.layers.Dense(units, activation=activation, name="logit")(inputs)
        return keras.Model(inputs, outputs, name="logistic")
    if cfg.name == "mlp":
        inputs = keras.Input(shape=(num_features,), name="features")
        h = inputs
        for i, size in enumerate(cfg.hidden):
            h = keras.layers.Dense(size, activation="relu", name=f"hidden{i}")(h)
        outputs = keras.layers.Dense(units, activation=activation, name="output")(h)
        return keras.Model(inputs, outputs, name="mlp")
    return _user_model(cfg.name, num_features, num_classes, dict(cfg.options))


def _user_model(ref: str, num_features: int, num_classes: int, options: dict[str, Any]) -> keras.Model:
    import keras

    module_name, _, func_name = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model.name = {ref!r}: cannot import module {module_name!r} ({exc}); "
                          "install it at every lab and at the server") from exc
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ConfigError(f"model.name = {ref!r}: {module_name} has no function {func_name!r}")
    model = fn(num_features, num_classes, **options)
    if not isinstance(model, keras.Model):
        raise ConfigError(f"model.name = {ref!r} returned {type(model).__name__}, not a keras.Model")
    return model
