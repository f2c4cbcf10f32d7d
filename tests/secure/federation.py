"""A tiny in-memory federation driving LabSession and ServerSession (no mocks).

Messages go through the real state machines; the harness only plays the
network: it can drop labs at any stage and restore each lab from its exported
state before every message (as Flower's fresh ClientApp process would).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedlab.secure.protocol import AggregateResult, LabSession, SecAggParams, ServerSession


def lab_names(n: int) -> tuple[str, ...]:
    return tuple(f"lab-{i:02d}" for i in range(n))


@dataclass
class Federation:
    params: SecAggParams
    identities: dict[str, Ed25519PrivateKey]
    roster: dict[str, Ed25519PublicKey]
    vector_len: int
    restore_each_message: bool = False
    server: ServerSession = field(init=False)
    labs: dict[str, LabSession] = field(init=False)
    states: dict[str, bytes] = field(init=False)
    last: dict[str, dict] = field(init=False)  # stage -> the last requests / replies seen

    def __post_init__(self) -> None:
        self.server = ServerSession(self.params, self.roster, self.vector_len)
        self.labs = {
            lab: LabSession(self.params, lab, self.identities[lab], self.roster) for lab in self.params.labs
        }
        self.states = {}
        self.last = {}

    @classmethod
    def create(
        cls,
        n: int,
        vector_len: int = 8,
        *,
        neighbours: int | None = None,
        threshold: int | None = None,
        min_labs: int = 2,
        run_id: str = "run-test",
        restore_each_message: bool = False,
        **extra: object,
    ) -> Federation:
        labs = lab_names(n)
        identities = {lab: Ed25519PrivateKey.generate() for lab in labs}
        roster = {lab: key.public_key() for lab, key in identities.items()}
        if neighbours is None:
            params = SecAggParams.default_for(run_id, labs, min_labs)
            if extra:
                params = SecAggParams(
                    run_id,
                    labs,
                    params.neighbours,
                    params.threshold,
                    min_labs,
                    **extra,  # type: ignore[arg-type]
                )
        else:
            t = threshold if threshold is not None else neighbours // 2 + 1
            params = SecAggParams(run_id, labs, neighbours, t, min_labs, **extra)  # type: ignore[arg-type]
        return cls(params, identities, roster, vector_len, restore_each_message)

    def lab(self, name: str) -> LabSession:
        """The lab's session, restored from its exported state if so configured."""
        if self.restore_each_message and name in self.states:
            return LabSession.restore(
                self.states[name], self.params, name, self.identities[name], self.roster
            )
        return self.labs[name]

    def keep(self, name: str, session: LabSession) -> None:
        self.labs[name] = session
        if self.restore_each_message:
            self.states[name] = session.export_state()

    def setup(
        self, available: Iterable[str] | None = None, drop_s1: Iterable[str] = (), drop_s2: Iterable[str] = ()
    ) -> list[str]:
        available = list(self.params.labs if available is None else available)
        needing = self.server.labs_needing_setup(available)
        if not needing:
            return []
        s1 = self.server.advertise_requests(needing)
        adverts = {}
        for name, request in s1.items():
            if name in set(drop_s1):
                continue
            session = self.lab(name)
            adverts[name] = session.advertise(request)
            self.keep(name, session)
        self.last["adverts"] = adverts
        s2 = self.server.collect_adverts(adverts)
        shares = {}
        for name, request in s2.items():
            if name in set(drop_s2):
                continue
            session = self.lab(name)
            shares[name] = session.share_keys(request)
            self.keep(name, session)
        self.last["shares"] = shares
        self.server.collect_shares(shares)
        return needing

    def round(
        self,
        rnd: int,
        updates: dict[str, np.ndarray],
        weights: dict[str, int],
        *,
        available: Iterable[str] | None = None,
        drop_r1: Iterable[str] = (),
        drop_r2: Iterable[str] = (),
    ) -> AggregateResult:
        available = list(self.params.labs if available is None else available)
        r1 = self.server.train_requests(rnd, available)
        self.last["r1"] = r1
        masked = {}
        for name, request in r1.items():
            session = self.lab(name)
            vector, header = session.masked_update(request, updates[name], weights[name])
            self.keep(name, session)
            if name not in set(drop_r1):
                masked[name] = (vector, header)
        self.last["masked"] = masked
        r2 = self.server.collect_masked(rnd, masked)
        self.last["r2"] = r2
        unmask = {}
        for name, request in r2.items():
            if name in set(drop_r2):
                continue
            session = self.lab(name)
            unmask[name] = session.unmask(request)
            self.keep(name, session)
        self.last["unmask"] = unmask
        return self.server.collect_unmask(rnd, unmask)


