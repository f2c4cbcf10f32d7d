"""The lab's side of a round, independent of how messages arrive.

A :class:`LabWorker` holds what a lab keeps warm across rounds: its validated data,
the compiled model (built once), its identity key. In simulation the ClientApp keeps
one per virtual lab in each Ray actor; in deployment ``fedlab client`` runs one in a
long-lived worker process and the ClientApp hands it every message.

Secure-aggregation state (keys, shares, revealed neighbours) is not kept here: it is
passed in and out with each call (``state``), so it survives whichever process
Flower uses for the next message. So are the results of the run's federated
preprocessing (:mod:`fedlab.prep`): the worker keeps the lab's raw data (``raw``) and
trains on ``data``, the raw data through the results the state carries.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.reply import Reply
from fedlab import codec
from fedlab.config import FederationConfig
from fedlab.data import LabData
from fedlab.errors import ConfigError, ProtocolError
from fedlab.ledger import LabLedger, LedgerStore
from fedlab.secure import signing
from fedlab.updates import digest_update

log = logging.getLogger(__name__)

__all__ = ["LabState", "LabWorker", "Reply", "SyntheticLabWorker", "pack_state",
           "unpack_lab_state", "unpack_state"]


_STATE_MAGIC = b"FLS1"


@dataclass
class LabState:
    """What a lab keeps between messages of one run (see :func:`pack_state`)."""

    secagg: bytes | None = None  # the training rounds' secure-aggregation session
    counters: dict[str, int] = field(default_factory=dict)  # privacy counters
    prep_secagg: bytes | None = None  # the preprocessing sum's own session (while it runs)
    prep: bytes | None = None  # the federation's preprocessing results (canonical JSON)
    prep_sha: str = ""  # their SHA-256 (hex)


def pack_state(secagg: bytes | None, counters: Mapping[str, int], *,
               prep_secagg: bytes | None = None, prep: bytes | None = None,
               prep_sha: str = "") -> bytes:
    """The lab's state between messages: privacy counters + the (encrypted) secure-
    aggregation session(s) + the preprocessing results. Kept by whoever serves the lab
    (Flower's node state in simulation, the warm worker in deployment), so the privacy
    budget is counted once per lab whichever process trains it."""
    parts = [secagg or b"", prep_secagg or b"", prep or b""]
    head = json.dumps({"dp": dict(counters), "secagg": secagg is not None,
                       "prep_secagg": prep_secagg is not None, "prep": prep is not None,
                       "prep_sha": prep_sha, "sizes": [len(x) for x in parts]}).encode()
    return _STATE_MAGIC + len(head).to_bytes(4, "big") + head + b"".join(parts)


def unpack_lab_state(state: bytes | None) -> LabState:
    if not state:
        return LabState()
    if not state.startswith(_STATE_MAGIC) or len(state) < 8:
        raise ProtocolError("the lab's saved state is not fedlab's; start the lab afresh")
    n = int.from_bytes(state[4:8], "big")
    body = state[8 + n:]
    try:
        head = json.loads(state[8:8 + n])
        counters = {str(k): int(v) for k, v in dict(head["dp"]).items()}
        has = [bool(head["secagg"]), bool(head.get("prep_secagg")), bool(head.get("prep"))]
        sizes = [int(x) for x in head.get("sizes", [len(body), 0, 0])]
        prep_sha = str(head.get("prep_sha", ""))
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"the lab's saved state is damaged ({exc})") from exc
    if len(sizes) != 3 or sum(sizes) != len(body) or min(sizes) < 0:
        raise ProtocolError("the lab's saved state is damaged (its parts do not add up)")
    parts: list[bytes | None] = []
    at = 0
    for present, size in zip(has, sizes, strict=True):
        parts.append(body[at:at + size] if present else None)
        at += size
    return LabState(secagg=parts[0], counters=counters, prep_secagg=parts[1], prep=parts[2],
                    prep_sha=prep_sha if parts[2] is not None else "")


def unpack_state(state: bytes | None) -> tuple[bytes | None, dict[str, int]]:
    """The training session and the privacy counters of a saved state."""
    st = unpack_lab_state(state)
    return st.secagg, st.counters


class LabPrivacy:
    """A lab's differential privacy: the noise it uses and the budget it has spent.

    - ``record``: DP-SGD at the lab. The noise multiplier is calibrated before training
      (from the lab's own sampling rate batch/n and the run's total steps) so that the
      whole run spends the target epsilon; or, if given, used as is with epsilon as the
      budget. Before each round the lab checks that the round's steps stay within its
      budget, and refuses the round (and every later one) if not.
    - ``lab``: each update is clipped to L2 norm ``clip`` and carries Gaussian noise of
      std ``noise_multiplier * clip / sqrt(min_labs)``; the securely aggregated sum (labs
      weighted equally) of at least min_labs labs carries at least the full noise.
      Accounted as the Gaussian mechanism once per round.
    """

    def __init__(self, cfg: FederationConfig, num_train: int, n_labs: int) -> None:
        from fedlab import privacy as dp

        self.cfg = cfg
        self.mode = cfg.privacy.mode
        p = cfg.privacy
        self.noise_multiplier = p.noise_multiplier
        self.ledger: Any = None
        self.rounds = 0
        self.epsilon = 0.0
        # Lab-level noise is split as if only min_labs labs contributed: the fewest a round
        # can aggregate, so the sum never carries less noise than planned when labs drop.
        self.n_labs = max(1, min(n_labs, cfg.min_labs))
        if self.mode == "record":
            from fedlab.training import dp_steps

            q = min(1.0, cfg.training.batch_size / max(1, num_train))
            self.steps_per_round = dp_steps(num_train, cfg.training.batch_size,
                                            cfg.training.local_epochs)
            if self.noise_multiplier <= 0:
                self.noise_multiplier = dp.calibrate_noise(
                    p.epsilon, p.delta, q, self.steps_per_round * cfg.rounds, p.accountant)
            self.ledger = dp.PrivacyLedger(budget_epsilon=p.epsilon, delta=p.delta,
                                           noise_multiplier=self.noise_multiplier,
                                           sample_rate=q, accountant=p.accountant)
        elif self.mode == "lab" and self.noise_multiplier <= 0:
            # One Gaussian mechanism per round on the sum, every lab every round: the
            # record-level calibration with sampling rate 1 and one step per round.
            self.noise_multiplier = dp.calibrate_noise(p.epsilon, p.delta, 1.0, cfg.rounds,
                                                       p.accountant)
        if self.mode == "lab":
            self._check_share_fits()

    def _check_share_fits(self) -> None:
        """Secure aggregation encodes values within +-clip of its fixed-point range; a noise
        share cut there would leave the sum with less noise than the accounted epsilon
        assumes. Refuse, before any training, unless the clipped update plus 5 standard
        deviations of the share fits (about 6e-7 of values would be cut)."""
        import math

        from fedlab.secure.protocol import SecAggParams

        p = self.cfg.privacy
        limit = float(SecAggParams.__dataclass_fields__["clip"].default)
        share = self.noise_multiplier * p.clip / math.sqrt(self.n_labs)
        if p.clip + 5.0 * share > limit:
            raise ConfigError(
                f"privacy: lab-level noise shares of std {share:.3g} (noise multiplier "
                f"{self.noise_multiplier:.3g} x clip {p.clip:g} / sqrt({self.n_labs} labs)) do "
                f"not fit secure aggregation's range of +-{limit:g} per value: the sum would "
                "carry less noise than the epsilon reported. Lower privacy.clip (the update "
                "bound), raise min_labs, allow a larger privacy.epsilon or fewer rounds")

    def counters(self) -> dict[str, int]:
        return {"steps": self.ledger.steps if self.ledger is not None else 0,
                "rounds": self.rounds}

    def params(self) -> dict[str, Any]:
        """What the counters are spent with (kept in the lab's ledger, fedlab.ledger)."""
        p = self.cfg.privacy
        return {"mode": self.mode, "noise_multiplier": float(self.noise_multiplier),
                "sample_rate": float(self.ledger.sample_rate) if self.ledger is not None
                else None, "delta": float(p.delta), "accountant": p.accountant}

    def epsilon_for(self, counters: Mapping[str, int]) -> float:
        """The epsilon that ``counters`` (steps, rounds) amount to."""
        from fedlab import privacy as dp

        p = self.cfg.privacy
        if self.ledger is not None:
            steps = int(counters.get("steps", 0))
            return (dp.epsilon_spent(self.noise_multiplier, self.ledger.sample_rate, steps,
                                     self.ledger.delta, self.ledger.accountant) if steps else 0.0)
        rounds = int(counters.get("rounds", 0))
        if self.mode == "lab" and rounds:
            return dp.epsilon_spent_lab_level(self.noise_multiplier, rounds, p.delta,
                                              p.accountant)
        return 0.0

    def load(self, counters: Mapping[str, int]) -> None:
        """Take over what this lab has spent so far (from its saved state and its ledger)."""
        self.rounds = int(counters.get("rounds", 0))
        if self.ledger is not None:
            self.ledger.steps = int(counters.get("steps", 0))
            self.ledger.epsilon = self.epsilon_for(counters)
            self.epsilon = self.ledger.epsilon
        else:
            self.epsilon = self.epsilon_for(counters)

    def before_round(self, lab: str, round_: int) -> None:
        if self.ledger is not None and not self.ledger.allows(self.steps_per_round):
            raise ProtocolError(
                f"lab {lab}: round {round_} would spend epsilon "
                f"{self.ledger.epsilon_after(self.steps_per_round):.3g}, over its budget "
                f"{self.ledger.budget_epsilon:g} (delta {self.ledger.delta:g}); the lab takes "
                "no further part in training")

    def after_round(self, update: np.ndarray, metrics: dict[str, Any]) -> np.ndarray:
        from fedlab import privacy as dp

        if self.mode == "record":
            self.epsilon = self.ledger.spend(self.steps_per_round)
        elif self.mode == "lab":
            p = self.cfg.privacy
            update = dp.clip_update(update, p.clip) + dp.lab_noise_share(
                update.size, p.clip, self.noise_multiplier, self.n_labs)
            self.rounds += 1
            self.epsilon = dp.epsilon_spent_lab_level(self.noise_multiplier, self.rounds,
                                                      p.delta, p.accountant)
            metrics["weight"] = 1  # equal weights: the sum's sensitivity is clip
        if self.mode != "off":
            metrics["epsilon"] = float(self.epsilon)
            metrics["noise-multiplier"] = float(self.noise_multiplier)
        return update


# (model, features, classes, training, strategy, seed, DP) -> LocalTrainer, per process
_TRAINERS: dict[tuple[Any, ...], Any] = {}

class LabWorker:
    """One lab: data, model, identity; answers the server's requests.

    ``data`` is what the lab's loader gave (``fedlab.task.load_lab``): a :class:`LabData`,
    or for a text data set a :class:`~fedlab.data.text.TextLab`. It is kept as ``raw``;
    the lab trains and evaluates on ``data``, which is ``raw`` itself when the run has no
    federated preprocessing, else ``raw`` through the run's preprocessing results."""

    prep_steps: tuple[str, ...] = ()  # the run's federated preprocessing steps
    raw: Any = None
    # Where the lab keeps its own record of the privacy it has spent (fedlab.ledger); None:
    # nowhere but the state it carries (unit tests, benchmarks).
    ledger_store: LedgerStore | None = None
    _prep_sha = ""  # the preprocessing results ``data`` was made with ("" = none)

    def __init__(self, cfg: FederationConfig, lab: str, data: LabData | Any,
                 identity: Ed25519PrivateKey, roster: Mapping[str, Any]) -> None:
        from fedlab.prep import steps_for
        from fedlab.task import task_shape
        from fedlab.training import LocalTrainer

        self.cfg = cfg
        self.lab = lab
        self.raw = data
        self.data = data
        self.prep_steps = steps_for(cfg)
        self.identity = identity
        self.roster = dict(roster)
        shape = task_shape(cfg)
        self.num_train = int(len(data.y_train))
        self.privacy = LabPrivacy(cfg, self.num_train, len(self.roster))
        dp = ((cfg.privacy.clip, self.privacy.noise_multiplier, cfg.training.batch_size)
              if cfg.privacy.mode == "record" else None)
        # One compiled model per process and configuration, shared by the virtual labs a
        # simulation actor plays in turn: every call sets the weights it was sent and
        # starts from a fresh optimizer, so nothing of one lab carries into another's.
        key = (repr(cfg.model), shape.num_features, shape.num_classes, repr(cfg.training),
               repr(cfg.strategy), cfg.seed, dp)
        trainer = _TRAINERS.get(key)
        if trainer is None:
            trainer = LocalTrainer(cfg.model, shape.num_features, shape.num_classes,
                                   cfg.training, cfg.strategy, seed=cfg.seed)
            if dp is not None:
                trainer.enable_record_dp(l2_clip=dp[0], noise_multiplier=dp[1],
                                         expected_batch_size=dp[2])
            _TRAINERS[key] = trainer
        self.trainer = trainer
        self.shapes = self.trainer.shapes
        self.size = codec.num_params(self.shapes)

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
        self.privacy.before_round(self.lab, round_)
        weights = codec.unflatten(global_vec, self.shapes)
        fit = self.trainer.fit(weights, self.data.x_train, self.data.y_train,
                               round_seed=round_ * 100_003 + zlib.crc32(self.lab.encode()) % 100_003)
        update = codec.flatten(fit.weights) - global_vec
        metrics.update({"num-examples": fit.num_examples, "seconds": fit.seconds})
        if self.privacy.mode == "off":
            # Under DP the loss on the training rows is not covered by the accountant (the
            # noise is on the gradients, not on this number): it stays at the lab.
            metrics["train-loss"] = fit.loss
        update = self.privacy.after_round(update, metrics)
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
        st = unpack_lab_state(state)
        secagg_state = st.secagg
        ledger = self._privacy_ledger(run_id)
        counters = st.counters if ledger is None else ledger.merge(st.counters,
                                                                   self.privacy.params())
        self.privacy.load(counters)
        spent_before = self.privacy.counters()
        self._use_prep(st)
        if kind in ("round", "final"):
            self._check_prep(cfg, st)
        if kind == "hello":
            reply = self.hello(run_id)
        elif kind == "prep":
            from client.prep import handle_prep

            reply = handle_prep(self, cfg, st)
        elif kind == "final":
            reply = self.final(self._model(vector))
        elif kind == "done":  # the server has every lab's final evaluation
            reply = Reply(meta={"lab": self.lab})
        elif kind == "round" and not cfg.get("secure", False):
            reply = self.plain_round(run_id, int(cfg["round"]), self._model(vector))
        elif kind in ("setup", "share", "round", "unmask"):
            from client.secure import handle_secure

            reply = handle_secure(self, kind, cfg, vector, secagg_state)
            secagg_state = reply.state
        else:
            raise ProtocolError(f"lab {self.lab}: unknown request {kind!r} from the server")
        spent = self.privacy.counters()
        if ledger is not None and spent != spent_before:
            # Before the update leaves the lab: if this fails, the reply is an error.
            ledger.add(spent_before, spent, self.privacy.params(), self.privacy.epsilon,
                       self.privacy.epsilon_for, run_id=run_id, round_=int(cfg.get("round", 0)))
        reply.state = pack_state(secagg_state, spent,
                                 prep_secagg=st.prep_secagg, prep=st.prep, prep_sha=st.prep_sha)
        return reply

    def _privacy_ledger(self, run_id: str) -> LabLedger | None:
        """This lab's privacy ledger for the run (None: DP off, or no ledger kept)."""
        if self.ledger_store is None or self.privacy.mode == "off" or not run_id:
            return None
        return self.ledger_store.ledger(run_id, self.lab)

    # -- federated preprocessing -----------------------------------------------------------
    def _use_prep(self, st: LabState) -> None:
        """Make ``data`` the raw data through the results ``st`` carries (none: raw)."""
        if st.prep_sha == self._prep_sha:
            return
        if st.prep is None:
            self.data, self._prep_sha = self.raw, ""
            return
        from fedlab import prep

        results = prep.parse_blob(st.prep, st.prep_sha, self.lab)
        self.data = prep.apply_results(self.cfg, self.raw, results, self.lab)
        self._prep_sha = st.prep_sha
        log.info("lab %s: preprocessing %s applied (results %s...)", self.lab,
                 ", ".join(results), st.prep_sha[:12])

    def _check_prep(self, cfg: Mapping[str, Any], st: LabState) -> None:
        """Before training or evaluating: take the results a message carries, and refuse
        to work on data preprocessed otherwise than the server says."""
        want = str(cfg.get("prep-sha", ""))
        blob = cfg.get("prep")
        if want and want != self._prep_sha and isinstance(blob, bytes):
            st.prep, st.prep_sha = blob, want
            self._use_prep(st)
        if want == self._prep_sha and (want or not self.prep_steps):
            return
        if not want:
            raise ProtocolError(
                f"lab {self.lab}: this lab's config preprocesses with {list(self.prep_steps)} "
                "but the server sent no preprocessing results; the lab and the server must use "
                "the same federation.toml")
        raise ProtocolError(
            f"lab {self.lab}: the federation trains on data preprocessed with results "
            f"{want[:12]}..., which this lab does not hold (it restarted during the run?); "
            "the server sends them again with the lab's next round")

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
        self.privacy = LabPrivacy(cfg, self.num_train, len(self.roster))
        rng = np.random.default_rng(zlib.crc32(lab.encode()))
        self._update = (rng.standard_normal(size, dtype=np.float32) * 0.01).astype(np.float32)

    def evaluate(self, global_vec: np.ndarray) -> dict[str, float | int]:
        return {}

    def train(self, round_: int, global_vec: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        self._model(global_vec)
        return self._update, {"num-examples": self.num_train, "train-loss": 0.0, "seconds": 0.0}
