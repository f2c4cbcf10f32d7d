"""Keras model builders: logistic regression, MLP, text, and a user hook ``module:function``.

The text model is the classic small Keras text classifier: token ids padded to
``sequence_length`` (``num_features``) -> ``Embedding(vocab_size + 2, embedding_dim)``
(id 0 is padding and masked out, 1 out of vocabulary, 2.. the federated vocabulary; see
:class:`fedlab.data.text.TextEncoder`) -> ``GlobalAveragePooling1D`` over the real tokens
-> ``Dense`` sigmoid (softmax for more than two classes). Its input is ``float32`` like
every fedlab model's (ids below 2^24 are exact); the embedding casts it to ``int32``.

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
    if cfg.name == "text":
        return _text_model(cfg, num_features, units, activation)
    return _user_model(cfg.name, num_features, num_classes, dict(cfg.options))


def _text_model(cfg: ModelConfig, sequence_length: int, units: int, activation: str) -> keras.Model:
    import keras

    if sequence_length != cfg.sequence_length:
        raise ConfigError(f"the text model reads {cfg.sequence_length} token ids a text "
                          f"(model.sequence_length) but the data has {sequence_length}; encode "
                          "the texts with the same sequence_length")
    inputs = keras.Input(shape=(sequence_length,), name="token_ids")
    h = keras.layers.Embedding(cfg.vocab_size + 2, cfg.embedding_dim, mask_zero=True,
                               name="embedding")(inputs)
    h = keras.layers.GlobalAveragePooling1D(name="average")(h)
    outputs = keras.layers.Dense(units, activation=activation, name="output")(h)
    return keras.Model(inputs, outputs, name="text")


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
