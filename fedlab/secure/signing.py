"""Ed25519 signatures over (run, round, stage, sender, SHA-256 of payload).

Every message a lab sends, encrypted or plain, is signed with the lab's Ed25519
identity key over an unambiguous encoding of its context::

    b"fedlab/signature/v1" || lp(run_id) || u64(round) || lp(stage) || lp(sender)
                           || SHA-256(payload)

where ``lp(s)`` is the 4-byte big-endian length of the UTF-8 bytes of ``s`` followed
by those bytes and ``u64`` is 8 bytes big-endian. Length prefixes make the encoding
injective: no two different contexts produce the same signed bytes. A signature for
round 3 is therefore useless in round 4, for stage ``"train"`` useless for
``"unmask"``, and for one lab useless for another.

:class:`ReplayGuard` complements the signature: it refuses a (sender, stage, round)
accepted before and any round older than the current one.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedlab.errors import ProtocolError, SignatureError

logger = logging.getLogger(__name__)

SIGNATURE_DOMAIN = b"fedlab/signature/v1"
SIGNATURE_LEN = 64
MAX_ROUND = (1 << 64) - 1


def _lp(text: str, name: str) -> bytes:
    if not isinstance(text, str):
        raise ProtocolError(f"signature context: {name} must be a string, got {type(text)}")
    raw = text.encode("utf-8")
    return struct.pack(">I", len(raw)) + raw


def signed_bytes(run_id: str, round: int, stage: str, sender: str, payload: bytes) -> bytes:
    """The exact bytes an Ed25519 signature covers (see the module docstring)."""
    if isinstance(round, bool) or not isinstance(round, int) or not 0 <= round <= MAX_ROUND:
        raise ProtocolError(f"signature context: round must be an integer in [0, 2^64), not {round!r}")
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise ProtocolError(f"signature context: payload must be bytes, got {type(payload)}")
    return b"".join(
        (
            SIGNATURE_DOMAIN,
            _lp(run_id, "run id"),
            struct.pack(">Q", round),
            _lp(stage, "stage"),
            _lp(sender, "sender"),
            hashlib.sha256(payload).digest(),
        )
    )


def sign(
    identity: Ed25519PrivateKey,
    run: str,
    round: int,
    stage: str,
    sender: str,
    payload: bytes,
) -> bytes:
    """Sign ``payload`` in its context with the sender's identity key (64 bytes)."""
    return identity.sign(signed_bytes(run, round, stage, sender, payload))


def verify(
    roster: Mapping[str, Ed25519PublicKey],
    signature: bytes,
    run: str,
    round: int,
    stage: str,
    sender: str,
    payload: bytes,
) -> None:
    """Check that ``sender`` (a lab in ``roster``) signed ``payload`` in this context.

    Raises :class:`SignatureError` if the sender is not in the roster or the
    signature does not verify; returns None otherwise.
    """
    where = f"run {run!r}, round {round}, stage {stage!r}"
    key = roster.get(sender) if isinstance(sender, str) else None
    if key is None:
        raise SignatureError(f"{where}: message from {sender!r}, which is not in the roster; refused")
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_LEN:
        raise SignatureError(f"{where}: message from lab {sender!r} carries no valid 64-byte signature")
    try:
        key.verify(signature, signed_bytes(run, round, stage, sender, payload))
    except InvalidSignature:
        raise SignatureError(
            f"{where}: signature of lab {sender!r} does not verify (tampered, or signed for "
            "another run, round, stage or sender); refused"
        ) from None


class ReplayGuard:
    """Refuses a (sender, stage, round) accepted before and rounds older than the current.

    ``advance(round)`` moves the current round forward (never back) and forgets
    what can no longer be replayed. ``accept`` records a message or raises
    :class:`ProtocolError`. Rounds ahead of the current one are accepted (the
    caller decides which round it expects); they do not move the current round.
    """

    def __init__(self, current_round: int = 0) -> None:
        self._current = current_round
        self._seen: set[tuple[str, str, int]] = set()

    @property
    def current_round(self) -> int:
        return self._current

    def advance(self, round: int) -> None:
        if round < self._current:
            raise ProtocolError(f"replay guard: cannot move back from round {self._current} to round {round}")
        if round > self._current:
            self._current = round
            self._seen = {entry for entry in self._seen if entry[2] >= round}

    def check(self, sender: str, stage: str, round: int) -> None:
        """Raise ProtocolError if the message would be refused; record nothing."""
        if round < self._current:
            raise ProtocolError(
                f"round {round}, stage {stage!r}: message from lab {sender!r} is for a past round "
                f"(current round is {self._current}); refused as stale"
            )
        if (sender, stage, round) in self._seen:
            raise ProtocolError(
                f"round {round}, stage {stage!r}: lab {sender!r} already sent this stage; refused as a replay"
            )

    def accept(self, sender: str, stage: str, round: int) -> None:
        """Record (sender, stage, round) or raise ProtocolError if stale or repeated."""
        self.check(sender, stage, round)
        self._seen.add((sender, stage, round))
