"""Federated preprocessing at the server: run the steps after discovery, before round 1.

What a step is and how its numbers travel: :mod:`fedlab.prep`. This module runs the
exchanges, turns the sum into the results, records them, and hands them to the labs.

The run, in order (``server.app.run_federation`` calls :meth:`Preprocessing.start`
right after the labs are discovered):

1. ``steps = fedlab.prep.steps_for(cfg)``; none (or a synthetic benchmark job): nothing
   happens, no exchange.
2. A resumed run whose folder holds ``prep.json`` reuses it (hash checked against the
   audit line that recorded it): no exchange, nothing recomputed.
3. Otherwise every discovered lab is asked for its vector (message ``query.prep``):

   - plain mode, 1 exchange: each lab replies with its limb vector, signed; the server
     checks signature, length and bounds and adds the vectors of the labs that
     answered;
   - secure mode, 4 exchanges (S1, S2, R1, R2 of :mod:`fedlab.secure.protocol` in a
     session of its own, protocol run id ``<run>#prep``): the server learns only the
     sum over the survivors, exactly as in a training round.

   A lab that does not answer, or whose answer is refused, is a dropout: the sum is over
   the others if at least ``min_labs`` remain, else the run stops (:class:`RunError`)
   before training, naming the labs and why.
4. Each step's ``finish`` turns the sum into its result; the results are written to
   ``prep.json`` (all steps, with the contributors and the SHA-256 every lab checks),
   one ``<step>.json`` per step (``feature_stats.json``, ``vocabulary.json``) and an
   audit line ``prep_completed`` with the hash; ``metrics.jsonl`` gets a ``prep`` row.
5. The results reach the labs with no exchange of their own: the first round message
   (and the final evaluation) to each lab carries them (``cfg["prep"]``, canonical
   JSON) and every round message carries their hash (``cfg["prep-sha"]``). A lab that
   did not answer a round (it may have restarted and lost them) gets them again in its
   next one; a lab without the right results refuses to train, so no update is ever
   computed on data preprocessed otherwise.

How the text task plugs in (helper B)
-------------------------------------

The ``vocabulary`` step is defined in :mod:`fedlab.prep` and runs for every data set
``fedlab.task.is_text`` says is text:

- the lab's loader (``fedlab.task.load_lab`` / ``load_simulation_lab``) returns the
  lab's :class:`~fedlab.data.text.TextLab`; :class:`client.lab.LabWorker` takes it as
  its data and keeps it as ``raw``;
- contribution: ``raw.vocabulary_contribution(buckets)`` (training texts only: hashed
  counts then presence), ``buckets = data.vocabulary_buckets``;
- finish: ``fedlab.data.text.select_buckets(counts, presence sums, model.vocab_size,
  data.vocabulary_min_labs)`` -> ``{"selected": [...bucket ids...], "buckets": ...}``;
- apply: ``fedlab.task.encode_text_lab(cfg, raw, fedlab.prep.selected_buckets(result))``,
  the token ids (:class:`~fedlab.data.LabData`) the lab trains on.

Anything that needs the same vocabulary outside a run (baselines, benchmarks, tests)
calls ``fedlab.prep.prepare_locally(cfg, raws)``: same integers, same sums, same
results, in the clear, for labs held in one process. A new step: define a
:class:`fedlab.prep.Step` and make ``steps_for`` return its name.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from fedlab import codec as flat
from fedlab import prep
from fedlab.errors import FedlabError, ProtocolError, RoundAborted, RunError, SignatureError
from server.exchange import exchange

if TYPE_CHECKING:
    from server.federation import FederationServer

log = logging.getLogger(__name__)

PREP = "query.prep"
RECORD = "prep.json"

# A lab's answer: its reply's small values and its vector (checked: dtype, length).
Answer = tuple[dict[str, Any], np.ndarray | None]
# One exchange: {lab: request cfg}, the vector expected back (dtype, length) or None ->
# ({lab: answer}, {lab: why it gave none}).
Send = Callable[[Mapping[str, Mapping[str, Any]], tuple[Any, int] | None],
                tuple[dict[str, Answer], dict[str, str]]]


class Preprocessing:
    """One run's federated preprocessing: results, and who still needs them.

    ``send`` carries one exchange (default: Flower messages ``query.prep`` through
    :func:`server.exchange.exchange`; tests pass labs called in-process)."""

    def __init__(self, srv: FederationServer, steps: tuple[str, ...],
                 send: Send | None = None) -> None:
        self.srv = srv
        self.steps = steps
        self.send: Send = send or self._flower_send
        self.results: dict[str, dict[str, Any]] = {}
        self.blob = b""
        self.sha = ""
        self.pending: set[str] = set()  # labs that may not hold the results yet
        self.exchanges = 0

    # -- entry point ---------------------------------------------------------------------
    @classmethod
    def start(cls, srv: FederationServer, *, resume: bool = False,
              send: Send | None = None) -> Preprocessing | None:
        """Compute (or, resuming, reload) the run's preprocessing; None if it has none."""
        steps = () if srv.job.synthetic_params else prep.steps_for(srv.cfg)
        if not steps:
            return None
        self = cls(srv, steps, send)
        path = srv.folder.path / RECORD
        audited = [e.get("sha256") for e in _audit_entries(srv.folder.path / "audit.jsonl")
                   if e.get("event") == "prep_completed"] if resume else []
        if resume and path.exists() and audited:
            self._reload(path, str(audited[-1]))
        else:  # a new run, or the interrupted one stopped before recording its results
            self._compute()
        self.pending = set(srv.labs.node_of)
        return self

    # -- what round messages carry -------------------------------------------------------
    def cfg_for(self, lab: str) -> dict[str, Any]:
        """Values a round or final message to ``lab`` carries (the results only while the
        lab may not hold them)."""
        out: dict[str, Any] = {"prep-sha": self.sha}
        if lab in self.pending:
            out["prep"] = self.blob
        return out

    def after_round(self, answered: set[str]) -> None:
        """Labs whose round reply arrived hold the results; any other may not."""
        self.pending = set(self.srv.labs.node_of) - set(answered)

    # -- computing -----------------------------------------------------------------------
    def _compute(self) -> None:
        srv, cfg = self.srv, self.srv.cfg
        t0 = time.time()
        labs = sorted(srv.labs.node_of)
        codec = prep.prep_codec(cfg, self.steps, len(srv.roster))
        srv.folder.audit.record("prep_started", steps=list(self.steps), labs=labs,
                                secure=cfg.secure)
        log.info("federated preprocessing (%s) over %d labs, %d limbs a lab, %s", ", ".join(
            self.steps), len(labs), codec.length, "secure" if cfg.secure else "plain")
        if cfg.secure:
            total, survivors, dropped = self._secure_sum(codec, labs)
        else:
            total, survivors, dropped = self._plain_sum(codec, labs)
        try:
            results = prep.finish(cfg, self.steps, codec.decode(total, len(survivors)))
        except FedlabError as exc:
            srv.folder.audit.record("prep_failed", steps=list(self.steps), reason=str(exc))
            raise RunError(f"federated preprocessing ({', '.join(self.steps)}): {exc}") from None
        self._set(results)
        record = {"steps": list(self.steps), "results": results, "sha256": self.sha,
                  "contributors": survivors, "dropped": dropped, "secure": cfg.secure,
                  "limb_bits": codec.b}
        srv.folder.write_json(RECORD, record)
        for name, result in results.items():
            srv.folder.write_json(name.replace("-", "_") + ".json", result)
        secs = time.time() - t0
        srv.folder.audit.record("prep_completed", steps=list(self.steps), sha256=self.sha,
                                contributors=survivors, dropped=dropped, secure=cfg.secure,
                                exchanges=self.exchanges)
        srv.folder.metric(kind="prep", round=0, seconds=secs, steps=list(self.steps),
                          contributors=survivors, dropped=dropped, exchanges=self.exchanges,
                          secure=cfg.secure)
        for name, result in results.items():
            log.info("preprocessing %s: %s", name, prep.get_step(name).summary(result))

    def _set(self, results: dict[str, dict[str, Any]]) -> None:
        self.results = results
        self.blob, self.sha = prep.results_blob(results)

    def _reload(self, path: Any, audited: str) -> None:
        srv = self.srv
        try:
            record = json.loads(path.read_text())
            results = record["results"]
            recorded = str(record["sha256"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RunError(f"{path}: cannot be read ({exc}); the run cannot resume with the "
                           "preprocessing it trained with") from None
        self._set(results)
        if self.sha != recorded or audited != self.sha:
            raise RunError(f"{path}: its results do not match the hash recorded in the audit "
                           "log; the run folder was changed, start a new run")
        if sorted(self.results) != sorted(self.steps):
            raise RunError(f"{path} holds steps {sorted(self.results)}, the config asks for "
                           f"{list(self.steps)}; start a new run")
        srv.folder.audit.record("prep_reused", steps=list(self.steps), sha256=self.sha)
        log.info("resuming with the recorded preprocessing (%s...)", self.sha[:12])

    def _fail(self, survivors: list[str], labs: list[str], why: dict[str, str]) -> RunError:
        srv = self.srv
        reasons = "; ".join(f"{lab}: {r}" for lab, r in sorted(why.items())) or "none given"
        msg = (f"federated preprocessing ({', '.join(self.steps)}): only {len(survivors)} of "
               f"{len(labs)} labs contributed (min_labs = {srv.cfg.min_labs}); missing or "
               f"refused: {reasons}. Training does not start; check those labs and run again")
        srv.folder.audit.record("prep_failed", steps=list(self.steps), contributors=survivors,
                                reason=msg)
        return RunError(msg)

    def _flower_send(self, cfgs: Mapping[str, Mapping[str, Any]],
                     expect: tuple[Any, int] | None) -> tuple[dict[str, Answer], dict[str, str]]:
        srv = self.srv
        node_of = srv.labs.node_of
        reqs = {node_of[lab]: (PREP, RecordDict({"cfg": ConfigRecord(dict(c))}))
                for lab, c in cfgs.items() if lab in node_of}
        res = exchange(srv.grid, reqs, timeout=srv.timeout)
        answers: dict[str, Answer] = {}
        why: dict[str, str] = {}
        for node, reply in res.replies.items():
            lab = srv.labs.lab_of(node)
            if lab is None:
                continue
            try:
                meta = dict(reply.content["meta"])
                vec = None
                if expect is not None:  # shape and dtype checked before decoding
                    vec = flat.from_record(reply.content["update"], length=expect[1],
                                           dtype=expect[0])
            except (KeyError, TypeError, ValueError, ProtocolError) as exc:
                why[lab] = f"refused: {exc}"
                srv._reject(lab, 0, "prep", str(exc))
                continue
            answers[lab] = (meta, vec)
        for node, err in res.errors.items():
            why[str(srv.labs.lab_of(node))] = err
        for node in res.missing:
            why[str(srv.labs.lab_of(node))] = f"no reply within {srv.timeout:.0f} s"
        return answers, why

    def _exchange(self, stage: str, per_lab: Mapping[str, Mapping[str, Any]],
                  expect: tuple[Any, int] | None, why: dict[str, str]) -> dict[str, Answer]:
        """One exchange of ``stage``; failures are recorded (audit) and kept in ``why``."""
        answers, failed = self.send(per_lab, expect)
        self.exchanges += 1
        for lab, reason in failed.items():
            why[lab] = f"{stage}: {reason}"
            self.srv.folder.audit.record("prep_dropped", stage=stage, lab=lab, reason=reason)
            log.warning("lab %s: no preprocessing %s answer (%s)", lab, stage, reason)
        return answers

    def _request(self, stage: str, secure: bool, extra: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
        return {"run": self.srv.run_id, "stage": stage, "steps": ",".join(self.steps),
                "secure": secure, **(extra or {})}

    def _plain_sum(self, codec: prep.IntCodec, labs: list[str]
                   ) -> tuple[np.ndarray, list[str], list[str]]:
        srv = self.srv
        why: dict[str, str] = {}
        answers = self._exchange("contribute", {lab: self._request("contribute", False)
                                                for lab in labs},
                                 (np.int32, codec.length), why)
        total = np.zeros(codec.length, dtype=np.int64)
        survivors: list[str] = []
        for lab in labs:
            if lab not in answers:
                continue
            meta, vec = answers[lab]
            try:
                assert vec is not None
                codec.check(vec, f"lab {lab}")
                srv._verify(lab, 0, "prep", prep.contribution_digest(vec, ",".join(self.steps)),
                            bytes(meta["sig"]))
            except (KeyError, TypeError, ValueError, AssertionError, ProtocolError,
                    SignatureError) as exc:
                why[lab] = f"refused: {exc}"
                srv._reject(lab, 0, "prep", str(exc))
                continue
            total += vec
            survivors.append(lab)
        if len(survivors) < max(1, srv.cfg.min_labs):
            raise self._fail(survivors, labs, why)
        return total, survivors, sorted(set(labs) - set(survivors))

    def _secure_sum(self, codec: prep.IntCodec, labs: list[str]
                    ) -> tuple[np.ndarray, list[str], list[str]]:
        from fedlab.secure.protocol import ServerSession

        srv = self.srv
        params = prep.prep_params(srv.run_id, tuple(srv.roster), srv.cfg.min_labs)
        session = ServerSession(params, srv.roster, codec.length)
        why: dict[str, str] = {}

        def send(stage: str, requests: Mapping[str, bytes], expect: tuple[Any, int] | None = None
                 ) -> dict[str, Answer]:
            return self._exchange(stage, {lab: self._request(stage, True, {"secagg": req})
                                          for lab, req in requests.items()}, expect, why)

        def headers(answers: Mapping[str, Answer]) -> dict[str, bytes]:
            return {lab: h for lab, (meta, _) in answers.items()
                    if isinstance(h := meta.get("secagg"), bytes)}

        try:
            s1 = session.advertise_requests(session.labs_needing_setup(labs))
            s2 = session.collect_adverts(headers(send("setup", s1)))
            session.collect_shares(headers(send("share", s2)))
            r1 = session.train_requests(1, labs)
            answers = send("contribute", r1, (np.uint32, codec.length + 1))
            masked = {lab: (vec, meta["secagg"]) for lab, (meta, vec) in answers.items()
                      if vec is not None and isinstance(meta.get("secagg"), bytes)}
            r2 = session.collect_masked(1, masked)
            result = session.collect_unmask(1, headers(send("unmask", r2)))
        except RoundAborted as exc:
            self._flush(session)
            raise self._fail([], labs, {**why, "(secure sum)": str(exc)}) from None
        self._flush(session)
        total = np.rint(result.weighted_sum)
        if total.size and float(np.abs(total - result.weighted_sum).max()) > 0:
            raise RunError("federated preprocessing: the secure sum is not whole limbs; the "
                           "labs and the server use different encodings")
        survivors = sorted(result.survivors)
        if len(survivors) < srv.cfg.min_labs:
            raise self._fail(survivors, labs, why)
        return total.astype(np.int64), survivors, sorted(set(labs) - set(survivors))

    def _flush(self, session: Any) -> None:
        for ev in session.events:
            self.srv.folder.audit.record("prep_secagg_" + str(ev.get("event", "event")),
                                         **{k: v for k, v in ev.items() if k != "event"})


def _audit_entries(path: Any) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out
