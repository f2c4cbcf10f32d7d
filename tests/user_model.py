"""A user model builder, as a federation would name it: model.name = "tests.user_model:tiny"."""

from __future__ import annotations

import keras


def tiny(num_features: int, num_classes: int, units: int = 4) -> keras.Model:
    inputs = keras.Input(shape=(num_features,))
    h = keras.layers.Dense(units, activation="relu")(inputs)
    out = keras.layers.Dense(1 if num_classes == 2 else num_classes,
                             activation="sigmoid" if num_classes == 2 else "softmax")(h)
    return keras.Model(inputs, out, name="tiny")


def not_a_model(num_features: int, num_classes: int) -> str:
    return "nope"
