"""The federation's round loop at the server.

One run: find the labs (a signed hello from each node), then for every round send
the global model to the participants and get back, in the same reply, their update
and their evaluation of the model they received (so a plain round is one exchange);
aggregate (plainly, or securely: see ``server.secure``), validate, apply the server
rule, checkpoint, and log. After the last round one evaluation exchange measures the
final model at every lab. Everything goes to the run folder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedlab import codec
from fedlab.config import FederationConfig
from fedlab.errors import FedlabError, ProtocolError, RoundAborted, RunError, SignatureError
from fedlab.job import Job
from fedlab.runs import RunFolder
from fedlab.secure import signing
from fedlab.updates import digest_update, roster_from_hex
from server import robust
from server.exchange import exchange
from server.validate import check_vector

log = logging.getLogger(__name__)

HELLO = "query.hello"
ROUND = "train.round"
FINAL = "evaluate.final"
DONE = "query.done"


@dataclass
class RoundOutcome:
    avg_update: np.ndarray | None
    participants: list[str]
    contributors: list[str]
    dropped: list[str]
    rejected: dict[str, str]
    lab_metrics: dict[str, dict[str, Any]]  # lab -> train/eval metrics from its reply
    bytes_sent: dict[str, int]
    secure: bool
    reason: str = ""
    exchanges: int = 1


@dataclass
class Labs:
    """Which Flower node is which lab (learned from their signed hellos)."""

    node_of: dict[str, int] = field(default_factory=dict)
    num_train: dict[str, int] = field(default_factory=dict)

    def lab_of(self, node_id: int) -> str | None:
        for lab, nid in self.node_of.items():
            if nid == node_id:
                return lab
        return None


def payload_bytes(content: RecordDict) -> int:
    """Bytes of the arrays and config values a lab sent (what travels on the wire)."""
    total = 0
    for rec in content.array_records.values():
        for arr in rec.values():
            total += len(arr.data)
    for rec in content.config_records.values():
        for value in rec.values():
            if isinstance(value, bytes):
                total += len(value)
    return total


class FederationServer:
    """Runs one federation job on a Flower Grid."""

    def __init__(self, grid: Grid, job: Job) -> None:
        self.grid = grid
        self.job = job
        self.cfg: FederationConfig = job.config()
        self.run_id = Path(job.run_dir).name
        if job.resume:
            # A resumed run talks to labs that may still hold protocol state (keys, seeds,
            # privacy counters) of the interrupted incarnation under the same name: give it
            # a name of its own so every lab starts fresh sessions and no signature or
            # share of the old incarnation can be replayed into the new one.
            audit = Path(job.run_dir) / "audit.jsonl"
            starts = audit.read_text().count('"event": "run_started"') if audit.exists() else 0
            self.run_id = f"{self.run_id}.{starts}"
        self.folder = RunFolder(job.run_dir)
        self.roster = roster_from_hex(job.roster)
        self.labs = Labs()
        self.guard = signing.ReplayGuard()
        self.timeout = self.cfg.stage_timeout
        self.prep: Any = None  # the run's federated preprocessing (server.prep), if any

    def prep_cfg(self, lab: str) -> dict[str, Any]:
        """What a round or final message to ``lab`` carries about the run's federated
        preprocessing (its results' hash; the results while the lab may lack them)."""
        return self.prep.cfg_for(lab) if self.prep is not None else {}

    # -- helpers ---------------------------------------------------------------------------
    def _verify(self, lab: str, round_: int, stage: str, payload: bytes, sig: bytes) -> None:
        signing.verify(self.roster, sig, self.run_id, round_, stage, lab, payload)
        self.guard.accept(lab, stage, round_)

    def _reject(self, lab: str, round_: int, stage: str, reason: str) -> None:
        log.warning("round %d: %s from lab %s rejected: %s", round_, stage, lab, reason)
        self.folder.audit.record("rejected", round=round_, stage=stage, lab=lab, reason=reason)

    # -- discovery -------------------------------------------------------------------------
    def discover(self, wait: float) -> None:
        """Ask every connected node which lab it is; wait until min_labs have answered.

        A node whose hello fails (its process died, it raised) is asked again a few times;
        if it keeps failing while too few labs have joined, the run stops early with the
        nodes' own error messages instead of waiting out the whole deadline."""
        deadline = time.monotonic() + wait
        settled: set[int] = set()  # answered (joined or refused for what it sent)
        failures: dict[int, list[str]] = {}
        # Deployment: a registered lab whose node is not connected yet (or restarting)
        # answers "Node Unavailable"; it is asked again every few seconds until the
        # deadline, never given up on, since labs start whenever they start.
        deployment = self.job.mode == "deployment"
        retry_at: dict[int, float] = {}
        while True:
            now = time.monotonic()
            nodes = [n for n in self.grid.get_node_ids()
                     if n not in settled and retry_at.get(n, 0.0) <= now]
            if nodes:
                reqs = {n: (HELLO, RecordDict({"cfg": ConfigRecord({"run": self.run_id})}))
                        for n in nodes}
                # Wait for the answers as long as discovery may last: asking a slow node
                # again would put two messages for one lab in flight, and the later reply
                # would overwrite the lab's saved state with a stale copy (seen in
                # simulation under load).
                res = exchange(self.grid, reqs, timeout=max(1.0, deadline - time.monotonic()))
                for node_id, reply in res.replies.items():
                    settled.add(node_id)
                    self._hello(node_id, reply)
                for node_id, err in res.errors.items():
                    failures.setdefault(node_id, []).append(err)
                    log.warning("node %s could not answer hello: %s", node_id, err)
                    if deployment:
                        retry_at[node_id] = time.monotonic() + 5.0
                    elif len(failures[node_id]) >= 3:
                        settled.add(node_id)
                        self.folder.audit.record("refused", node=str(node_id), reason=err)
            joined = len(self.labs.node_of)
            if joined == len(self.job.labs) or (joined >= self.cfg.min_labs
                                                and time.monotonic() >= deadline):
                return
            pending = [n for n in self.grid.get_node_ids() if n not in settled]
            if time.monotonic() >= deadline or (not deployment and joined < self.cfg.min_labs
                                                 and not pending and len(failures) > 0):
                reasons = "; ".join(f"node {n}: {errs[-1]}" for n, errs in failures.items())
                raise RunError(f"only {joined} of the {self.cfg.min_labs} labs needed joined "
                               f"within {wait:.0f} s (joined: {sorted(self.labs.node_of)})"
                               + (f"; failures: {reasons}" if reasons else
                                  "; check that the labs are running"))
            time.sleep(0.5 if failures else 0.2)

    def _hello(self, node_id: int, reply: Message) -> None:
        try:
            meta = reply.content["meta"]
            lab = str(meta["lab"])
            n = int(meta["num-train"])
            sig = bytes(meta["sig"])
            self._verify(lab, 0, "hello", str(n).encode(), sig)
        except (KeyError, TypeError, ValueError, FedlabError) as exc:
            self.folder.audit.record("refused", node=str(node_id), reason=str(exc))
            log.warning("node %s refused: %s", node_id, exc)
            return
        if lab in self.labs.node_of:
            self.folder.audit.record("refused", node=str(node_id), lab=lab,
                                     reason="a second node claims this lab")
            return
        self.labs.node_of[lab] = node_id
        self.labs.num_train[lab] = n
        self.folder.audit.record("joined", lab=lab, node=str(node_id), num_train=n)
        log.info("lab %s joined (%d training rows)", lab, n)

    # -- plain round -----------------------------------------------------------------------
    def plain_round(self, round_: int, global_vec: np.ndarray) -> RoundOutcome:
        self.guard.advance(round_)
        participants = sorted(self.labs.node_of)
        if len(participants) < self.cfg.min_labs:
            raise RoundAborted(f"round {round_}: only {len(participants)} labs available, "
                               f"min_labs is {self.cfg.min_labs}")
        model_rec = codec.to_record(global_vec)
        reqs = {}
        for lab in participants:
            content = RecordDict({"model": model_rec,
                                  "cfg": ConfigRecord({"round": round_, "run": self.run_id,
                                                       "secure": False,
                                                       **self.prep_cfg(lab)})})
            reqs[self.labs.node_of[lab]] = (ROUND, content)
        res = exchange(self.grid, reqs, timeout=self.timeout)
        rb = self.cfg.robustness
        limit = int(rb.max_message_mb * 1024 * 1024)
        updates: list[np.ndarray] = []
        weights: list[int] = []
        out = RoundOutcome(None, participants, [], [], {}, {}, {}, secure=False)
        accepted: list[str] = []
        for lab in participants:
            node = self.labs.node_of[lab]
            reply = res.replies.get(node)
            if reply is None:
                out.dropped.append(lab)
                if node in res.errors:
                    self.folder.audit.record("lab_error", round=round_, lab=lab,
                                             reason=res.errors[node])
                continue
            size = payload_bytes(reply.content)
            out.bytes_sent[lab] = size
            try:
                if size > limit:
                    raise ProtocolError(f"reply of {size} bytes exceeds robustness.max_message_mb "
                                        f"({rb.max_message_mb:g} MB); refused before decoding")
                meta = reply.content["meta"]
                metrics = dict(reply.content["metrics"])
                vec = codec.from_record(reply.content["update"], length=global_vec.size,
                                        dtype=np.float32)
                n = int(metrics["num-examples"])
                self._verify(lab, round_, "round", digest_update(vec, metrics),
                             bytes(meta["sig"]))
            except (KeyError, TypeError, ValueError, ProtocolError, SignatureError) as exc:
                out.rejected[lab] = str(exc)
                self._reject(lab, round_, "round", str(exc))
                continue
            out.lab_metrics[lab] = metrics
            reason = check_vector(vec, length=global_vec.size, max_norm=rb.max_update_norm)
            if reason is None and not 0 < n <= 10**9:
                reason = f"num-examples is {n}"
            if reason is not None:
                out.rejected[lab] = reason
                self._reject(lab, round_, "round", reason)
                continue
            updates.append(vec)
            weights.append(n)
            accepted.append(lab)
        if len(accepted) < self.cfg.min_labs:
            out.reason = (f"only {len(accepted)} acceptable updates, "
                          f"min_labs is {self.cfg.min_labs}")
            return out
        try:
            out.avg_update, used = robust.aggregate(updates, weights, rb)
        except RoundAborted as exc:
            out.reason = str(exc)
            return out
        out.contributors = [accepted[i] for i in used] if rb.aggregator == "krum" else accepted
        return out

    # -- final evaluation ------------------------------------------------------------------
    def final_evaluation(self, global_vec: np.ndarray) -> dict[str, dict[str, Any]]:
        model_rec = codec.to_record(global_vec)
        reqs = {node: (FINAL, RecordDict({"model": model_rec,
                                          "cfg": ConfigRecord({"run": self.run_id,
                                                               **self.prep_cfg(lab)})}))
                for lab, node in self.labs.node_of.items()}
        res = exchange(self.grid, reqs, timeout=self.timeout)
        out: dict[str, dict[str, Any]] = {}
        for node, reply in res.replies.items():
            lab = self.labs.lab_of(node)
            if lab is not None and "metrics" in reply.content:
                out[lab] = dict(reply.content["metrics"])
        for node, why in sorted(res.errors.items()):
            log.warning("lab %s: no final evaluation (%s)", self.labs.lab_of(node), why)
        for node in sorted(res.missing):
            log.warning("lab %s: no final evaluation within %.0f s", self.labs.lab_of(node),
                        self.timeout)
        return out

    def say_done(self, timeout: float = 20.0) -> None:
        """Tell every lab that the run is over, after the final evaluation is in.

        A lab started for a number of runs stops its node on this message, not on the final
        evaluation it answered: Flower's SuperLink answers a pull for a reply whose node has
        gone offline with "node unavailable" even when the reply itself has arrived, so a
        lab that stopped right after sending its final evaluation could lose it. The labs'
        answers to this message carry nothing; one that never comes is harmless."""
        reqs = {node: (DONE, RecordDict({"cfg": ConfigRecord({"run": self.run_id})}))
                for node in self.labs.node_of.values()}
        exchange(self.grid, reqs, timeout=min(timeout, self.timeout))


def pooled(rows: Iterable[dict[str, Any]], prefix: str = "test") -> dict[str, float]:
    """Example-weighted mean of labs' metrics = the metric on the pooled rows."""
    n = 0.0
    loss = 0.0
    acc = 0.0
    for m in rows:
        k = float(m.get(f"{prefix}-examples", 0))
        if k <= 0:
            continue
        n += k
        loss += k * float(m[f"{prefix}-loss"])
        acc += k * float(m[f"{prefix}-accuracy"])
    if n == 0:
        return {"accuracy": float("nan"), "loss": float("nan"), "examples": 0}
    return {"accuracy": acc / n, "loss": loss / n, "examples": int(n)}
