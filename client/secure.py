"""The lab side of secure aggregation on Flower messages (see fedlab.secure.protocol).

Stages: ``setup`` (S1, advertise signed keys), ``share`` (S2, encrypted Shamir shares
for the neighbours), ``round`` (R1: evaluate the received model, train, then encode,
mask and sign the update; the reply also carries the evaluation metrics, signed, and
the shares of the next self-mask seed), ``unmask`` (R2: shares for the survivors' seeds
and the dropped labs' mask keys, with the protocol's refusals).

The session's state (keys, seeds, retired neighbours) is exported after every stage,
encrypted under a key derived from the lab's identity key, and handed back to the
caller, who keeps it for the next message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from client.lab import Reply
from fedlab.errors import ProtocolError
from fedlab.secure import signing
from fedlab.secure.protocol import LabSession
from fedlab.updates import metrics_payload, secagg_params

if TYPE_CHECKING:
    from client.lab import LabWorker


def handle_secure(worker: LabWorker, kind: str, cfg: Mapping[str, Any], vector: np.ndarray | None,
                  state: bytes | None) -> Reply:
    run_id = str(cfg.get("run", ""))
    request = cfg.get("secagg")
    if not isinstance(request, bytes):
        raise ProtocolError(f"lab {worker.lab}: secure {kind} request without protocol bytes")
    params = secagg_params(run_id, tuple(worker.roster), worker.cfg.min_labs)
    if state is None:
        session = LabSession(params, worker.lab, worker.identity, worker.roster)
    else:
        session = LabSession.restore(state, params, worker.lab, worker.identity, worker.roster)
    meta: dict[str, Any] = {"lab": worker.lab}
    metrics: dict[str, Any] = {}
    out_vec = None
    if kind == "setup":
        meta["secagg"] = session.advertise(request)
    elif kind == "share":
        meta["secagg"] = session.share_keys(request)
    elif kind == "round":
        round_ = int(cfg["round"])
        update, metrics = worker.train(round_, worker._model(vector))
        out_vec, header = session.masked_update(request, update,
                                               int(metrics.get("weight", metrics["num-examples"])))
        metrics["clipped"] = int(session.last_clipped)
        meta["secagg"] = header
        meta["sig"] = signing.sign(worker.identity, run_id, round_, "metrics", worker.lab,
                                   metrics_payload(metrics))
    elif kind == "unmask":
        meta["secagg"] = session.unmask(request)
    else:
        raise ProtocolError(f"lab {worker.lab}: unknown secure stage {kind!r}")
    return Reply(meta=meta, metrics=metrics, vector=out_vec, state=session.export_state())
