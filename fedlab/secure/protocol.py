"""Secure aggregation (DESIGN.md section 5) as two explicit state machines.

:class:`LabSession` runs at each lab, :class:`ServerSession` at the server. Both
are pure: messages in, messages out, no I/O, no Flower. All messages are bytes
in the strict canonical encoding of :mod:`fedlab.secure.wire`; every message a
lab sends is signed with its Ed25519 identity key over (run, round, stage,
sender, SHA-256 of the body) (:mod:`fedlab.secure.signing`). The masked vector
is the one exception: a uint32 array passed beside its signed header, which
carries the vector's SHA-256, so the signature covers the vector.

Protocol
========

Notation: ``N(i)`` the ``k`` neighbours of lab ``i`` in the SecAgg+ graph
(:meth:`SecAggParams.neighbours_of`; the complete graph when ``k = n - 1``),
``t`` the threshold (``k/2 < t <= k``).

Setup (at the start, for a lab that dropped, for a lab that joins later):

* **S1 advertise** -- the lab makes two X25519 key pairs (``enc``: to encrypt
  shares; ``mask``: to agree pairwise mask secrets) and returns them in an
  *advert* signed for its setup *epoch* (a counter the server increases for
  every setup). The server relays adverts verbatim; labs verify them against
  the roster, so the server cannot substitute keys.
* **S2 share** -- the lab verifies its neighbours' adverts, draws its first
  self-mask *seed* (32 bytes from :mod:`secrets`), splits it with Shamir
  (threshold ``t``) among the neighbours it has adverts for, and encrypts each
  share with AES-256-GCM under the pairwise ``enc`` key; the associated data
  binds run, owner, owner epoch, seed id and holder. The server
  stores ciphertexts it cannot read, plus SHA-256 commitments to each share
  and to the seed (used to detect bad shares and a cheating dealer).

Round ``r`` (steady state: two exchanges):

* **R1 train** -- request: round, vector length, participants ``P`` and the
  current adverts of the lab's neighbours. The lab checks ``P`` (see refusals),
  encodes its weighted update (:mod:`fedlab.secure.encoding`), adds its self
  mask ``PRG(HKDF(seed, run, r, lab))`` and, for each neighbour ``j`` in ``P``,
  ``+-PRG(m_ij^r)`` with ``m_ij^r = HKDF(s_ij, run, r, i, j)`` where ``s_ij``
  is the X25519+HKDF pairwise secret (``+`` for the lexicographically smaller
  name, so pairs cancel in the sum). It replies with the masked vector and a
  signed header holding the vector's SHA-256, a separately signed *seed-use
  statement* ("in round r I masked with seed (epoch, id)") and the encrypted
  shares of a fresh seed for its next round. The seed is then forgotten.
* **R2 unmask** -- request: survivors ``U`` (masked vector arrived and can be
  unmasked), dropped ``D = P - U``, and for each surviving neighbour ``v`` of
  the lab, ``v``'s seed-use statement and the share ciphertext addressed to the
  lab. The lab returns its share of each such seed, and for each dropped
  neighbour ``d`` the *round key* ``m_id^r`` it used with ``d``; it then
  retires ``d``'s keys. The server rebuilds every survivor's seed from ``t``
  shares, removes self masks and the survivors' masks with dropped labs, and
  decodes the weighted sum and total weight.

A dropped lab has no seed shares at the server for its next round and its
neighbours have retired its mask key: it runs setup again before it contributes
(a new mask key pair; its ``enc`` key pair, never revealed, is kept so that the
shares it holds for its neighbours' next seeds stay readable); its neighbours
accept its new advert (newer epoch) when the next R1 request relays it. A lab
whose R1 reply arrived but that did not answer R2 stays ready:
its next seed's shares came with its R1 reply.

Where this departs from DESIGN.md section 5, and why
---------------------------------------------------

DESIGN.md has survivors return Shamir shares of a dropped lab's *long-lived*
mask secret key. That leaks, for two reasons, so this module does not do it:

1. *Past rounds.* A lab's self seed is revealed (legitimately) in every round it
   survives. If it later drops, reconstructing its long-lived mask key gives the
   server every pairwise mask it ever used, hence every earlier update --
   with an honest server, after one ordinary dropout.
2. *Split views.* Nothing stops a lying server from telling *other* labs that
   the victim's neighbours dropped: it reconstructs each neighbour's mask key
   (t shares each) and the victim's seed (t shares from labs told the victim
   survived). With t > k/2 this still works once ``n * (k - t) >= t * t`` (for
   example n = 9, k = 8, t = 5), because each secret has its own t holders.

Here a pairwise round key ``m_ij^r`` can only be computed by ``i`` and ``j``
(nobody holds shares of it), is bound to one round by HKDF, and ``s_ij`` is never
revealed. Recovering a dropped lab therefore needs no key shares at all; the
price is that a survivor that drops *during R2* while one of its neighbours
dropped in R1 makes the round abort (its masks with that neighbour cannot be
removed; the next round is unaffected). Key retirement is kept (a revealed
pair is never used again and the dropped lab re-keys) as defence in depth.

Security argument (a lying server learns no single lab's update)
----------------------------------------------------------------

Threat model: the server deviates arbitrarily (any requests, different
survivor sets for different labs, replays) but colludes with no lab; labs may
drop. Fix an honest lab ``i`` and round ``r``. Its vector is
``enc(x_i) + PRG(self key) + sum_{j in N(i) & P_i} +-PRG(m_ij^r)`` where
``P_i`` is the participant set of *its* R1 request. Without the self key and
every one of those round keys the vector is pseudorandom, so the server must
obtain all of them.

* The self key comes only from the seed, and the seed only from ``t`` Shamir
  shares. A holder releases its share only in R2 of the round named in the
  owner's signed seed-use statement, once (releases are monotonic per owner),
  and never for a lab whose keys it retired (each seed is used for exactly one
  round, so shares of one round's seed are useless in any other round).
* ``m_ij^r`` is only ever sent by ``i`` (when told ``j`` dropped) or ``j``
  (when told ``i`` dropped), in their single R2 answer for round ``r``.
* A lab answers at most one R2 per round (state machine), and in it it gives
  *either* its share of ``v``'s seed (``v`` in its ``U``) *or* ``m_vj^r``
  (``v`` in its ``D``), never both (``U`` and ``D`` must be disjoint).
* R1: ``i`` masks only if ``|N(i) & P_i| >= t``. R2: ``i`` answers only if
  ``U_i`` and ``D_i`` partition ``P_i`` and ``|N(i) & U_i| >= t``.

If ``i`` answers R2, it reveals nothing for the ``>= t`` neighbours in ``U_i``;
each of those must reveal ``m_ij^r`` itself, so withholds its seed share. If
``i`` does not answer, all ``>= t`` neighbours in ``P_i`` must. Either way at
most ``k - t`` holders can release a share of ``i``'s seed, and ``k - t < t``
because ``t > k/2``. Rounds are independent: round keys are HKDF outputs for
one round, seeds serve one round. The server also cannot forge adverts, seed
statements or replies (signatures against the roster), redirect share
ciphertexts (AES-GCM associated data), or replay an old stage (signed round and
stage, replay guards, monotonic state). With ``c`` colluding neighbours the
same count needs ``t > (k + c) / 2``.

Not claimed: an honest server learns exactly the sum over ``U`` (``|U| >=
min_labs``); a lying server that shows labs inconsistent survivor sets may
learn sums over smaller groups than ``U`` (never a single lab), as in SecAgg
without its extra ConsistencyCheck round, which would cost a third exchange
per round. Labs are trusted for integrity: a lab can spoil the aggregate
(bad update or bad round key); bad Shamir shares and inconsistent dealing are
detected by commitments and abort the round.

Refusals and the tests that pin them (``tests/secure/test_security.py``):

* R1 with fewer than ``min_labs`` participants:
  ``test_r1_refuses_too_few_participants``
* R1 naming a participant outside the roster:
  ``test_r1_refuses_participant_not_in_roster``
* R1 with fewer than ``t`` of its neighbours participating:
  ``test_r1_refuses_too_few_neighbours``
* R1 naming a neighbour whose keys it retired (and no newer advert):
  ``test_r1_refuses_retired_neighbour``
* R2 with ``|U & N(i)| < t`` or ``|U| < min_labs``:
  ``test_r2_refuses_too_few_survivors``
* R2 naming a lab in both ``U`` and ``D``: ``test_r2_refuses_lab_in_both_sets``
* R2 whose ``U`` and ``D`` do not partition its R1 participants:
  ``test_r2_refuses_sets_not_partitioning_participants``
* R2 asking the seed share of a lab whose round key it revealed:
  ``test_r2_refuses_seed_share_of_revealed_lab``
* R2 with a seed statement of another round, or a seed already released:
  ``test_r2_refuses_replayed_seed_statement``
* stages out of order or repeated: ``test_lab_refuses_out_of_order_and_repeated_stages``
* adverts with bad signatures or from outside the roster: ``test_lab_refuses_forged_advert``

Retirement and re-setup: ``test_dropped_lab_reruns_setup_and_neighbours_accept_new_keys``.
The split-view attack above failing: ``test_lying_server_cannot_unmask_a_single_lab``.
Server rejections recorded in ``events`` (bad signature, outside roster, past
round, repeated, malformed): ``test_server_rejects_and_records_*``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import secrets
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedlab.errors import ConfigError, ProtocolError, RoundAborted
from fedlab.secure import keys, shamir, signing, wire
from fedlab.secure.encoding import FixedPointEncoder
from fedlab.secure.prg import apply_masks_into, context_info, hkdf32, pair_mask_key, self_mask_key

logger = logging.getLogger(__name__)

STAGE_ADVERTISE = "advertise"  # S1
STAGE_SHARE = "share"  # S2
STAGE_TRAIN = "train"  # R1
STAGE_UNMASK = "unmask"  # R2
STAGE_SEED = "seed-use"  # the signed statement inside an R1 reply

_SHARE_COMMIT_LABEL = "fedlab/secagg/share-commit/v1"
_SEED_COMMIT_LABEL = "fedlab/secagg/seed-commit/v1"
_STATE_LABEL = "fedlab/secagg/lab-state/v1"
_STATE_MAGIC = b"fedlab-lab-state-v1"
_MAX_VECTOR_LEN = (1 << 31) - 2
_MAX_BODY = 64 << 20


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class SecAggParams:
    """Parameters both sides agree on (from the federation config).

    ``neighbours`` is the degree ``k`` of the SecAgg+ graph (``n - 1``: every lab
    masks with every other), ``threshold`` the Shamir threshold ``t`` with
    ``k/2 < t <= k``. The graph for ``k < n - 1`` is a circulant (Harary) graph
    on the labs ordered by SHA-256(run id, lab name): each lab is joined to the
    ``k // 2`` labs on either side, plus the opposite lab when ``k`` is odd
    (which needs an even number of labs). Nobody chooses it, everyone can
    recompute it.
    """

    run_id: str
    labs: tuple[str, ...]
    neighbours: int
    threshold: int
    min_labs: int
    clip: float = 8.0
    max_weight: int = 1 << 16
    max_labs: int = 1000

    def __post_init__(self) -> None:
        if not isinstance(self.run_id, str) or not self.run_id:
            raise ConfigError("secure aggregation: run_id must be a non-empty string")
        labs = self.labs
        if isinstance(labs, list):
            labs = tuple(labs)
            object.__setattr__(self, "labs", labs)
        if not isinstance(labs, tuple) or not all(isinstance(x, str) and x for x in labs):
            raise ConfigError("secure aggregation: labs must be a tuple of non-empty lab names")
        if len(set(labs)) != len(labs):
            raise ConfigError("secure aggregation: a lab name appears twice in the roster")
        n = len(labs)
        if n < 2:
            raise ConfigError("secure aggregation needs at least 2 labs in the roster")
        for name in ("neighbours", "threshold", "min_labs", "max_weight", "max_labs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"secure aggregation: {name} must be an integer, got {value!r}")
        k, t = self.neighbours, self.threshold
        if not 1 <= k <= n - 1:
            raise ConfigError(
                f"secure aggregation: neighbours (k) = {k} must be between 1 and n - 1 = {n - 1}"
            )
        if k < n - 1 and k % 2 == 1 and n % 2 == 1:
            raise ConfigError(
                f"secure aggregation: an odd neighbour count k = {k} needs an even number of labs "
                f"(there are {n}); use k = {k + 1} or {k - 1}"
            )
        if not (2 * t > k and t <= k):
            raise ConfigError(
                f"secure aggregation: threshold t = {t} must satisfy k/2 < t <= k with k = {k} "
                f"(so t in [{k // 2 + 1}, {k}]); a smaller t lets a lying server unmask a lab"
            )
        if not 2 <= self.min_labs <= n:
            raise ConfigError(
                f"secure aggregation: min_labs = {self.min_labs} must be between 2 and the number "
                f"of labs ({n}); with 1 lab the aggregate is that lab's update"
            )
        if n > self.max_labs:
            raise ConfigError(
                f"secure aggregation: {n} labs exceed the encoding headroom max_labs = {self.max_labs}"
            )
        try:
            _ = self.encoder
        except ProtocolError as exc:
            raise ConfigError(f"secure aggregation: {exc}") from None

    @classmethod
    def default_for(cls, run_id: str, labs: Iterable[str], min_labs: int) -> SecAggParams:
        """Defaults: full SecAgg (``k = n - 1``) up to 20 labs, SecAgg+ beyond.

        For ``n > 20``: ``k = 2 * ceil(log2 n) + 4`` (even; 16 for 50 labs, 24 for
        1000), ``O(log n)`` as in Bell et al. 2020, with room for ``k/2 - 1``
        dropouts in every neighbourhood. ``t = floor(k/2) + 1`` always.

        ``max_labs`` is the roster size: no aggregate can include more labs than the
        roster, so that is exact no-wrap headroom, and it buys ``log2(1000 / n)``
        more fractional bits than the dataclass default (50 labs: ``f = 6`` instead
        of 2). A new roster (a lab added) means new parameters anyway.
        """
        roster = tuple(labs)
        n = len(roster)
        if n <= 20:
            k = max(n - 1, 1)
        else:
            k = min(n - 1, 2 * math.ceil(math.log2(n)) + 4)
        return cls(
            run_id=run_id,
            labs=roster,
            neighbours=k,
            threshold=k // 2 + 1,
            min_labs=min_labs,
            max_labs=max(n, 2),
        )

    @cached_property
    def encoder(self) -> FixedPointEncoder:
        """The fixed-point encoder for these parameters."""
        return FixedPointEncoder(self.clip, self.max_weight, self.max_labs)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {lab: i for i, lab in enumerate(self.labs)}

    @cached_property
    def _graph(self) -> dict[str, tuple[str, ...]]:
        n, k = len(self.labs), self.neighbours
        if k == n - 1:
            return {lab: tuple(x for x in self.labs if x != lab) for lab in self.labs}
        order = sorted(
            self.labs,
            key=lambda lab: hashlib.sha256(context_info("fedlab/secagg/graph/v1", self.run_id, lab)).digest(),
        )
        position = {lab: p for p, lab in enumerate(order)}
        graph: dict[str, tuple[str, ...]] = {}
        for lab in self.labs:
            p = position[lab]
            linked = {order[(p + d) % n] for d in range(1, k // 2 + 1)}
            linked |= {order[(p - d) % n] for d in range(1, k // 2 + 1)}
            if k % 2 == 1:
                linked.add(order[(p + n // 2) % n])
            graph[lab] = tuple(x for x in self.labs if x in linked)
        return graph

    def neighbours_of(self, lab: str) -> tuple[str, ...]:
        """The ``k`` neighbours of ``lab``, in roster order."""
        try:
            return self._graph[lab]
        except KeyError:
            raise ProtocolError(f"run {self.run_id!r}: {lab!r} is not in the roster") from None

    def share_x(self, lab: str) -> int:
        """The Shamir x-coordinate of shares held by ``lab`` (roster position + 1)."""
        return self._index[lab] + 1


@dataclass(frozen=True)
class AggregateResult:
    """The outcome of one securely aggregated round."""

    round: int
    weighted_sum: np.ndarray  # float64, sum over survivors of weight * clipped update
    total_weight: int
    n_contributors: int
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    error_bound: float  # max |average - exact average| from fixed-point encoding

    @property
    def average(self) -> np.ndarray:
        """The weighted average (weighted sum / total weight)."""
        return self.weighted_sum / self.total_weight


# --------------------------------------------------------------------------- helpers


def _pair_sign(me: str, other: str) -> int:
    return 1 if me < other else -1


def _share_commit(run_id: str, owner: str, epoch: int, seed_id: int, holder: str, share: bytes) -> bytes:
    return hashlib.sha256(
        context_info(_SHARE_COMMIT_LABEL, run_id, owner, epoch, seed_id, holder, share)
    ).digest()


def _seed_commit(run_id: str, owner: str, epoch: int, seed_id: int, seed: bytes) -> bytes:
    return hashlib.sha256(context_info(_SEED_COMMIT_LABEL, run_id, owner, epoch, seed_id, seed)).digest()


def _share_ad(run_id: str, owner: str, epoch: int, seed_id: int, holder: str) -> bytes:
    return keys.bundle_ad(run_id, epoch, owner, holder, "seed-share", seed_id)


def _seal(
    identity: Ed25519PrivateKey, run_id: str, round: int, stage: str, lab: str, body: dict[str, Any]
) -> bytes:
    raw = wire.encode(body)
    signature = signing.sign(identity, run_id, round, stage, lab, raw)
    return wire.encode({"body": raw, "sig": signature})


def _open(
    raw: Any,
    *,
    what: str,
    roster: Mapping[str, Ed25519PublicKey],
    run_id: str,
    stage: str,
    round_field: str,
    verify: bool = True,
) -> tuple[dict[str, Any], str, int]:
    """Parse a signed message, verify its signature; return (body, sender, round).

    ``verify=False`` only for messages read back from the lab's own authenticated
    state, which were verified when they were first accepted."""
    outer = wire.Fields(wire.decode(raw, what=what), what, ("body", "sig"))
    body_raw = outer.bytes("body", max_length=_MAX_BODY)
    signature = outer.bytes("sig", length=signing.SIGNATURE_LEN)
    body = wire.decode(body_raw, what=what)
    if not isinstance(body, dict):
        raise ProtocolError(f"{what}: body must be a dict")
    sender = body.get("lab")
    number = body.get(round_field)
    if not isinstance(sender, str) or isinstance(number, bool) or not isinstance(number, int):
        raise ProtocolError(f"{what}: body lacks a lab name or {round_field}")
    if not 0 <= number <= signing.MAX_ROUND:
        raise ProtocolError(f"{what}: {round_field} {number} out of range")
    if verify:
        signing.verify(roster, signature, run_id, number, stage, sender, body_raw)
    return body, sender, number


@dataclass(frozen=True)
class _Advert:
    lab: str
    epoch: int
    enc_pub: bytes
    mask_pub: bytes
    raw: bytes


def _parse_advert(
    raw: Any, roster: Mapping[str, Ed25519PublicKey], run_id: str, what: str, *, verify: bool = True
) -> _Advert:
    body, sender, epoch = _open(
        raw,
        what=what,
        roster=roster,
        run_id=run_id,
        stage=STAGE_ADVERTISE,
        round_field="epoch",
        verify=verify,
    )
    f = wire.Fields(body, what, ("type", "run", "epoch", "lab", "enc_pk", "mask_pk"))
    f.str("type", expected="advert")
    f.str("run", expected=run_id)
    epoch = f.int("epoch", minimum=1)
    enc_pub = f.bytes("enc_pk", length=keys.KEY_LEN)
    mask_pub = f.bytes("mask_pk", length=keys.KEY_LEN)
    keys.load_public_key(enc_pub)
    keys.load_public_key(mask_pub)
    return _Advert(sender, epoch, enc_pub, mask_pub, bytes(raw))


@dataclass
class _SeedRecord:
    """Server-side: encrypted shares of one seed of one lab, with commitments."""

    owner: str
    epoch: int
    seed_id: int
    commit: bytes
    shares: dict[str, tuple[bytes, bytes, bytes]]  # holder -> (holder enc key, ciphertext, commit)


def _parse_seed_bundle(
    value: Any, what: str, params: SecAggParams, owner: str, epoch: int, seed_id: int
) -> _SeedRecord:
    f = wire.Fields(value, what, ("epoch", "id", "commit", "shares"))
    if f.int("epoch") != epoch or f.int("id") != seed_id:
        raise ProtocolError(
            f"{what}: seed bundle is for epoch {f.int('epoch')} seed {f.int('id')}, expected "
            f"epoch {epoch} seed {seed_id}"
        )
    commit = f.bytes("commit", length=32)
    neighbours = set(params.neighbours_of(owner))
    shares: dict[str, tuple[bytes, bytes, bytes]] = {}
    for holder, entry in f.dict("shares").items():
        if holder not in neighbours:
            raise ProtocolError(f"{what}: share addressed to {holder!r}, not a neighbour of {owner!r}")
        e = wire.Fields(entry, f"{what} (share for {holder})", ("key", "ct", "commit"))
        shares[holder] = (
            e.bytes("key", length=keys.KEY_LEN),
            e.bytes("ct", length=keys.NONCE_LEN + shamir.SHARE_LEN + keys.TAG_LEN),
            e.bytes("commit", length=32),
        )
    return _SeedRecord(owner, epoch, seed_id, commit, shares)


# --------------------------------------------------------------------------- lab side


_NEW, _ADVERTISED, _READY, _TRAINED = "new", "advertised", "ready", "trained"


class LabSession:
    """One lab's side of secure aggregation; lives across rounds.

    Stage machine: ``new --S1--> advertised --S2--> ready --R1--> trained
    --R2--> ready``. S1 (with a newer setup epoch) is accepted in any stage: the
    server restarts setup for a lab it considers dropped. R1 is accepted in
    ``ready`` or ``trained`` (a lab dropped in R2, or whose round was aborted,
    goes on to a later round) for a round after the last one. Everything else
    out of order, and any repetition, is refused with ProtocolError.
    """

    def __init__(
        self,
        params: SecAggParams,
        lab: str,
        identity: Ed25519PrivateKey,
        roster: Mapping[str, Ed25519PublicKey],
    ) -> None:
        if lab not in params.labs:
            raise ProtocolError(f"run {params.run_id!r}: lab {lab!r} is not in the roster")
        missing = [x for x in params.labs if x not in roster]
        if missing:
            raise ProtocolError(f"run {params.run_id!r}: roster lacks identity keys for {missing}")
        if roster[lab].public_bytes_raw() != identity.public_key().public_bytes_raw():
            raise ProtocolError(
                f"run {params.run_id!r}: the identity key given to lab {lab!r} does not match its "
                "roster entry; check the lab kit"
            )
        self._params = params
        self._lab = lab
        self._identity = identity
        self._roster = {x: roster[x] for x in params.labs}
        self._neighbours = params.neighbours_of(lab)
        self._stage = _NEW
        self._epoch = 0
        self._enc_key: X25519PrivateKey | None = None
        self._mask_key: X25519PrivateKey | None = None
        self._next_seed: bytes | None = None
        self._next_seed_id = 0
        self._peers: dict[str, _Advert] = {}
        self._retired: dict[str, tuple[int, int]] = {}  # lab -> (epoch, round revealed)
        self._released: dict[str, tuple[int, int]] = {}  # owner -> (epoch, seed id)
        self._last_round = 0
        self._participants: tuple[str, ...] = ()
        self._peer_epochs: dict[str, int] = {}
        self._secrets: dict[tuple[str, str, int, int], bytes] = {}
        self.last_clipped = 0

    # ----------------------------------------------------------------- public state

    @property
    def lab(self) -> str:
        return self._lab

    @property
    def needs_setup(self) -> bool:
        """True until S1 and S2 have completed for the current keys."""
        return self._stage in (_NEW, _ADVERTISED)

    @property
    def retired(self) -> dict[str, int]:
        """Neighbours whose keys this lab retired, with the round of the reveal."""
        return {lab: rnd for lab, (_, rnd) in self._retired.items()}

    # ----------------------------------------------------------------- helpers

    def _refuse(self, stage: str, round: int, message: str) -> ProtocolError:
        text = f"lab {self._lab!r}, round {round}, stage {stage!r}: {message}; refused"
        logger.warning("%s", text)
        return ProtocolError(text)

    def _request(
        self, raw: Any, kind: str, stage: str, keys_: tuple[str, ...], number_field: str
    ) -> wire.Fields:
        what = f"{stage} request to lab {self._lab!r}"
        f = wire.Fields(wire.decode(raw, what=what), what, keys_)
        f.str("type", expected=kind)
        if f.str("run") != self._params.run_id:
            raise self._refuse(stage, f.int(number_field), f"request is for run {f.str('run')!r}")
        if f.str("lab") != self._lab:
            raise self._refuse(stage, f.int(number_field), f"request is addressed to {f.str('lab')!r}")
        return f

    def _accept_advert(self, raw: Any, stage: str, round: int) -> _Advert:
        for known in self._peers.values():  # already verified and accepted: nothing to check
            if known.raw == raw:
                return known
        advert = _parse_advert(raw, self._roster, self._params.run_id, f"advert relayed to {self._lab!r}")
        if advert.lab not in self._neighbours:
            raise self._refuse(stage, round, f"relayed advert of {advert.lab!r}, not a neighbour")
        retired = self._retired.get(advert.lab)
        if retired is not None and advert.epoch <= retired[0]:
            raise self._refuse(
                stage,
                round,
                f"advert of {advert.lab!r} (epoch {advert.epoch}) was retired after its round key "
                f"was revealed in round {retired[1]}; it must run setup again",
            )
        current = self._peers.get(advert.lab)
        if current is not None:
            if advert.epoch < current.epoch:
                raise self._refuse(stage, round, f"stale advert of {advert.lab!r} (epoch {advert.epoch})")
            if advert.epoch == current.epoch:
                if advert.raw != current.raw:
                    raise self._refuse(stage, round, f"two different adverts of {advert.lab!r} for one epoch")
                return current
        return advert

    def _install_adverts(self, adverts: list[_Advert]) -> None:
        for advert in adverts:
            self._peers[advert.lab] = advert
            self._retired.pop(advert.lab, None)

    def _secret(self, purpose: str, peer: _Advert) -> bytes:
        # Share keys depend only on the two enc key pairs (kept across re-keying, never
        # revealed); mask secrets on the mask key pairs and both setup epochs.
        share = purpose == "share"
        public = peer.enc_pub if share else peer.mask_pub
        cache_key = (purpose, peer.lab, public, 0 if share else self._epoch)
        cached = self._secrets.get(cache_key)
        if cached is None:
            own = self._enc_key if share else self._mask_key
            assert own is not None
            cached = keys.agree(
                own,
                keys.load_public_key(public),
                purpose=purpose,
                run_id=self._params.run_id,
                own_lab=self._lab,
                peer_lab=peer.lab,
                own_epoch=0 if share else self._epoch,
                peer_epoch=0 if share else peer.epoch,
            )
            self._secrets[cache_key] = cached
        return cached

    def _seed_bundle(self, seed: bytes, seed_id: int, holders: list[str]) -> dict[str, Any]:
        params = self._params
        xs = [params.share_x(h) for h in holders]
        shares = shamir.split(seed, params.threshold, xs)
        bundle: dict[str, Any] = {}
        for holder, x in zip(holders, xs, strict=True):
            peer = self._peers[holder]
            ad = _share_ad(params.run_id, self._lab, self._epoch, seed_id, holder)
            bundle[holder] = {
                "key": peer.enc_pub,
                "ct": keys.encrypt_bundle(self._secret("share", peer), shares[x], ad),
                "commit": _share_commit(params.run_id, self._lab, self._epoch, seed_id, holder, shares[x]),
            }
        return {
            "epoch": self._epoch,
            "id": seed_id,
            "commit": _seed_commit(params.run_id, self._lab, self._epoch, seed_id, seed),
            "shares": bundle,
        }

    def _holders(self) -> list[str]:
        return [v for v in self._neighbours if v in self._peers]

    # ----------------------------------------------------------------- S1

    def advertise(self, request: bytes) -> bytes:
        """S1: make fresh key pairs for the requested setup epoch; return the signed advert."""
        f = self._request(request, "S1", STAGE_ADVERTISE, ("type", "run", "epoch", "lab"), "epoch")
        epoch = f.int("epoch", minimum=1)
        if epoch <= self._epoch:
            raise self._refuse(
                STAGE_ADVERTISE,
                epoch,
                f"setup epoch {epoch} is not after this lab's epoch {self._epoch} "
                "(repeated or replayed setup)",
            )
        if self._enc_key is None:  # kept across re-keying: shares held for others stay readable
            self._enc_key = keys.generate_private_key()
        self._mask_key = keys.generate_private_key()
        self._epoch = epoch
        self._next_seed = None
        self._next_seed_id = 0
        self._secrets.clear()
        self._stage = _ADVERTISED
        logger.info("lab %s: advertised keys for setup epoch %d", self._lab, epoch)
        return _seal(
            self._identity,
            self._params.run_id,
            epoch,
            STAGE_ADVERTISE,
            self._lab,
            {
                "type": "advert",
                "run": self._params.run_id,
                "epoch": epoch,
                "lab": self._lab,
                "enc_pk": keys.public_key_bytes(self._enc_key),
                "mask_pk": keys.public_key_bytes(self._mask_key),
            },
        )

    # ----------------------------------------------------------------- S2

    def share_keys(self, request: bytes) -> bytes:
        """S2: verify neighbours' adverts, share the first seed among them (encrypted)."""
        f = self._request(request, "S2", STAGE_SHARE, ("type", "run", "epoch", "lab", "adverts"), "epoch")
        epoch = f.int("epoch", minimum=1)
        if self._stage != _ADVERTISED or epoch != self._epoch:
            raise self._refuse(
                STAGE_SHARE,
                epoch,
                f"share request for setup epoch {epoch} while this lab is "
                f"'{self._stage}' at epoch {self._epoch} (S2 must follow S1 of the same epoch, once)",
            )
        raw_adverts = f.raw("adverts")
        if not isinstance(raw_adverts, list):
            raise self._refuse(STAGE_SHARE, epoch, "adverts must be a list")
        accepted = [self._accept_advert(raw, STAGE_SHARE, epoch) for raw in raw_adverts]
        if len({a.lab for a in accepted}) != len(accepted):
            raise self._refuse(STAGE_SHARE, epoch, "two adverts of one lab")
        self._install_adverts(accepted)
        holders = self._holders()
        if len(holders) < self._params.threshold:
            raise self._refuse(
                STAGE_SHARE,
                epoch,
                f"only {len(holders)} neighbours have advertised keys; the "
                f"threshold is {self._params.threshold}, so the seed could never be recovered",
            )
        seed = secrets.token_bytes(32)
        bundle = self._seed_bundle(seed, 0, holders)
        self._next_seed, self._next_seed_id = seed, 0
        self._stage = _READY
        logger.info("lab %s: setup epoch %d complete (%d share holders)", self._lab, epoch, len(holders))
        return _seal(
            self._identity,
            self._params.run_id,
            epoch,
            STAGE_SHARE,
            self._lab,
            {"type": "shares", "run": self._params.run_id, "epoch": epoch, "lab": self._lab, "seed": bundle},
        )

    # ----------------------------------------------------------------- R1

    def masked_update(self, request: bytes, update: np.ndarray, weight: int) -> tuple[np.ndarray, bytes]:
        """R1: encode, mask and sign the update.

        ``update`` is a 1-D float32 (or float64) array of the ``vector_len`` named in
        the request; ``weight`` the lab's integer weight (its example count, at
        most ``params.max_weight``). Returns the masked uint32 vector (length
        ``vector_len + 1``) and the signed header to send beside it.
        """
        params = self._params
        f = self._request(
            request,
            "R1",
            STAGE_TRAIN,
            ("type", "run", "round", "lab", "vector_len", "participants", "adverts"),
            "round",
        )
        rnd = f.int("round", minimum=1)
        if self._stage not in (_READY, _TRAINED):
            raise self._refuse(
                STAGE_TRAIN, rnd, f"training request while this lab is '{self._stage}' (setup incomplete)"
            )
        if rnd <= self._last_round:
            raise self._refuse(
                STAGE_TRAIN,
                rnd,
                f"round {rnd} is not after round {self._last_round}, which this "
                "lab already answered (repeated or replayed)",
            )
        vector_len = f.int("vector_len", minimum=1, maximum=_MAX_VECTOR_LEN)
        participants = f.str_list("participants")
        outsiders = [p for p in participants if p not in self._roster]
        if outsiders:
            raise self._refuse(STAGE_TRAIN, rnd, f"participants {outsiders} are not in the roster")
        if self._lab not in participants:
            raise self._refuse(STAGE_TRAIN, rnd, "this lab is not among the participants it was sent")
        if len(participants) < params.min_labs:
            raise self._refuse(
                STAGE_TRAIN, rnd, f"{len(participants)} participants, fewer than min_labs = {params.min_labs}"
            )
        raw_adverts = f.raw("adverts")
        if not isinstance(raw_adverts, list):
            raise self._refuse(STAGE_TRAIN, rnd, "adverts must be a list")
        fresh = [self._accept_advert(raw, STAGE_TRAIN, rnd) for raw in raw_adverts]
        if len({a.lab for a in fresh}) != len(fresh):
            raise self._refuse(STAGE_TRAIN, rnd, "two adverts of one lab")
        fresh_labs = {a.lab for a in fresh}
        in_round = [v for v in self._neighbours if v in set(participants)]
        for v in in_round:
            if v in self._retired and v not in fresh_labs:
                raise self._refuse(
                    STAGE_TRAIN,
                    rnd,
                    f"participant {v!r} uses keys this lab retired after their round "
                    f"key was revealed in round {self._retired[v][1]}; {v!r} must run setup again",
                )
            if v not in self._peers and v not in fresh_labs:
                raise self._refuse(STAGE_TRAIN, rnd, f"no advert of participant {v!r} to mask with")
        if len(in_round) < params.threshold:
            raise self._refuse(
                STAGE_TRAIN,
                rnd,
                f"only {len(in_round)} of this lab's neighbours participate; at "
                f"least t = {params.threshold} are needed or the update could be unmasked",
            )
        if not isinstance(update, np.ndarray) or update.ndim != 1 or update.shape[0] != vector_len:
            raise self._refuse(STAGE_TRAIN, rnd, f"the update must be a 1-D array of {vector_len} values")
        if self._next_seed is None:
            raise self._refuse(STAGE_TRAIN, rnd, "no self-mask seed (setup incomplete)")
        try:
            encoded, clipped = params.encoder.encode_counting(update, weight)
        except ProtocolError as exc:
            raise self._refuse(STAGE_TRAIN, rnd, str(exc)) from None
        # Checks done: from here on the state changes.
        self._install_adverts(fresh)
        seed, seed_id = self._next_seed, self._next_seed_id
        masks = [(self_mask_key(seed, params.run_id, rnd, self._lab), 1)]
        for v in in_round:
            pair = self._secret("mask", self._peers[v])
            masks.append((pair_mask_key(pair, params.run_id, rnd, self._lab, v), _pair_sign(self._lab, v)))
        apply_masks_into(encoded, masks)
        digest = hashlib.sha256(memoryview(encoded.astype("<u4", copy=False))).digest()
        seed_use = _seal(
            self._identity,
            params.run_id,
            rnd,
            STAGE_SEED,
            self._lab,
            {
                "type": "seed-use",
                "run": params.run_id,
                "round": rnd,
                "lab": self._lab,
                "epoch": self._epoch,
                "id": seed_id,
            },
        )
        next_seed = secrets.token_bytes(32)
        bundle = self._seed_bundle(next_seed, seed_id + 1, self._holders())
        header = _seal(
            self._identity,
            params.run_id,
            rnd,
            STAGE_TRAIN,
            self._lab,
            {
                "type": "train",
                "run": params.run_id,
                "round": rnd,
                "lab": self._lab,
                "vector_len": vector_len,
                "digest": digest,
                "seed_use": seed_use,
                "next_seed": bundle,
            },
        )
        self._next_seed, self._next_seed_id = next_seed, seed_id + 1
        self._last_round = rnd
        self._participants = tuple(participants)
        self._peer_epochs = {v: self._peers[v].epoch for v in in_round}
        self._stage = _TRAINED
        self.last_clipped = clipped
        logger.info(
            "lab %s: round %d masked %d values with %d pairwise masks (%d clipped)",
            self._lab,
            rnd,
            vector_len,
            len(in_round),
            clipped,
        )
        return encoded, header

    # ----------------------------------------------------------------- R2

    def unmask(self, request: bytes) -> bytes:
        """R2: release seed shares of surviving neighbours and round keys shared with dropped ones."""
        params = self._params
        f = self._request(
            request,
            "R2",
            STAGE_UNMASK,
            ("type", "run", "round", "lab", "survivors", "dropped", "seeds"),
            "round",
        )
        rnd = f.int("round", minimum=1)
        if self._stage != _TRAINED or rnd != self._last_round:
            raise self._refuse(
                STAGE_UNMASK,
                rnd,
                f"unmask request for round {rnd} while this lab is '{self._stage}' "
                f"after round {self._last_round} (R2 must follow R1 of the same round, once)",
            )
        survivors = f.str_list("survivors")
        dropped = f.str_list("dropped")
        outsiders = [x for x in survivors + dropped if x not in self._roster]
        if outsiders:
            raise self._refuse(STAGE_UNMASK, rnd, f"labs {outsiders} are not in the roster")
        both = sorted(set(survivors) & set(dropped))
        if both:
            raise self._refuse(STAGE_UNMASK, rnd, f"labs {both} are named both survivors and dropped")
        seeds = f.dict("seeds")
        for owner in seeds:
            if owner in self._retired and (owner not in self._peers):
                raise self._refuse(
                    STAGE_UNMASK,
                    rnd,
                    f"asked for the seed share of {owner!r}, whose round key this "
                    f"lab revealed in round {self._retired[owner][1]}",
                )
        if self._lab not in survivors:
            raise self._refuse(STAGE_UNMASK, rnd, "this lab is not among the survivors it was sent")
        if set(survivors) | set(dropped) != set(self._participants):
            raise self._refuse(
                STAGE_UNMASK,
                rnd,
                "survivors and dropped do not partition the participants of the training request",
            )
        surviving = [v for v in self._neighbours if v in set(survivors)]
        if len(surviving) < params.threshold or len(survivors) < params.min_labs:
            raise self._refuse(
                STAGE_UNMASK,
                rnd,
                f"{len(surviving)} surviving neighbours (t = {params.threshold}) "
                f"and {len(survivors)} survivors (min_labs = {params.min_labs}): too few to hide "
                "this lab's update",
            )
        released: dict[str, bytes] = {}
        release_marks: dict[str, tuple[int, int]] = {}
        for owner, entry in seeds.items():
            if owner not in surviving:
                raise self._refuse(
                    STAGE_UNMASK, rnd, f"asked for the seed share of {owner!r}, not a surviving neighbour"
                )
            e = wire.Fields(entry, f"R2 seed entry for {owner!r}", ("use", "ct"))
            use, signer, use_round = _open(
                e.bytes("use"),
                what=f"seed statement of {owner!r}",
                roster=self._roster,
                run_id=params.run_id,
                stage=STAGE_SEED,
                round_field="round",
            )
            if signer != owner or use_round != rnd:
                raise self._refuse(
                    STAGE_UNMASK,
                    rnd,
                    f"seed statement is by {signer!r} for round {use_round}, not by "
                    f"{owner!r} for round {rnd}",
                )
            u = wire.Fields(
                use, f"seed statement of {owner!r}", ("type", "run", "round", "lab", "epoch", "id")
            )
            u.str("type", expected="seed-use")
            u.str("run", expected=params.run_id)
            epoch, seed_id = u.int("epoch", minimum=1), u.int("id")
            peer = self._peers.get(owner)
            if peer is None or peer.epoch != epoch:
                raise self._refuse(
                    STAGE_UNMASK, rnd, f"seed of {owner!r} is from epoch {epoch}, not its current keys"
                )
            last = self._released.get(owner)
            if last is not None and (epoch, seed_id) <= last:
                raise self._refuse(
                    STAGE_UNMASK,
                    rnd,
                    f"the share of seed {seed_id} (epoch {epoch}) of {owner!r} was "
                    "already released or is older than one that was",
                )
            ad = _share_ad(params.run_id, owner, epoch, seed_id, self._lab)
            try:
                share = keys.decrypt_bundle(self._secret("share", peer), e.bytes("ct"), ad)
            except ProtocolError as exc:
                raise self._refuse(STAGE_UNMASK, rnd, f"seed share of {owner!r}: {exc}") from None
            released[owner] = share
            release_marks[owner] = (epoch, seed_id)
        revealed: dict[str, bytes] = {}
        for d in self._neighbours:
            if d in set(dropped) and d in self._peer_epochs:
                peer = self._peers.get(d)
                if peer is None or peer.epoch != self._peer_epochs[d]:
                    raise self._refuse(STAGE_UNMASK, rnd, f"keys of {d!r} changed since training")
                revealed[d] = pair_mask_key(self._secret("mask", peer), params.run_id, rnd, self._lab, d)
        reply = _seal(
            self._identity,
            params.run_id,
            rnd,
            STAGE_UNMASK,
            self._lab,
            {
                "type": "unmask",
                "run": params.run_id,
                "round": rnd,
                "lab": self._lab,
                "shares": released,
                "pair_keys": revealed,
            },
        )
        self._released.update(release_marks)
        for d in revealed:
            self._retired[d] = (self._peers[d].epoch, rnd)
            del self._peers[d]
        self._stage = _READY
        logger.info(
            "lab %s: round %d released %d seed shares, revealed round keys with %d dropped labs",
            self._lab,
            rnd,
            len(released),
            len(revealed),
        )
        return reply

    # ----------------------------------------------------------------- persistence

    def _state_key(self) -> bytes:
        return hkdf32(self._identity.private_bytes_raw(), _STATE_LABEL, self._params.run_id, self._lab)

    def export_state(self) -> bytes:
        """Everything needed to resume, encrypted and authenticated under a key derived
        from the lab's identity key (AES-256-GCM). Store it only where the lab's user can."""
        state = {
            "stage": self._stage,
            "epoch": self._epoch,
            "enc": keys.private_key_bytes(self._enc_key) if self._enc_key else b"",
            "mask": keys.private_key_bytes(self._mask_key) if self._mask_key else b"",
            "seed": self._next_seed or b"",
            "seed_id": self._next_seed_id,
            "peers": [p.raw for p in self._peers.values()],
            "retired": {lab: [e, r] for lab, (e, r) in self._retired.items()},
            "released": {lab: [e, s] for lab, (e, s) in self._released.items()},
            "last_round": self._last_round,
            "participants": list(self._participants),
            "peer_epochs": dict(self._peer_epochs),
            "clipped": self.last_clipped,
            "secrets": [
                [purpose, lab, public, epoch, secret]
                for (purpose, lab, public, epoch), secret in self._secrets.items()
                if lab in self._peers
                and public in (self._peers[lab].enc_pub, self._peers[lab].mask_pub)
                and epoch in (0, self._epoch)
            ],
        }
        nonce = os.urandom(keys.NONCE_LEN)
        ad = context_info(_STATE_LABEL, self._params.run_id, self._lab)
        return _STATE_MAGIC + nonce + AESGCM(self._state_key()).encrypt(nonce, wire.encode(state), ad)

    @classmethod
    def restore(
        cls,
        state: bytes,
        params: SecAggParams,
        lab: str,
        identity: Ed25519PrivateKey,
        roster: Mapping[str, Ed25519PublicKey],
    ) -> LabSession:
        """Rebuild a session from :meth:`export_state`; ProtocolError if the state is
        malformed, tampered with, or belongs to another run, lab or identity."""
        session = cls(params, lab, identity, roster)
        what = f"saved secure-aggregation state of lab {lab!r}"
        if not isinstance(state, bytes) or not state.startswith(_STATE_MAGIC):
            raise ProtocolError(f"{what}: not a fedlab lab state")
        body = state[len(_STATE_MAGIC) :]
        if len(body) < keys.NONCE_LEN + keys.TAG_LEN:
            raise ProtocolError(f"{what}: truncated")
        ad = context_info(_STATE_LABEL, params.run_id, lab)
        try:
            plain = AESGCM(session._state_key()).decrypt(body[: keys.NONCE_LEN], body[keys.NONCE_LEN :], ad)
        except InvalidTag:
            raise ProtocolError(
                f"{what}: does not authenticate (tampered, or saved for another run, lab or identity)"
            ) from None
        f = wire.Fields(
            wire.decode(plain, what=what),
            what,
            (
                "stage",
                "epoch",
                "enc",
                "mask",
                "seed",
                "seed_id",
                "peers",
                "retired",
                "released",
                "last_round",
                "participants",
                "peer_epochs",
                "clipped",
                "secrets",
            ),
        )
        stage = f.str("stage")
        if stage not in (_NEW, _ADVERTISED, _READY, _TRAINED):
            raise ProtocolError(f"{what}: unknown stage {stage!r}")
        session._stage = stage
        session._epoch = f.int("epoch")
        enc, mask, seed = f.bytes("enc"), f.bytes("mask"), f.bytes("seed")
        session._enc_key = keys.load_private_key(enc) if enc else None
        session._mask_key = keys.load_private_key(mask) if mask else None
        if seed and len(seed) != 32:
            raise ProtocolError(f"{what}: bad seed")
        session._next_seed = seed or None
        session._next_seed_id = f.int("seed_id")
        peers = f.raw("peers")
        if not isinstance(peers, list):
            raise ProtocolError(f"{what}: peers must be a list")
        for raw in peers:
            advert = _parse_advert(raw, session._roster, params.run_id, what, verify=False)
            if advert.lab in session._neighbours:
                session._peers[advert.lab] = advert
        for name, target in (("retired", session._retired), ("released", session._released)):
            for other, pair in f.dict(name).items():
                if (
                    not isinstance(pair, list)
                    or len(pair) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
                ):
                    raise ProtocolError(f"{what}: bad {name} entry for {other!r}")
                target[other] = (pair[0], pair[1])
        session._last_round = f.int("last_round")
        session._participants = tuple(f.str_list("participants"))
        for other, epoch in f.dict("peer_epochs").items():
            if isinstance(epoch, bool) or not isinstance(epoch, int):
                raise ProtocolError(f"{what}: bad peer epoch for {other!r}")
            session._peer_epochs[other] = epoch
        session.last_clipped = f.int("clipped")
        secrets_list = f.raw("secrets")
        if not isinstance(secrets_list, list):
            raise ProtocolError(f"{what}: secrets must be a list")
        for entry in secrets_list:
            if (
                not isinstance(entry, list)
                or len(entry) != 5
                or entry[0] not in ("share", "mask")
                or not isinstance(entry[1], str)
                or not isinstance(entry[2], bytes)
                or isinstance(entry[3], bool)
                or not isinstance(entry[3], int)
                or not isinstance(entry[4], bytes)
                or len(entry[4]) != 32
            ):
                raise ProtocolError(f"{what}: malformed cached key entry")
            session._secrets[(entry[0], entry[1], entry[2], entry[3])] = entry[4]
        if stage in (_READY, _TRAINED) and (session._next_seed is None or session._mask_key is None):
            raise ProtocolError(f"{what}: stage {stage!r} without keys or seed")
        return session