def plain_average(
    updates: dict[str, np.ndarray], weights: dict[str, int], labs: Iterable[str], clip: float
) -> np.ndarray:
    labs = list(labs)
    total = sum(weights[lab] for lab in labs)
    acc = np.zeros_like(updates[labs[0]], dtype=np.float64)
    for lab in labs:
        acc += weights[lab] * np.clip(updates[lab].astype(np.float64), -clip, clip)
    return acc / total


@dataclass(repr=False)
class Transcript:
    """Every message of one setup and one round of a small federation, plus lab states
    saved just before each stage (so a test can replay any stage on a fresh session)."""

    fed: Federation
    lab: str
    s1_request: bytes
    advert: dict[str, bytes]
    s2_request: bytes
    share_reply: dict[str, bytes]
    r1_request: bytes
    masked: dict[str, tuple[np.ndarray, bytes]]
    r2_request: bytes
    unmask_reply: dict[str, bytes]
    state_before: dict[str, bytes]
    updates: dict[str, np.ndarray]
    weights: dict[str, int]

    def __repr__(self) -> str:
        return f"Transcript(lab={self.lab!r}, labs={len(self.fed.params.labs)})"

    def session(self, stage: str) -> LabSession:
        """A fresh copy of ``self.lab`` in the state it had just before ``stage``."""
        fed = self.fed
        return LabSession.restore(
            self.state_before[stage], fed.params, self.lab, fed.identities[self.lab], fed.roster
        )

    def server_before(self, stage: str) -> ServerSession:
        """A fresh server replayed (with the recorded, valid messages) up to ``stage``."""
        fed = self.fed
        server = ServerSession(fed.params, fed.roster, fed.vector_len)
        server.advertise_requests(fed.params.labs)
        if stage == "advert":
            return server
        server.collect_adverts(self.advert)
        if stage == "share":
            return server
        server.collect_shares(self.share_reply)
        server.train_requests(1, fed.params.labs)
        if stage == "train":
            return server
        server.collect_masked(1, self.masked)
        return server


def record_transcript(n: int = 4, vector_len: int = 6) -> Transcript:
    fed = Federation.create(n, vector_len)
    labs = fed.params.labs
    lab = labs[0]
    states: dict[str, bytes] = {"advertise": fed.labs[lab].export_state()}
    s1 = fed.server.advertise_requests(labs)
    adverts = {name: fed.labs[name].advertise(req) for name, req in s1.items()}
    states["share"] = fed.labs[lab].export_state()
    s2 = fed.server.collect_adverts(adverts)
    shares = {name: fed.labs[name].share_keys(req) for name, req in s2.items()}
    fed.server.collect_shares(shares)
    states["train"] = fed.labs[lab].export_state()
    updates = {
        name: np.linspace(-1, 1, vector_len, dtype=np.float32) * (i + 1) for i, name in enumerate(labs)
    }
    weights = {name: 10 + i for i, name in enumerate(labs)}
    r1 = fed.server.train_requests(1, labs)
    masked = {
        name: fed.labs[name].masked_update(req, updates[name], weights[name]) for name, req in r1.items()
    }
    states["unmask"] = fed.labs[lab].export_state()
    r2 = fed.server.collect_masked(1, masked)
    unmask = {name: fed.labs[name].unmask(req) for name, req in r2.items()}
    fed.server.collect_unmask(1, unmask)
    return Transcript(
        fed,
        lab,
        s1[lab],
        adverts,
        s2[lab],
        shares,
        r1[lab],
        masked,
        r2[lab],
        unmask,
        states,
        updates,
        weights,
    )
