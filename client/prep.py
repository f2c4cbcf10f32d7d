"""The lab's side of federated preprocessing (see :mod:`fedlab.prep` and :mod:`server.prep`).

One message type, ``query.prep``, whose ``cfg["stage"]`` says what the server asks:

- ``contribute`` in plain mode: the lab computes every step's integers from its raw
  data (:func:`fedlab.prep.contribution`), splits them into limbs and replies with
  the limb vector (int32), signed over (run, 0, "prep", lab, digest of the vector and
  the step names);
- in secure mode ``setup`` (S1), ``share`` (S2), ``contribute`` (R1: the limb vector
  encoded with weight 1 and masked) and ``unmask`` (R2) run the secure-aggregation
  protocol of :mod:`fedlab.secure.protocol` in a session of its own: protocol run id
  ``<run>#prep``, own keys and seeds, its state kept beside (never inside) the training
  rounds' session and dropped after R2.

The results come back later, with the lab's first round (or final) message:
``cfg["prep"]`` (canonical JSON) and ``cfg["prep-sha"]`` (its SHA-256). The lab keeps
them in its state, so whichever process serves its next message (a Ray actor in
simulation, the warm worker in deployment) applies them to the lab's raw rows before
it trains or evaluates (:meth:`client.lab.LabWorker.handle`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from client.reply import Reply
from fedlab import prep
from fedlab.errors import ProtocolError
from fedlab.secure import signing
from fedlab.secure.protocol import LabSession

if TYPE_CHECKING:
    from client.lab import LabState, LabWorker

STAGES = ("contribute", "setup", "share", "unmask")


def handle_prep(worker: LabWorker, cfg: Mapping[str, Any], st: LabState) -> Reply:
    """Answer one ``query.prep`` request; updates ``st`` (the lab's state) in place."""
    lab = worker.lab
    run_id = str(cfg.get("run", ""))
    stage = str(cfg.get("stage", ""))
    if stage not in STAGES:
        raise ProtocolError(f"lab {lab}: unknown preprocessing stage {stage!r}")
    steps = str(cfg.get("steps", ""))
    names = tuple(s for s in steps.split(",") if s)
    if names != tuple(worker.prep_steps):
        raise ProtocolError(
            f"lab {lab}: the server asks for preprocessing steps {list(names)}, this lab's "
            f"config for {list(worker.prep_steps)}; the lab and the server must use the same "
            "federation.toml")
    codec = prep.prep_codec(worker.cfg, names, len(worker.roster))
    meta: dict[str, Any] = {"lab": lab}
    if not cfg.get("secure", False):
        if stage != "contribute":
            raise ProtocolError(f"lab {lab}: preprocessing stage {stage!r} needs secure mode")
        vec = _limbs(worker, codec, names).astype(np.int32)
        meta["sig"] = signing.sign(worker.identity, run_id, 0, "prep", lab,
                                   prep.contribution_digest(vec, steps))
        return Reply(meta=meta, vector=vec)

    request = cfg.get("secagg")
    if not isinstance(request, bytes):
        raise ProtocolError(f"lab {lab}: secure preprocessing {stage} request without "
                            "protocol bytes")
    params = prep.prep_params(run_id, tuple(worker.roster), worker.cfg.min_labs)
    if st.prep_secagg is None:
        session = LabSession(params, lab, worker.identity, worker.roster)
    else:
        session = LabSession.restore(st.prep_secagg, params, lab, worker.identity, worker.roster)
    vector = None
    if stage == "setup":
        meta["secagg"] = session.advertise(request)
    elif stage == "share":
        meta["secagg"] = session.share_keys(request)
    elif stage == "contribute":
        limbs = _limbs(worker, codec, names)
        clip = params.encoder.clip
        if limbs.size and float(np.abs(limbs).max()) > clip:  # never let the encoder clip
            raise ProtocolError(f"lab {lab}: a preprocessing limb exceeds the ring's clip {clip}")
        vector, meta["secagg"] = session.masked_update(request, limbs.astype(np.float64), 1)
        if session.last_clipped:
            raise ProtocolError(f"lab {lab}: {session.last_clipped} preprocessing values were "
                                "clipped by the encoder; refusing to send a changed sum")
    else:
        meta["secagg"] = session.unmask(request)
    st.prep_secagg = None if stage == "unmask" else session.export_state()
    return Reply(meta=meta, vector=vector)


def _limbs(worker: LabWorker, codec: prep.IntCodec, names: tuple[str, ...]) -> np.ndarray:
    values = prep.contribution(worker.cfg, names, worker.raw, worker.lab)
    return codec.encode(values, f"lab {worker.lab}")