# --------------------------------------------------------------------------- server side


@dataclass
class _LabRecord:
    status: str = "new"  # new | advertising | advertised | ready | revealed
    epoch: int = 0  # epoch of the lab's current advert
    setup_epoch: int = 0  # epoch of the setup request in flight
    advert: bytes | None = None
    enc_pub: bytes | None = None  # the lab's share-encryption key (from its advert)
    seed: _SeedRecord | None = None  # shares of the seed the lab will use next


@dataclass
class _RoundState:
    round: int
    participants: tuple[str, ...]
    stage: str = STAGE_TRAIN
    survivors: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    used_seeds: dict[str, _SeedRecord] = field(default_factory=dict)
    seed_uses: dict[str, bytes] = field(default_factory=dict)
    acc: np.ndarray | None = None


_SUM_CHUNK = 1 << 18  # uint32 words (1 MiB) per step of the fused hash-and-add


def _hash_and_sum(vectors: list[np.ndarray], length: int) -> tuple[np.ndarray, list[bytes]]:
    """SHA-256 of each vector and their sum mod 2^32, in one pass over each vector.

    Each chunk is hashed and added while it is in cache. Vectors are split across
    up to ``os.cpu_count()`` threads (hashlib and numpy release the GIL), each
    with its own accumulator, so memory is bounded by the number of cores, never
    by the number of labs.
    """
    workers = max(1, min(len(vectors), os.cpu_count() or 1))
    digests: list[bytes] = [b""] * len(vectors)

    def work(offset: int) -> np.ndarray:
        acc = np.zeros(length, dtype=np.uint32)
        for index in range(offset, len(vectors), workers):
            vector = vectors[index]
            view = memoryview(vector.astype("<u4", copy=False)).cast("B")
            sha = hashlib.sha256()
            for start in range(0, length, _SUM_CHUNK):
                stop = min(length, start + _SUM_CHUNK)
                sha.update(view[4 * start : 4 * stop])
                np.add(acc[start:stop], vector[start:stop], out=acc[start:stop])
            digests[index] = sha.digest()
        return acc

    if workers == 1:
        total = work(0)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            partials = list(pool.map(work, range(workers)))
        total = partials[0]
        for partial in partials[1:]:
            np.add(total, partial, out=total)
    return total, digests


