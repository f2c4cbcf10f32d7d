"""The server side of secure aggregation on Flower messages (see fedlab.secure.protocol).

A steady round is two exchanges: R1 ``train.round`` (the global model and the
participant set out; masked update, signed metrics and next-seed shares back) and R2
``train.unmask`` (share requests out; shares back), after which the masks cancel and
only the weighted sum of the survivors' updates and the sum of their example counts
are known. Setup (S1 ``train.setup``, S2 ``train.share``) runs at the start and again
only for labs whose mask key was revealed (they dropped) or that joined later.

Every rejection, dropout and abort the protocol records goes to the audit log.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

from fedlab import codec
from fedlab.errors import FedlabError, RoundAborted
from fedlab.secure import signing
from fedlab.secure.protocol import ServerSession
from fedlab.updates import metrics_payload, secagg_params
from server.exchange import exchange

if TYPE_CHECKING:
    from server.federation import FederationServer, RoundOutcome

log = logging.getLogger(__name__)


class SecureRounds:
    """Runs rounds of secure aggregation for one FederationServer."""

    def __init__(self, srv: FederationServer, vector_len: int) -> None:
        self.srv = srv
        self.vector_len = vector_len
        labs = tuple(srv.roster)
        self.params = secagg_params(srv.run_id, labs, srv.cfg.min_labs)
        self.session = ServerSession(self.params, srv.roster, vector_len)
        self._events_seen = 0

    # -- plumbing ----------------------------------------------------------------------
    def _send(self, mtype: str, per_lab: dict[str, RecordDict]) -> dict[str, Message]:
        node_of = self.srv.labs.node_of
        reqs = {node_of[lab]: (mtype, content) for lab, content in per_lab.items() if lab in node_of}
        res = exchange(self.srv.grid, reqs, timeout=self.srv.timeout)
        out: dict[str, Message] = {}
        for node, reply in res.replies.items():
            lab = self.srv.labs.lab_of(node)
            if lab is not None:
                out[lab] = reply
        for node, err in res.errors.items():
            lab = self.srv.labs.lab_of(node)
            self.srv.folder.audit.record("lab_error", stage=mtype, lab=lab, reason=err)
            log.warning("lab %s failed at %s: %s", lab, mtype, err)
        return out

    def _cfg(self, round_: int, request: bytes, **extra: Any) -> ConfigRecord:
        return ConfigRecord({"run": self.srv.run_id, "round": round_, "secure": True,
                             "secagg": request, **extra})

    @staticmethod
    def _protocol_bytes(reply: Message) -> bytes | None:
        try:
            value = reply.content["meta"]["secagg"]
        except (KeyError, TypeError):
            return None
        return value if isinstance(value, bytes) else None

    def _flush_events(self) -> None:
        events = self.session.events
        for ev in events[self._events_seen:]:
            self.srv.folder.audit.record("secagg_" + str(ev.get("event", "event")),
                                         **{k: v for k, v in ev.items() if k != "event"})
        self._events_seen = len(events)

    # -- setup -------------------------------------------------------------------------
    def setup(self, round_: int, available: list[str]) -> int:
        """S1 + S2 for the labs that need it; returns the number of exchanges used."""
        needing = self.session.labs_needing_setup(available)
        if not needing:
            return 0
        log.info("secure setup for %s", ", ".join(needing))
        s1 = self.session.advertise_requests(needing)
        replies = self._send("train.setup", {lab: RecordDict({"cfg": self._cfg(round_, req)})
                                             for lab, req in s1.items()})
        adverts = {lab: b for lab, r in replies.items() if (b := self._protocol_bytes(r))}
        s2 = self.session.collect_adverts(adverts)
        replies = self._send("train.share", {lab: RecordDict({"cfg": self._cfg(round_, req)})
                                             for lab, req in s2.items()})
        shares = {lab: b for lab, r in replies.items() if (b := self._protocol_bytes(r))}
        self.session.collect_shares(shares)
        self._flush_events()
        return 2

    # -- one round ---------------------------------------------------------------------
    def run_round(self, round_: int, global_vec: np.ndarray) -> RoundOutcome:
        from server.federation import RoundOutcome, payload_bytes

        srv = self.srv
        srv.guard.advance(round_)
        available = sorted(srv.labs.node_of)
        out = RoundOutcome(None, [], [], [], {}, {}, {}, secure=True, exchanges=0)
        try:
            out.exchanges += self.setup(round_, available)
            r1 = self.session.train_requests(round_, available)
            out.participants = sorted(r1)
            model_rec = codec.to_record(global_vec)
            replies = self._send("train.round", {
                lab: RecordDict({"model": model_rec,
                                 "cfg": self._cfg(round_, req, **srv.prep_cfg(lab))})
                for lab, req in r1.items()})
            out.exchanges += 1
            masked: dict[str, tuple[np.ndarray, bytes]] = {}
            for lab, reply in replies.items():
                try:
                    header = self._protocol_bytes(reply)
                    vec = codec.array_of(reply.content["update"]["v"], "masked update")
                    metrics = dict(reply.content["metrics"])
                    signing.verify(srv.roster, bytes(reply.content["meta"]["sig"]), srv.run_id,
                                   round_, "metrics", lab, metrics_payload(metrics))
                    if header is None:
                        raise FedlabError("reply carries no protocol header")
                except (KeyError, TypeError, ValueError, FedlabError) as exc:
                    out.rejected[lab] = str(exc)
                    srv.folder.audit.record("rejected", round=round_, stage="round", lab=lab,
                                            reason=str(exc))
                    continue
                masked[lab] = (vec, header)
                out.lab_metrics[lab] = metrics
                out.bytes_sent[lab] = payload_bytes(reply.content)
            r2 = self.session.collect_masked(round_, masked)
            replies = self._send("train.unmask", {lab: RecordDict({"cfg": self._cfg(round_, req)})
                                                  for lab, req in r2.items()})
            out.exchanges += 1
            for lab, reply in replies.items():
                out.bytes_sent[lab] = out.bytes_sent.get(lab, 0) + payload_bytes(reply.content)
            unmask = {lab: b for lab, r in replies.items() if (b := self._protocol_bytes(r))}
            result = self.session.collect_unmask(round_, unmask)
        except RoundAborted as exc:
            out.reason = str(exc)
            self._flush_events()
            return out
        self._flush_events()
        out.contributors = sorted(result.survivors)
        out.dropped = sorted(result.dropped)
        if result.total_weight <= 0:
            out.reason = "the aggregate's total weight is 0"
            return out
        out.avg_update = result.average
        return out
