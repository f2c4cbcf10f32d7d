"""The lab's side of a round, independent of how messages arrive.

A :class:`LabWorker` holds what a lab keeps warm across rounds: its validated data,
the compiled model (built once), its identity key. In simulation the ClientApp keeps
one per virtual lab in each Ray actor; in deployment ``fedlab client`` runs one in a
long-lived worker process and the ClientApp hands it every message.

Secure-aggregation state (keys, shares, revealed neighbours) is not kept here: it is
passed in and out with each call (``state``), so it survives whichever process
Flower uses for the next message.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlab import codec
from fedlab.config import FederationConfig
from fedlab.data import LabData
from fedlab.errors import ProtocolError
from fedlab.secure import signing
from fedlab.updates import digest_update

log = logging.getLogger(__name__)


@dataclass
class Reply:
    """What a lab sends back: small values, an optional vector, optional protocol bytes."""

    meta: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float | int] = field(default_factory=dict)
    vector: np.ndarray | None = None
    state: bytes | None = None  # secure-aggregation state to keep for the next message


class LabWorker:
    """One lab: data, model, identity; answers the server's requests."""

    def __init__(self, cfg: FederationConfig, lab: str, data: LabData,
                 identity: Ed25519PrivateKey, roster: Mapping[str, Any]) -> None:
        from fedlab.task import task_shape
        from fedlab.training import LocalTrainer

        self.cfg = cfg
        self.lab = lab
        self.data = data
        self.identity = identity
        self.roster = dict(roster)
        shape = task_shape(cfg)
        self.trainer = LocalTrainer(cfg.model, shape.num_features, shape.num_classes,
                                    cfg.training, cfg.strategy, seed=cfg.seed)
        self.shapes = self.trainer.shapes
        self.size = codec.num_params(self.shapes)
        self.num_train = int(len(data.y_train))

    # -- stages ----------------------------------------------------------------------------
    def hello(self, run_id: str) -> Reply:
        n = self.num_train
        sig = signing.sign(self.identity, run_id, 0, "hello", self.lab, str(n).encode())
        return Reply(meta={"lab": self.lab, "num-train": n, "sig": sig})

    def evaluate(self, global_vec: np.ndarray) -> dict[str, float | int]:
        weights = codec.unflatten(global_vec, self.shapes)
        out: dict[str, float | int] = {}
        test = self.trainer.evaluate(weights, self.data.x_test, self.data.y_test)
        out.update({"test-loss": test.loss, "test-accuracy": test.accuracy,
                    "test-examples": test.num_examples})
        if len(self.data.y_val):
            val = self.trainer.evaluate(None, self.data.x_val, self.data.y_val)
            out.update({"val-loss": val.loss, "val-accuracy": val.accuracy,
                        "val-examples": val.num_examples})
        return out

    def train(self, round_: int, global_vec: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Evaluate the received model, train from it; return (update, metrics)."""
        if global_vec.dtype != np.float32 or global_vec.size != self.size:
            raise ProtocolError(f"lab {self.lab}: the server sent a model of {global_vec.size} "
                                f"{global_vec.dtype} values, this lab's model has {self.size}")
        metrics: dict[str, Any] = self.evaluate(global_vec)
        weights = codec.unflatten(global_vec, self.shapes)
        fit = self.trainer.fit(weights, self.data.x_train, self.data.y_train,
                               round_seed=round_ * 100_003 + zlib.crc32(self.lab.encode()) % 100_003)
        update = codec.flatten(fit.weights) - global_vec
        metrics.update({"num-examples": fit.num_examples, "train-loss": fit.loss,
                        "seconds": fit.seconds})
        return update.astype(np.float32), metrics

    def plain_round(self, run_id: str, round_: int, global_vec: np.ndarray) -> Reply:
        update, metrics = self.train(round_, global_vec)
        sig = signing.sign(self.identity, run_id, round_, "round", self.lab,
                           digest_update(update, metrics))
        return Reply(meta={"lab": self.lab, "sig": sig}, metrics=metrics, vector=update)

    def final(self, global_vec: np.ndarray) -> Reply:
        return Reply(meta={"lab": self.lab}, metrics=self.evaluate(global_vec))

    # -- one entry point for every message (in-process or through the warm worker) ---------
    def handle(self, kind: str, cfg: Mapping[str, Any], vector: np.ndarray | None,
               state: bytes | None) -> Reply:
        """Answer one server request. ``kind`` is the message's action; ``cfg`` its small
        values; ``vector`` the model it carries; ``state`` the lab's secure-aggregation state
        from the previous message (None at first)."""
        run_id = str(cfg.get("run", ""))
        if kind == "hello":
            return self.hello(run_id)
        if kind == "final":
            return self.final(self._model(vector))
        if kind == "round" and not cfg.get("secure", False):
            return self.plain_round(run_id, int(cfg["round"]), self._model(vector))
        if kind in ("setup", "share", "round", "unmask"):
            from client.secure import handle_secure

            return handle_secure(self, kind, cfg, vector, state)
        raise ProtocolError(f"lab {self.lab}: unknown request {kind!r} from the server")

    def _model(self, vector: np.ndarray | None) -> np.ndarray:
        if vector is None:
            raise ProtocolError(f"lab {self.lab}: the server's request carries no model")
        if vector.dtype != np.float32 or vector.ndim != 1 or vector.size != self.size:
            raise ProtocolError(f"lab {self.lab}: the server sent a model of {vector.size} "
                                f"{vector.dtype} values, this lab's model has {self.size}")
        return vector


class SyntheticLabWorker(LabWorker):
    """A lab that sends a fixed random update of ``size`` values and trains nothing.

    Used only by benchmarks, to measure what fedlab adds around training (messages,
    masking, unmasking) at model sizes no small data set needs, as Flower's own
    benchmarks do with "synthetic" clients. The values come from a public seed.
    """

    def __init__(self, cfg: FederationConfig, lab: str, size: int, identity: Ed25519PrivateKey,
                 roster: Mapping[str, Any]) -> None:
        self.cfg = cfg
        self.lab = lab
        self.identity = identity
        self.roster = dict(roster)
        self.size = size
        self.shapes = ((size,),)
        self.num_train = 100
        rng = np.random.default_rng(zlib.crc32(lab.encode()))
        self._update = (rng.standard_normal(size, dtype=np.float32) * 0.01).astype(np.float32)

    def evaluate(self, global_vec: np.ndarray) -> dict[str, float | int]:
        return {}

    def train(self, round_: int, global_vec: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        self._model(global_vec)
        return self._update, {"num-examples": self.num_train, "train-loss": 0.0, "seconds": 0.0}