class ServerSession:
    """The server's side of secure aggregation for one run.

    Call order per setup: :meth:`labs_needing_setup`, :meth:`advertise_requests`,
    :meth:`collect_adverts`, :meth:`collect_shares`. Per round:
    :meth:`train_requests`, :meth:`collect_masked`, :meth:`collect_unmask`.
    Replies that fail a check are rejected one by one and recorded in
    :attr:`events` (dicts with ``event``, ``lab``, ``round``, ``stage``,
    ``reason``; for setup stages ``round`` is the setup epoch); a lab missing
    from a reply mapping counts as dropped. Calls out of order raise
    ProtocolError (a bug in the caller, not a lab's fault).
    """

    def __init__(self, params: SecAggParams, roster: Mapping[str, Ed25519PublicKey], vector_len: int) -> None:
        missing = [x for x in params.labs if x not in roster]
        if missing:
            raise ProtocolError(f"run {params.run_id!r}: roster lacks identity keys for {missing}")
        if (
            isinstance(vector_len, bool)
            or not isinstance(vector_len, int)
            or not 1 <= vector_len <= _MAX_VECTOR_LEN
        ):
            raise ProtocolError(f"run {params.run_id!r}: vector_len must be in [1, {_MAX_VECTOR_LEN}]")
        self._params = params
        self._roster = {x: roster[x] for x in params.labs}
        self._vector_len = vector_len
        self._labs = {lab: _LabRecord() for lab in params.labs}
        self._setup_epoch = 0
        self._setup_batch: set[str] = set()
        self._share_batch: set[str] = set()
        self._setup_guard = signing.ReplayGuard()
        self._round_guard = signing.ReplayGuard()
        self._last_round = 0
        self._round: _RoundState | None = None
        self.events: list[dict[str, Any]] = []

    # ----------------------------------------------------------------- bookkeeping

    @property
    def vector_len(self) -> int:
        return self._vector_len

    def _event(self, event: str, lab: str | None, round: int, stage: str, reason: str) -> None:
        entry = {"event": event, "lab": lab, "round": round, "stage": stage, "reason": reason}
        self.events.append(entry)
        logger.warning(
            "secure aggregation %s: lab %s, round %d, stage %s: %s", event, lab, round, stage, reason
        )

    def _advert_valid(self, lab: str) -> bool:
        rec = self._labs[lab]
        return rec.advert is not None and rec.status in ("advertised", "ready")

    def _usable_holders(self, seed: _SeedRecord) -> set[str]:
        return {
            h
            for h, (key, _, _) in seed.shares.items()
            if self._labs[h].enc_pub == key and self._advert_valid(h)
        }

    def _is_ready(self, lab: str) -> bool:
        rec = self._labs[lab]
        return (
            rec.status == "ready"
            and rec.seed is not None
            and len(self._usable_holders(rec.seed)) >= self._params.threshold
        )

    def _known(self, labs: Iterable[str], round: int, stage: str) -> list[str]:
        wanted = []
        for lab in labs:
            if lab in self._labs:
                wanted.append(lab)
            else:
                self._event("rejected", str(lab), round, stage, "not in the roster")
        order = self._params.labs
        return sorted(set(wanted), key=order.index)

    # ----------------------------------------------------------------- setup

    def labs_needing_setup(self, available: Iterable[str]) -> list[str]:
        """Available labs that must run setup (S1, S2) before they can take part."""
        busy = set(self._round.participants) if self._round is not None else set()
        return [
            lab
            for lab in self._known(available, self._last_round, STAGE_ADVERTISE)
            if not self._is_ready(lab) and lab not in busy
        ]

    def advertise_requests(self, labs: Iterable[str]) -> dict[str, bytes]:
        """S1 requests for ``labs`` under a new setup epoch."""
        chosen = self._known(labs, self._setup_epoch + 1, STAGE_ADVERTISE)
        if self._round is not None:
            busy = [lab for lab in chosen if lab in self._round.participants]
            if busy:
                raise ProtocolError(
                    f"run {self._params.run_id!r}: cannot restart setup of {busy} while round "
                    f"{self._round.round} is in progress"
                )
        self._setup_epoch += 1
        epoch = self._setup_epoch
        self._setup_guard.advance(epoch)
        self._setup_batch = set(chosen)
        self._share_batch = set()
        requests = {}
        for lab in chosen:
            rec = self._labs[lab]
            rec.status, rec.setup_epoch, rec.seed = "advertising", epoch, None
            requests[lab] = wire.encode(
                {"type": "S1", "run": self._params.run_id, "epoch": epoch, "lab": lab}
            )
        return requests

    def collect_adverts(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
        """Verify S1 replies; return S2 requests (each carrying the lab's neighbours' adverts)."""
        epoch = self._setup_epoch
        accepted: list[str] = []
        for lab, raw in replies.items():
            try:
                if lab not in self._labs:
                    raise ProtocolError("not in the roster")
                advert = _parse_advert(raw, self._roster, self._params.run_id, f"advert from {lab!r}")
                self._check_sender(advert.lab, lab)
                self._check_number(advert.epoch, epoch, "setup epoch")
                self._setup_guard.accept(lab, STAGE_ADVERTISE, advert.epoch)
                if lab not in self._setup_batch:
                    raise ProtocolError(f"no setup of this lab is pending at epoch {epoch}")
            except ProtocolError as exc:
                self._event("rejected", str(lab), epoch, STAGE_ADVERTISE, str(exc))
                self._setup_batch.discard(lab)
                if lab in self._labs and self._labs[lab].status == "advertising":
                    self._labs[lab].status = "new"
                continue
            rec = self._labs[lab]
            rec.advert, rec.epoch, rec.status, rec.seed = advert.raw, advert.epoch, "advertised", None
            rec.enc_pub = advert.enc_pub
            accepted.append(lab)
            self._setup_batch.discard(lab)
        for lab in sorted(self._setup_batch):
            self._event("dropped", lab, epoch, STAGE_ADVERTISE, "no advert received")
            self._labs[lab].status = "new"
        self._setup_batch = set()
        self._share_batch = set(accepted)
        requests = {}
        for lab in accepted:
            adverts = [self._labs[v].advert for v in self._params.neighbours_of(lab) if self._advert_valid(v)]
            requests[lab] = wire.encode(
                {"type": "S2", "run": self._params.run_id, "epoch": epoch, "lab": lab, "adverts": adverts}
            )
        return requests

    def collect_shares(self, replies: Mapping[str, bytes]) -> None:
        """Verify S2 replies and store the encrypted first-seed shares."""
        epoch = self._setup_epoch
        t = self._params.threshold
        for lab, raw in replies.items():
            try:
                if lab not in self._labs:
                    raise ProtocolError("not in the roster")
                what = f"shares from {lab!r}"
                body, sender, number = _open(
                    raw,
                    what=what,
                    roster=self._roster,
                    run_id=self._params.run_id,
                    stage=STAGE_SHARE,
                    round_field="epoch",
                )
                self._check_sender(sender, lab)
                self._check_number(number, epoch, "setup epoch")
                self._setup_guard.accept(lab, STAGE_SHARE, number)
                if lab not in self._share_batch:
                    raise ProtocolError(f"no share stage of this lab is pending at epoch {epoch}")
                f = wire.Fields(body, what, ("type", "run", "epoch", "lab", "seed"))
                f.str("type", expected="shares")
                f.str("run", expected=self._params.run_id)
                seed = _parse_seed_bundle(f.raw("seed"), what, self._params, lab, epoch, 0)
                usable = len(self._usable_holders(seed))
                if usable < t:
                    raise ProtocolError(f"only {usable} usable seed shares, threshold {t}")
            except ProtocolError as exc:
                self._event("rejected", str(lab), epoch, STAGE_SHARE, str(exc))
                self._share_batch.discard(lab)
                continue
            rec = self._labs[lab]
            rec.seed, rec.status = seed, "ready"
            self._share_batch.discard(lab)
        for lab in sorted(self._share_batch):
            self._event("dropped", lab, epoch, STAGE_SHARE, "no shares received")
        self._share_batch = set()

    # ----------------------------------------------------------------- rounds

    def _check_sender(self, signer: str, lab: str) -> None:
        if signer != lab:
            raise ProtocolError(f"reply delivered for {lab!r} is signed by {signer!r}")

    def _check_number(self, got: int, expected: int, name: str) -> None:
        if got < expected:
            raise ProtocolError(f"signed for past {name} {got} (current {expected}); stale or replayed")
        if got > expected:
            raise ProtocolError(f"signed for future {name} {got} (current {expected})")

    def _prune(self, labs: list[str], holders_of: Mapping[str, _SeedRecord]) -> tuple[list[str], list[str]]:
        """Drop labs that cannot be unmasked with ``labs`` (fewer than t neighbours or share holders)."""
        t = self._params.threshold
        current = list(labs)
        removed: list[str] = []
        changed = True
        while changed:
            changed = False
            members = set(current)
            for lab in list(current):
                neighbours = set(self._params.neighbours_of(lab)) & members
                holders = self._usable_holders(holders_of[lab]) & members
                if len(neighbours) < t or len(holders) < t:
                    current.remove(lab)
                    members.discard(lab)
                    removed.append(lab)
                    changed = True
        return current, removed

    def train_requests(self, round: int, available: Iterable[str]) -> dict[str, bytes]:
        """R1 requests for ``round`` to the available labs that are set up.

        Raises RoundAborted (recorded in events) if fewer than ``min_labs`` can take part.
        """
        params = self._params
        if isinstance(round, bool) or not isinstance(round, int) or round <= self._last_round:
            raise ProtocolError(
                f"run {params.run_id!r}: round {round!r} is not after the last round {self._last_round}"
            )
        if self._round is not None:
            self._event(
                "abandoned",
                None,
                self._round.round,
                self._round.stage,
                f"round {self._round.round} was not completed before round {round} started",
            )
            self._round = None
        candidates = [lab for lab in self._known(available, round, STAGE_TRAIN) if self._is_ready(lab)]
        seeds = {lab: self._labs[lab].seed for lab in candidates}
        participants, excluded = self._prune(candidates, seeds)  # type: ignore[arg-type]
        for lab in excluded:
            self._event(
                "excluded",
                lab,
                round,
                STAGE_TRAIN,
                f"fewer than t = {params.threshold} of its neighbours or seed share holders are available",
            )
        if len(participants) < params.min_labs:
            reason = (
                f"only {len(participants)} labs can take part (min_labs = {params.min_labs}); "
                "the previous global model is kept"
            )
            self._event("aborted", None, round, STAGE_TRAIN, reason)
            raise RoundAborted(f"run {params.run_id!r}, round {round}, stage {STAGE_TRAIN!r}: {reason}")
        self._last_round = round
        self._round_guard.advance(round)
        self._round = _RoundState(round, tuple(participants))
        requests = {}
        for lab in participants:
            adverts = [self._labs[v].advert for v in params.neighbours_of(lab) if self._advert_valid(v)]
            requests[lab] = wire.encode(
                {
                    "type": "R1",
                    "run": params.run_id,
                    "round": round,
                    "lab": lab,
                    "vector_len": self._vector_len,
                    "participants": list(participants),
                    "adverts": adverts,
                }
            )
        return requests

    def _require_round(self, round: int, stage: str) -> _RoundState:
        state = self._round
        if state is None or state.round != round or state.stage != stage:
            now = "no round" if state is None else f"round {state.round} at stage {state.stage!r}"
            raise ProtocolError(
                f"run {self._params.run_id!r}: {stage} results for round {round} do not fit the "
                f"session state ({now}); each stage is collected once, in order"
            )
        return state

    def _check_masked(
        self, state: _RoundState, lab: str, reply: Any
    ) -> tuple[np.ndarray, bytes, bytes, _SeedRecord]:
        params, rnd = self._params, state.round
        if lab not in self._labs:
            raise ProtocolError("not in the roster")
        if lab not in state.participants:
            raise ProtocolError(f"not a participant of round {rnd}")
        if not isinstance(reply, tuple) or len(reply) != 2:
            raise ProtocolError("reply must be (masked vector, signed header)")
        vector, header = reply
        what = f"train reply from {lab!r}"
        body, sender, number = _open(
            header,
            what=what,
            roster=self._roster,
            run_id=params.run_id,
            stage=STAGE_TRAIN,
            round_field="round",
        )
        self._check_sender(sender, lab)
        self._check_number(number, rnd, "round")
        self._round_guard.accept(lab, STAGE_TRAIN, number)
        f = wire.Fields(
            body, what, ("type", "run", "round", "lab", "vector_len", "digest", "seed_use", "next_seed")
        )
        f.str("type", expected="train")
        f.str("run", expected=params.run_id)
        if f.int("vector_len") != self._vector_len:
            raise ProtocolError(f"vector_len {f.int('vector_len')} differs from {self._vector_len}")
        digest = f.bytes("digest", length=32)
        if (
            not isinstance(vector, np.ndarray)
            or vector.dtype != np.uint32
            or vector.shape != (self._vector_len + 1,)
            or not vector.flags.c_contiguous
        ):
            raise ProtocolError(f"masked vector must be a contiguous uint32 array of {self._vector_len + 1}")
        seed_use = f.bytes("seed_use")
        use, signer, use_round = _open(
            seed_use,
            what=f"seed statement of {lab!r}",
            roster=self._roster,
            run_id=params.run_id,
            stage=STAGE_SEED,
            round_field="round",
        )
        if signer != lab or use_round != rnd:
            raise ProtocolError("seed statement signed by another lab or for another round")
        u = wire.Fields(use, f"seed statement of {lab!r}", ("type", "run", "round", "lab", "epoch", "id"))
        u.str("type", expected="seed-use")
        u.str("run", expected=params.run_id)
        held = self._labs[lab].seed
        used = (u.int("epoch"), u.int("id"))
        if held is None or used != (held.epoch, held.seed_id):
            have = None if held is None else (held.epoch, held.seed_id)
            raise ProtocolError(
                f"masked with seed {used} but the server holds shares of seed {have}; "
                "the lab must run setup again"
            )
        next_seed = _parse_seed_bundle(f.raw("next_seed"), what, params, lab, held.epoch, held.seed_id + 1)
        return vector, digest, seed_use, next_seed

    def collect_masked(self, round: int, replies: Mapping[str, tuple[np.ndarray, bytes]]) -> dict[str, bytes]:
        """Verify R1 replies, sum the masked vectors; return R2 requests to the survivors.

        Raises RoundAborted (recorded) if too few labs can be unmasked.
        """
        params = self._params
        state = self._require_round(round, STAGE_TRAIN)
        checked: dict[str, tuple[np.ndarray, bytes, bytes, _SeedRecord]] = {}
        for lab, reply in replies.items():
            try:
                checked[lab] = self._check_masked(state, lab, reply)
            except ProtocolError as exc:
                self._event("rejected", str(lab), round, STAGE_TRAIN, str(exc))
        # Hash and sum every candidate in one pass; subtract (mod 2^32) any vector
        # that fails its digest or is pruned below, instead of reading them twice.
        candidates = list(checked)
        acc, digest_list = _hash_and_sum([checked[lab][0] for lab in candidates], self._vector_len + 1)
        digests = dict(zip(candidates, digest_list, strict=True))
        for lab in candidates:
            if digests[lab] != checked[lab][1]:
                np.subtract(acc, checked[lab][0], out=acc)
                reason = "masked vector does not match the SHA-256 in its signed header"
                self._event("rejected", lab, round, STAGE_TRAIN, reason)
                del checked[lab]
        for lab in state.participants:
            if lab not in replies:
                self._event("dropped", lab, round, STAGE_TRAIN, "no masked update received")
        arrived = [lab for lab in state.participants if lab in checked]
        used = {lab: self._labs[lab].seed for lab in arrived}
        survivors, excluded = self._prune(arrived, used)  # type: ignore[arg-type]
        for lab in excluded:
            self._event(
                "excluded",
                lab,
                round,
                STAGE_TRAIN,
                f"fewer than t = {params.threshold} surviving neighbours or share holders; its "
                "seed could not be recovered",
            )
        # Labs whose reply arrived carry their next seed; the others need setup.
        for lab in state.participants:
            rec = self._labs[lab]
            if lab in checked:
                rec.seed = checked[lab][3]
            else:
                rec.seed, rec.status = None, "new"
        if len(survivors) < params.min_labs:
            reason = (
                f"{len(survivors)} labs can be unmasked (min_labs = {params.min_labs}, t = "
                f"{params.threshold}); the previous global model is kept"
            )
            self._event("aborted", None, round, STAGE_TRAIN, reason)
            self._round = None
            raise RoundAborted(f"run {params.run_id!r}, round {round}, stage {STAGE_TRAIN!r}: {reason}")
        for lab in excluded:
            np.subtract(acc, checked[lab][0], out=acc)
        dropped = tuple(lab for lab in state.participants if lab not in set(survivors))
        for lab in dropped:  # their round keys are about to be revealed: re-key before next use
            rec = self._labs[lab]
            rec.status, rec.seed = "revealed", None
        state.survivors, state.dropped = tuple(survivors), dropped
        state.used_seeds = {lab: used[lab] for lab in survivors}  # type: ignore[misc]
        state.seed_uses = {lab: checked[lab][2] for lab in survivors}
        state.acc, state.stage = acc, STAGE_UNMASK
        requests = {}
        survivor_set = set(survivors)
        for lab in survivors:
            my_key = self._labs[lab].enc_pub
            seeds = {}
            for owner in params.neighbours_of(lab):
                if owner not in survivor_set:
                    continue
                entry = state.used_seeds[owner].shares.get(lab)
                if entry is not None and entry[0] == my_key:
                    seeds[owner] = {"use": state.seed_uses[owner], "ct": entry[1]}
            requests[lab] = wire.encode(
                {
                    "type": "R2",
                    "run": params.run_id,
                    "round": round,
                    "lab": lab,
                    "survivors": list(survivors),
                    "dropped": list(dropped),
                    "seeds": seeds,
                }
            )
        return requests

    def _recover_seed(
        self, state: _RoundState, owner: str, given: Mapping[int, tuple[str, bytes]]
    ) -> tuple[bytes | None, str]:
        """Rebuild ``owner``'s seed from ``t`` shares and check it against the owner's commitment.

        Shares are checked one by one against their commitments only when the seed
        does not match, to name the holders that sent bad shares and retry without them.
        """
        params, record = self._params, state.used_seeds[owner]
        t = params.threshold

        def attempt(points: Mapping[int, bytes]) -> bytes | None:
            try:
                seed = shamir.combine(points, t)
            except ProtocolError:
                return None
            commit = _seed_commit(params.run_id, owner, record.epoch, record.seed_id, seed)
            return seed if commit == record.commit else None

        seed = attempt({x: share for x, (_, share) in given.items()})
        if seed is not None:
            return seed, ""
        good: dict[int, bytes] = {}
        for x, (holder, share) in given.items():
            expected = record.shares[holder][2]
            if _share_commit(params.run_id, owner, record.epoch, record.seed_id, holder, share) == expected:
                good[x] = share
            else:
                reason = f"its share of the seed of {owner!r} does not match the owner's commitment"
                self._event("rejected", holder, state.round, STAGE_UNMASK, reason)
        if len(good) < t:
            return None, f"only {len(good)} valid shares of the seed of {owner!r} (t = {t})"
        seed = attempt(good)
        if seed is None:
            return None, f"the valid shares of {owner!r} do not rebuild its committed seed (bad dealing)"
        return seed, ""

    def collect_unmask(self, round: int, replies: Mapping[str, bytes]) -> AggregateResult:
        """Verify R2 replies, remove the masks, decode; return the weighted sum.

        Raises RoundAborted (recorded) if some mask cannot be removed.
        """
        params = self._params
        state = self._require_round(round, STAGE_UNMASK)
        survivors, dropped = state.survivors, set(state.dropped)
        shares: dict[str, dict[int, tuple[str, bytes]]] = {lab: {} for lab in survivors}
        pair_keys: list[tuple[str, str, bytes]] = []
        answered: set[str] = set()
        for lab, raw in replies.items():
            try:
                if lab not in self._labs:
                    raise ProtocolError("not in the roster")
                if lab not in survivors:
                    raise ProtocolError(f"not a survivor of round {round}")
                what = f"unmask reply from {lab!r}"
                body, sender, number = _open(
                    raw,
                    what=what,
                    roster=self._roster,
                    run_id=params.run_id,
                    stage=STAGE_UNMASK,
                    round_field="round",
                )
                self._check_sender(sender, lab)
                self._check_number(number, round, "round")
                self._round_guard.accept(lab, STAGE_UNMASK, number)
                f = wire.Fields(body, what, ("type", "run", "round", "lab", "shares", "pair_keys"))
                f.str("type", expected="unmask")
                f.str("run", expected=params.run_id)
                expected_pairs = {d for d in params.neighbours_of(lab) if d in dropped}
                revealed = f.dict("pair_keys")
                if set(revealed) != expected_pairs:
                    raise ProtocolError(
                        f"revealed round keys for {sorted(revealed)}, expected {sorted(expected_pairs)}"
                    )
                mine: list[tuple[str, str, bytes]] = []
                for d, key in revealed.items():
                    if not isinstance(key, bytes) or len(key) != 32:
                        raise ProtocolError(f"round key for {d!r} must be 32 bytes")
                    mine.append((lab, d, key))
                given: dict[str, bytes] = {}
                for owner, share in f.dict("shares").items():
                    seed = state.used_seeds.get(owner)
                    entry = None if seed is None else seed.shares.get(lab)
                    if seed is None or entry is None or owner not in params.neighbours_of(lab):
                        raise ProtocolError(f"sent a share of {owner!r} that was not asked for")
                    if not isinstance(share, bytes) or len(share) != shamir.SHARE_LEN:
                        raise ProtocolError(f"share of {owner!r} is malformed")
                    given[owner] = share  # checked against its commitment only if the seed fails
            except ProtocolError as exc:
                self._event("rejected", str(lab), round, STAGE_UNMASK, str(exc))
                continue
            answered.add(lab)
            pair_keys.extend(mine)
            for owner, share in given.items():
                shares[owner][params.share_x(lab)] = (lab, share)
        for lab in survivors:
            if lab not in answered and lab not in replies:
                self._event("dropped", lab, round, STAGE_UNMASK, "no unmask reply received")
        problems = []
        for lab in survivors:
            if len(shares[lab]) < params.threshold:
                problems.append(f"{len(shares[lab])} shares of the seed of {lab!r} (t = {params.threshold})")
            if lab not in answered:
                stuck = [d for d in params.neighbours_of(lab) if d in dropped]
                if stuck:
                    problems.append(f"{lab!r} did not answer, so its masks with dropped {stuck} stay")
        masks: list[tuple[bytes, int]] = []
        if not problems:
            for lab in survivors:
                seed, problem = self._recover_seed(state, lab, shares[lab])
                if seed is None:
                    problems.append(problem)
                    break
                masks.append((self_mask_key(seed, params.run_id, round, lab), -1))
        if problems:
            reason = (
                "cannot remove every mask: " + "; ".join(problems) + "; the previous global model is kept"
            )
            self._event("aborted", None, round, STAGE_UNMASK, reason)
            self._round = None
            raise RoundAborted(f"run {params.run_id!r}, round {round}, stage {STAGE_UNMASK!r}: {reason}")
        for lab, d, key in pair_keys:
            masks.append((key, -_pair_sign(lab, d)))
        acc = state.acc
        assert acc is not None
        apply_masks_into(acc, masks)
        self._round = None
        try:
            weighted_sum, total_weight = params.encoder.decode_sum(acc, len(survivors))
        except ProtocolError as exc:
            reason = f"decoding failed: {exc}"
            self._event("aborted", None, round, STAGE_UNMASK, reason)
            raise RoundAborted(
                f"run {params.run_id!r}, round {round}, stage {STAGE_UNMASK!r}: {reason}"
            ) from None
        logger.info(
            "round %d: aggregated %d labs (total weight %d), %d dropped",
            round,
            len(survivors),
            total_weight,
            len(dropped),
        )
        return AggregateResult(
            round=round,
            weighted_sum=weighted_sum,
            total_weight=total_weight,
            n_contributors=len(survivors),
            survivors=tuple(survivors),
            dropped=tuple(lab for lab in state.dropped),
            error_bound=params.encoder.error_bound(len(survivors), total_weight),
        )
