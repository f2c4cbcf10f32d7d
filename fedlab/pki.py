"""The federation's keys, certificates, roster and kits.

``fedlab provision federation.toml --out DIR`` calls :func:`provision`; later
:func:`add_lab` and :func:`revoke_lab` change the membership without re-keying
anyone. The aggregation host and each lab load their kit with
:func:`load_server_kit` / :func:`load_lab_kit`, which check everything that can
be checked offline and fail with a :class:`~fedlab.errors.KitError` that names
the file and says what to do.

Layout written under ``DIR`` (every kit folder is self-contained, so it can be
copied as it is to another machine)::

    DIR/
      ca/                    coordinator only, never leaves this machine (0700)
        ca.key               federation CA key, ECDSA P-384, PEM PKCS8 (0600)
        ca.crt               federation CA certificate (self-signed, CA:true, pathlen 0)
        roster.json          current roster (master copy) + roster.sig
        federation.toml      the federation config, copied into new kits
        state.json           federation name, server address, certificate lifetime
      server/                the aggregation host's kit (0700)
        ca.crt
        server.pem           TLS certificate: SANs = every server host (DNS or IP),
                             serverAuth, signed by the CA, valid ``valid_days``
        server.key           its ECDSA P-384 key, PEM PKCS8 (0600)
        roster.json, roster.sig
        federation.toml
        nodes/<lab>.pub      SuperNode auth public key of each *active* lab (OpenSSH),
                             for ``flwr supernode register``
        README.md
      labs/<name>/           one kit per lab (0700)
        ca.crt
        identity.key         Ed25519 identity key, PEM PKCS8 (0600): signs the lab's
                             secure-aggregation messages
        identity.pub         its public half, PEM SubjectPublicKeyInfo
        node.key             SuperNode authentication key, EC P-384 in OpenSSH private
                             format (0600; Flower 1.42 rejects PKCS8 here)
        node.pub             its public half, OpenSSH format
        roster.json, roster.sig
        federation.toml
        lab.toml             this lab's name, federation and server address
        README.md

The roster (``roster.json``) lists every lab ever admitted: its name, raw
Ed25519 identity public key, OpenSSH SuperNode public key and whether it is
revoked. It is canonical JSON (sorted keys, no spaces, ASCII) and it is versioned:
every :func:`add_lab` / :func:`revoke_lab` writes version + 1 into ``ca/``, the
server kit and every lab kit present under ``DIR/labs/``.

Federation signing key: the roster is signed by the CA key itself (ECDSA P-384
with SHA-384), over ``b"fedlab roster v1\\x00" + roster_bytes``. Reasons: every
kit already trusts exactly one thing, ``ca.crt``, so a second trust anchor (an
Ed25519 key carried in a custom certificate extension) would add a parser and a
way to get it wrong without adding security -- whoever holds ``ca/ca.key`` can
already mint a server certificate. The domain-separation prefix keeps a roster
signature from ever being valid over a certificate body (whose DER starts with
``0x30``) and leaves room for other signed objects (``b"fedlab <kind> v1\\x00"``).

Trust: the coordinator generates every key, so ``DIR/labs/<name>/`` holds lab
private keys until the kit is handed over; send each kit over a private
channel, then delete it from ``DIR`` if the coordinator should not keep it (a
later :func:`add_lab` / :func:`revoke_lab` only refreshes the kits that are still
present). Labs should compare the CA fingerprint (:attr:`ProvisionResult.ca_fingerprint`)
with the coordinator out of band.

Revocation and rollback: a revoked lab stays in the roster (``revoked: true``)
and its ``server/nodes/<lab>.pub`` is deleted, so the server refuses its
identity key (:meth:`Roster.identity_keys` lists active labs only); a SuperNode
key already registered with a running SuperLink must still be removed with
``flwr supernode unregister`` (the server launcher's job). Every roster version
carries a valid signature, so :func:`load_roster` cannot tell an old roster from
the current one: whoever keeps state (the server's run folder, a lab's worker)
should refuse a version lower than the highest it has seen.

Private keys are written atomically (``os.open(..., 0o600)``, write, fsync,
rename) and are never logged, printed or shown in a ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import datetime as dt
import fcntl
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, Subject, VerificationError

from fedlab.errors import ConfigError, KitError

logger = logging.getLogger(__name__)

__all__ = [
    "LabEntry",
    "LabKit",
    "ProvisionResult",
    "Roster",
    "ServerKit",
    "add_lab",
    "generate_identity",
    "load_lab_kit",
    "load_roster",
    "load_server_kit",
    "provision",
    "revoke_lab",
]

LAB_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
FEDERATION_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,62}$")
_DNS_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")

ROSTER_FORMAT = "fedlab-roster/1"
_ROSTER_SIG_PREFIX = b"fedlab roster v1\x00"
_SIG_HASH = hashes.SHA384()
_CURVE = ec.SECP384R1
_CA_VALID_DAYS = 3650
_MAX_VALID_DAYS = 3650
_CLOCK_SKEW = dt.timedelta(minutes=5)
_EXPIRY_WARNING = dt.timedelta(days=30)
_NODE_KEY_TYPE = "ecdsa-sha2-nistp384"

_PRIVATE = 0o600
_PUBLIC = 0o644
_DIR_MODE = 0o700

# File names inside the kits.
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
ROSTER_JSON = "roster.json"
ROSTER_SIG = "roster.sig"
FEDERATION_TOML = "federation.toml"
LAB_TOML = "lab.toml"
STATE_JSON = "state.json"
IDENTITY_KEY = "identity.key"
IDENTITY_PUB = "identity.pub"
NODE_KEY = "node.key"
NODE_PUB = "node.pub"
NODES_DIR = "nodes"
README = "README.md"

_LAB_FILES = (
    CA_CERT,
    IDENTITY_KEY,
    IDENTITY_PUB,
    NODE_KEY,
    NODE_PUB,
    ROSTER_JSON,
    ROSTER_SIG,
    FEDERATION_TOML,
    LAB_TOML,
)
_SERVER_FILES = (CA_CERT, SERVER_CERT, SERVER_KEY, ROSTER_JSON, ROSTER_SIG, FEDERATION_TOML)
_CA_FILES = (CA_KEY, CA_CERT, ROSTER_JSON, ROSTER_SIG, FEDERATION_TOML, STATE_JSON)


# --------------------------------------------------------------------------- roster


@dataclass(frozen=True)
class LabEntry:
    """One lab of the roster.

    ``identity_public`` is the raw 32-byte Ed25519 public key; ``node_public_openssh``
    the SuperNode authentication key as one OpenSSH line without comment.
    """

    name: str
    identity_public: bytes
    node_public_openssh: str
    revoked: bool = False

    def __post_init__(self) -> None:
        _check_lab_name(self.name)
        if not isinstance(self.identity_public, bytes) or len(self.identity_public) != 32:
            raise ConfigError(
                f"lab {self.name!r}: identity_public must be the raw 32-byte Ed25519 public key"
            )
        if _canonical_node_public(self.node_public_openssh) != self.node_public_openssh:
            raise ConfigError(
                f"lab {self.name!r}: node_public_openssh must be one canonical "
                f"'{_NODE_KEY_TYPE} <base64>' line without comment"
            )
        if not isinstance(self.revoked, bool):
            raise ConfigError(f"lab {self.name!r}: revoked must be true or false")

    def identity_key(self) -> Ed25519PublicKey:
        """The lab's identity public key as a ``cryptography`` object."""
        return Ed25519PublicKey.from_public_bytes(self.identity_public)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "identity_public": base64.b64encode(self.identity_public).decode("ascii"),
            "node_public_openssh": self.node_public_openssh,
            "revoked": self.revoked,
        }


@dataclass(frozen=True)
class Roster:
    """The signed list of labs of a federation, at one version."""

    federation: str
    version: int
    labs: tuple[LabEntry, ...]

    def __post_init__(self) -> None:
        _check_federation_name(self.federation)
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ConfigError(f"roster version must be an integer >= 1, got {self.version!r}")
        if not isinstance(self.labs, tuple) or not all(isinstance(e, LabEntry) for e in self.labs):
            raise ConfigError("roster labs must be a tuple of LabEntry")
        seen: set[str] = set()
        for entry in self.labs:
            if entry.name in seen:
                raise ConfigError(f"lab {entry.name!r} appears twice in the roster")
            seen.add(entry.name)
        identities = [e.identity_public for e in self.labs]
        nodes = [e.node_public_openssh for e in self.labs]
        if len(set(identities)) != len(identities) or len(set(nodes)) != len(nodes):
            raise ConfigError("two labs of the roster share a key; every lab needs its own keys")

    def active(self) -> tuple[LabEntry, ...]:
        """The labs that are not revoked, in roster order."""
        return tuple(e for e in self.labs if not e.revoked)

    def get(self, name: str) -> LabEntry | None:
        """The entry of lab ``name`` (active or revoked), or ``None``."""
        for entry in self.labs:
            if entry.name == name:
                return entry
        return None

    def identity_keys(self) -> dict[str, Ed25519PublicKey]:
        """Identity public keys of the active labs, by lab name."""
        return {e.name: e.identity_key() for e in self.active()}

    def to_bytes(self) -> bytes:
        """Canonical JSON: sorted keys, no whitespace, ASCII, no trailing newline."""
        doc = {
            "format": ROSTER_FORMAT,
            "federation": self.federation,
            "version": self.version,
            "labs": [e.to_json() for e in self.labs],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode(
            "ascii"
        )


def _roster_from_bytes(data: bytes, path: Path) -> Roster:
    """Parse canonical roster bytes (the signature must be checked by the caller)."""
    what = f"{path} is not a valid fedlab roster"
    try:
        doc = json.loads(data.decode("ascii"))
        if not isinstance(doc, dict) or doc.get("format") != ROSTER_FORMAT:
            raise ValueError(f"format is not {ROSTER_FORMAT!r}")
        if set(doc) != {"format", "federation", "version", "labs"}:
            raise ValueError("unexpected or missing fields")
        labs_doc = doc["labs"]
        if not isinstance(labs_doc, list):
            raise ValueError("labs is not a list")
        labs: list[LabEntry] = []
        for item in labs_doc:
            if not isinstance(item, dict) or set(item) != {
                "name",
                "identity_public",
                "node_public_openssh",
                "revoked",
            }:
                raise ValueError("a lab entry has unexpected or missing fields")
            if not isinstance(item["name"], str) or not isinstance(item["identity_public"], str):
                raise ValueError("a lab entry has a field of the wrong type")
            if not isinstance(item["node_public_openssh"], str):
                raise ValueError("a lab entry has a field of the wrong type")
            labs.append(
                LabEntry(
                    name=item["name"],
                    identity_public=base64.b64decode(item["identity_public"], validate=True),
                    node_public_openssh=item["node_public_openssh"],
                    revoked=item["revoked"],
                )
            )
        roster = Roster(federation=doc["federation"], version=doc["version"], labs=tuple(labs))
    except (UnicodeDecodeError, ValueError, binascii.Error, ConfigError, TypeError) as exc:
        raise KitError(f"{what} ({exc}); ask the coordinator for a fresh copy") from exc
    if roster.to_bytes() != data:
        raise KitError(f"{what} (not in canonical form); ask the coordinator for a fresh copy")
    return roster


def _sign_roster(roster: Roster, ca_key: ec.EllipticCurvePrivateKey) -> bytes:
    signature = ca_key.sign(_ROSTER_SIG_PREFIX + roster.to_bytes(), ec.ECDSA(_SIG_HASH))
    return base64.b64encode(signature) + b"\n"


def load_roster(path: Path, ca_cert_path: Path) -> Roster:
    """Load ``path`` (``roster.json``) and check its signature (``roster.sig`` beside it).

    The signature must verify with the federation CA in ``ca_cert_path``; a roster
    of another federation, an altered roster or a missing signature is a KitError.
    """
    path = Path(path)
    ca_cert_path = Path(ca_cert_path)
    ca_cert = _load_ca_cert(ca_cert_path)
    return _load_roster_with_ca(path, ca_cert, ca_cert_path)


def _load_roster_with_ca(path: Path, ca_cert: x509.Certificate, ca_cert_path: Path) -> Roster:
    sig_path = path.with_name(ROSTER_SIG)
    data = _read_required(path, "the signed list of labs; ask the coordinator for it")
    sig_text = _read_required(sig_path, f"the signature of {path.name}; ask the coordinator")
    try:
        signature = base64.b64decode(sig_text.strip(), validate=True)
    except binascii.Error as exc:
        raise KitError(
            f"{sig_path} is not a roster signature (not base64); ask the coordinator for "
            f"the current {ROSTER_JSON} and {ROSTER_SIG}"
        ) from exc
    public_key = ca_cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)  # checked by _load_ca_cert
    try:
        public_key.verify(signature, _ROSTER_SIG_PREFIX + data, ec.ECDSA(_SIG_HASH))
    except InvalidSignature as exc:
        raise KitError(
            f"{path} is not signed by this federation's CA ({ca_cert_path}): the roster is "
            "from another federation or was altered. Ask the coordinator for the current "
            f"{ROSTER_JSON} and {ROSTER_SIG}, and check that {ca_cert_path.name} is the "
            "federation's CA certificate"
        ) from exc
    roster = _roster_from_bytes(data, path)
    ca_federation = _ca_federation(ca_cert)
    if roster.federation != ca_federation:
        raise KitError(
            f"{path} is for federation {roster.federation!r} but {ca_cert_path} is the CA of "
            f"federation {ca_federation!r}; the roster is not from this federation"
        )
    logger.debug(
        "roster %s verified: federation %s version %d", path, roster.federation, roster.version
    )
    return roster


# --------------------------------------------------------------------------- kits


@dataclass(frozen=True)
class LabKit:
    """A loaded and checked lab kit."""

    kit_dir: Path
    name: str
    federation: str
    server_address: str
    ca_cert_path: Path
    identity_key_path: Path
    identity_pub_path: Path
    node_key_path: Path
    node_pub_path: Path
    roster_path: Path
    roster_sig_path: Path
    config_path: Path
    lab_config_path: Path
    roster: Roster
    identity_key: Ed25519PrivateKey = field(repr=False, compare=False)

    @property
    def entry(self) -> LabEntry:
        """This lab's roster entry."""
        entry = self.roster.get(self.name)
        assert entry is not None  # checked by load_lab_kit
        return entry


@dataclass(frozen=True)
class ServerKit:
    """A loaded and checked server kit."""

    kit_dir: Path
    federation: str
    ca_cert_path: Path
    cert_path: Path
    key_path: Path
    roster_path: Path
    roster_sig_path: Path
    config_path: Path
    roster: Roster
    node_pub_paths: Mapping[str, Path]
    server_hosts: tuple[str, ...]
    cert_not_after: dt.datetime


@dataclass(frozen=True)
class ProvisionResult:
    """What :func:`provision`, :func:`add_lab` or :func:`revoke_lab` wrote.

    ``lab_kits`` are all lab kits present under ``DIR/labs/`` (each now holds the
    new roster); ``added`` / ``revoked`` the labs this call changed. Nothing here is
    secret.
    """

    out_dir: Path
    federation: str
    roster_version: int
    ca_cert_path: Path
    ca_fingerprint: str
    server_kit: Path
    lab_kits: Mapping[str, Path]
    added: tuple[str, ...] = ()
    revoked: tuple[str, ...] = ()


def generate_identity() -> Ed25519PrivateKey:
    """A fresh Ed25519 identity key (a lab's, or a simulated lab's)."""
    return Ed25519PrivateKey.generate()


def load_lab_kit(kit_dir: Path) -> LabKit:
    """Load and check a lab kit; KitError naming the file and the fix otherwise."""
    kit_dir = Path(kit_dir)
    _require_kit_dir(kit_dir, "lab kit")
    paths = {name: kit_dir / name for name in _LAB_FILES}
    for name, path in paths.items():
        if not path.is_file():
            raise KitError(
                f"lab kit {kit_dir} is missing {name} ({path}); copy the whole kit folder "
                "from the coordinator again"
            )
    for name in (IDENTITY_KEY, NODE_KEY):
        _check_private_mode(paths[name])

    ca_cert = _load_ca_cert(paths[CA_CERT])
    roster = _load_roster_with_ca(paths[ROSTER_JSON], ca_cert, paths[CA_CERT])
    settings = _load_lab_toml(paths[LAB_TOML])
    name = settings["name"]
    if settings["federation"] != roster.federation:
        raise KitError(
            f"{paths[LAB_TOML]} names federation {settings['federation']!r} but the roster "
            f"and CA are of federation {roster.federation!r}; the kit mixes files of two "
            "federations. Copy the whole kit folder from the coordinator again"
        )
    entry = roster.get(name)
    if entry is None:
        raise KitError(
            f"lab {name!r} ({paths[LAB_TOML]}) is not in roster version {roster.version} of "
            f"federation {roster.federation!r} ({paths[ROSTER_JSON]}); ask the coordinator to "
            "add the lab and send the current roster"
        )
    if entry.revoked:
        raise KitError(
            f"lab {name!r} is revoked in roster version {roster.version} of federation "
            f"{roster.federation!r} ({paths[ROSTER_JSON]}); this kit can no longer join. "
            "Ask the coordinator if this is a mistake"
        )

    identity_key = _load_identity_key(paths[IDENTITY_KEY])
    identity_raw = _raw_public(identity_key.public_key())
    if identity_raw != entry.identity_public:
        raise KitError(
            f"{paths[IDENTITY_KEY]} does not match lab {name!r}'s identity key in the roster "
            f"({paths[ROSTER_JSON]}); the key file was replaced. Restore it from the kit the "
            "coordinator sent"
        )
    identity_pub = _load_identity_pub(paths[IDENTITY_PUB])
    if _raw_public(identity_pub) != identity_raw:
        raise KitError(
            f"{paths[IDENTITY_PUB]} does not match {paths[IDENTITY_KEY]}; restore both from the "
            "kit the coordinator sent"
        )

    node_key = _load_node_key(paths[NODE_KEY])
    node_public = _node_public_line(node_key.public_key())
    node_pub_file = _read_node_pub(paths[NODE_PUB])
    if node_pub_file != node_public:
        raise KitError(
            f"{paths[NODE_PUB]} does not match {paths[NODE_KEY]}; restore both from the kit "
            "the coordinator sent"
        )
    if node_public != entry.node_public_openssh:
        raise KitError(
            f"{paths[NODE_KEY]} does not match lab {name!r}'s SuperNode key in the roster "
            f"({paths[ROSTER_JSON]}); restore it from the kit the coordinator sent"
        )
    _check_toml(paths[FEDERATION_TOML])

    logger.info(
        "lab kit %s: lab %s of federation %s, roster version %d",
        kit_dir,
        name,
        roster.federation,
        roster.version,
    )
    return LabKit(
        kit_dir=kit_dir,
        name=name,
        federation=roster.federation,
        server_address=settings["server_address"],
        ca_cert_path=paths[CA_CERT],
        identity_key_path=paths[IDENTITY_KEY],
        identity_pub_path=paths[IDENTITY_PUB],
        node_key_path=paths[NODE_KEY],
        node_pub_path=paths[NODE_PUB],
        roster_path=paths[ROSTER_JSON],
        roster_sig_path=paths[ROSTER_SIG],
        config_path=paths[FEDERATION_TOML],
        lab_config_path=paths[LAB_TOML],
        roster=roster,
        identity_key=identity_key,
    )


def load_server_kit(kit_dir: Path) -> ServerKit:
    """Load and check a server kit; KitError naming the file and the fix otherwise."""
    kit_dir = Path(kit_dir)
    _require_kit_dir(kit_dir, "server kit")
    paths = {name: kit_dir / name for name in _SERVER_FILES}
    for name, path in paths.items():
        if not path.is_file():
            raise KitError(
                f"server kit {kit_dir} is missing {name} ({path}); copy the whole kit folder "
                "from the coordinator again"
            )
    _check_private_mode(paths[SERVER_KEY])
    ca_cert = _load_ca_cert(paths[CA_CERT])
    cert = _load_server_cert(paths[SERVER_CERT], ca_cert, paths[CA_CERT])
    key = _load_ec_pem_key(paths[SERVER_KEY])
    if key.public_key() != cert.public_key():
        raise KitError(
            f"{paths[SERVER_KEY]} is not the key of {paths[SERVER_CERT]}; restore both from the "
            "server kit the coordinator sent"
        )
    roster = _load_roster_with_ca(paths[ROSTER_JSON], ca_cert, paths[CA_CERT])
    _check_toml(paths[FEDERATION_TOML])

    nodes_dir = kit_dir / NODES_DIR
    node_paths: dict[str, Path] = {}
    for entry in roster.labs:
        pub = nodes_dir / f"{entry.name}.pub"
        if entry.revoked:
            if pub.exists():
                raise KitError(
                    f"{pub} belongs to lab {entry.name!r}, which is revoked in roster version "
                    f"{roster.version}; delete the file (and unregister the SuperNode)"
                )
            continue
        if not pub.is_file():
            raise KitError(
                f"server kit {kit_dir} is missing {NODES_DIR}/{entry.name}.pub ({pub}), the "
                f"SuperNode key of lab {entry.name!r}; copy it from the coordinator's server kit"
            )
        if _read_node_pub(pub) != entry.node_public_openssh:
            raise KitError(
                f"{pub} does not match lab {entry.name!r}'s SuperNode key in the roster "
                f"({paths[ROSTER_JSON]}); copy the server kit from the coordinator again"
            )
        node_paths[entry.name] = pub

    hosts = tuple(_san_strings(cert))
    not_after = cert.not_valid_after_utc
    logger.info(
        "server kit %s: federation %s, roster version %d, %d active labs, certificate for %s",
        kit_dir,
        roster.federation,
        roster.version,
        len(node_paths),
        ", ".join(hosts),
    )
    return ServerKit(
        kit_dir=kit_dir,
        federation=roster.federation,
        ca_cert_path=paths[CA_CERT],
        cert_path=paths[SERVER_CERT],
        key_path=paths[SERVER_KEY],
        roster_path=paths[ROSTER_JSON],
        roster_sig_path=paths[ROSTER_SIG],
        config_path=paths[FEDERATION_TOML],
        roster=roster,
        node_pub_paths=MappingProxyType(node_paths),
        server_hosts=hosts,
        cert_not_after=not_after,
    )


# --------------------------------------------------------------------------- provisioning


def provision(
    out_dir: Path,
    *,
    federation: str,
    labs: Sequence[str],
    server_hosts: Sequence[str],
    server_address: str,
    config_text: str,
    valid_days: int = 825,
    force: bool = False,
) -> ProvisionResult:
    """Create a federation under ``out_dir``: CA, server kit and one kit per lab.

    ``server_hosts`` are the DNS names / IP addresses labs may use to reach the
    server (all go into the certificate); ``server_address`` (``host:port``) is
    what the lab kits connect to and its host must be one of ``server_hosts``.
    An ``out_dir`` that already holds a federation is refused unless ``force``.
    """
    out_dir = Path(out_dir)
    _check_federation_name(federation)
    lab_names = _check_lab_names(labs)
    hosts = _check_server_hosts(server_hosts)
    address = _check_server_address(server_address, hosts)
    _check_valid_days(valid_days)
    _check_config_text(config_text)

    existing = [out_dir / d for d in ("ca", "server", "labs") if (out_dir / d).exists()]
    if existing and not force:
        raise KitError(
            f"{out_dir} already holds a provisioned federation ({existing[0]}); choose a new "
            "folder, or pass --force to replace it (this re-keys every lab and the server)"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise KitError(f"{out_dir} exists and is not a folder; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)

    staging = Path(_mkdtemp(out_dir, ".provision-"))
    try:
        ca_key = ec.generate_private_key(_CURVE())
        ca_cert = _make_ca_cert(ca_key, federation)
        ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)

        entries: list[LabEntry] = []
        lab_keys: dict[str, tuple[Ed25519PrivateKey, ec.EllipticCurvePrivateKey]] = {}
        for name in lab_names:
            identity = generate_identity()
            node = ec.generate_private_key(_CURVE())
            lab_keys[name] = (identity, node)
            entries.append(_entry_for(name, identity, node))
        roster = Roster(federation=federation, version=1, labs=tuple(entries))
        roster_bytes = roster.to_bytes()
        roster_sig = _sign_roster(roster, ca_key)

        with _batched_dir_sync():
            ca_dir = _mkdir(staging / "ca")
            _write_private(ca_dir / CA_KEY, _pkcs8_pem(ca_key))
            _write_public(ca_dir / CA_CERT, ca_pem)
            _write_public(ca_dir / FEDERATION_TOML, config_text.encode("utf-8"))
            state = {
                "federation": federation,
                "server_address": address,
                "server_hosts": list(hosts),
                "valid_days": valid_days,
            }
            _write_public(ca_dir / STATE_JSON, (json.dumps(state, indent=2) + "\n").encode())
            _write_roster(ca_dir, roster_bytes, roster_sig)

            server_key = ec.generate_private_key(_CURVE())
            server_cert = _make_server_cert(
                server_key, ca_key, ca_cert, federation, hosts, valid_days
            )
            server_dir = _mkdir(staging / "server")
            _write_public(server_dir / CA_CERT, ca_pem)
            _write_public(
                server_dir / SERVER_CERT, server_cert.public_bytes(serialization.Encoding.PEM)
            )
            _write_private(server_dir / SERVER_KEY, _pkcs8_pem(server_key))
            _write_public(server_dir / FEDERATION_TOML, config_text.encode("utf-8"))
            _write_roster(server_dir, roster_bytes, roster_sig)
            nodes_dir = _mkdir(server_dir / NODES_DIR)
            for entry in roster.active():
                _write_public(nodes_dir / f"{entry.name}.pub", _node_pub_file(entry))
            _write_public(server_dir / README, _server_readme(federation, hosts).encode("utf-8"))

            labs_dir = _mkdir(staging / "labs")
            for entry in roster.labs:
                identity, node = lab_keys[entry.name]
                _write_lab_kit(
                    labs_dir / entry.name,
                    name=entry.name,
                    federation=federation,
                    server_address=address,
                    ca_pem=ca_pem,
                    identity=identity,
                    node=node,
                    roster_bytes=roster_bytes,
                    roster_sig=roster_sig,
                    config_text=config_text,
                )

        # Swap the staged tree in; an old tree (force) is removed only afterwards.
        old = out_dir / f".replaced-{secrets.token_hex(4)}"
        if existing:
            old.mkdir(mode=_DIR_MODE)
            for path in existing:
                path.rename(old / path.name)
        for sub in ("ca", "server", "labs"):
            (staging / sub).rename(out_dir / sub)
        _fsync_dir(out_dir)
        if existing:
            shutil.rmtree(old)
            logger.warning("replaced the federation previously provisioned in %s", out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    result = _result(out_dir, roster, ca_cert, added=tuple(lab_names))
    logger.info(
        "provisioned federation %s (%d labs, roster version 1) in %s; CA fingerprint %s",
        federation,
        len(lab_names),
        out_dir,
        result.ca_fingerprint,
    )
    logger.info(
        "send %s to the aggregation host and each %s/<lab>/ to its lab over a private "
        "channel; keep %s to yourself",
        out_dir / "server",
        out_dir / "labs",
        out_dir / "ca",
    )
    return result


def add_lab(out_dir: Path, name: str, *, server_address: str | None = None) -> ProvisionResult:
    """Issue one new lab kit and roster version + 1; no existing key changes.

    ``server_address`` defaults to the one given at :func:`provision`. A name that
    is (or was) in the roster is a ConfigError.
    """
    out_dir = Path(out_dir)
    _check_lab_name(name)
    with _ca_lock(out_dir):
        ca = _load_ca_dir(out_dir)
        existing = ca.roster.get(name)
        if existing is not None:
            state = "revoked" if existing.revoked else "active"
            raise ConfigError(
                f"lab {name!r} is already in roster version {ca.roster.version} ({state}); "
                "choose another name for the new lab"
            )
        hosts = tuple(ca.state["server_hosts"])
        address = _check_server_address(
            server_address if server_address is not None else ca.state["server_address"], hosts
        )
        kit_dir = out_dir / "labs" / name
        if kit_dir.exists():
            raise KitError(
                f"{kit_dir} exists but lab {name!r} is not in the roster (left over from an "
                "interrupted add_lab?); delete that folder and run add-lab again"
            )
        identity = generate_identity()
        node = ec.generate_private_key(_CURVE())
        roster = Roster(
            federation=ca.roster.federation,
            version=ca.roster.version + 1,
            labs=(*ca.roster.labs, _entry_for(name, identity, node)),
        )
        roster_bytes = roster.to_bytes()
        roster_sig = _sign_roster(roster, ca.key)

        labs_dir = _mkdir(out_dir / "labs")
        staging = Path(_mkdtemp(labs_dir, f".new-{name}-"))
        try:
            with _batched_dir_sync():
                _write_lab_kit(
                    staging / name,
                    name=name,
                    federation=roster.federation,
                    server_address=address,
                    ca_pem=ca.cert.public_bytes(serialization.Encoding.PEM),
                    identity=identity,
                    node=node,
                    roster_bytes=roster_bytes,
                    roster_sig=roster_sig,
                    config_text=ca.config_text,
                )
            (staging / name).rename(kit_dir)
            _fsync_dir(labs_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

        _distribute_roster(out_dir, roster, roster_bytes, roster_sig)
        result = _result(out_dir, roster, ca.cert, added=(name,))
    logger.info(
        "added lab %s to federation %s (roster version %d); send %s to the lab and the new "
        "roster.json + roster.sig to the server and every lab",
        name,
        roster.federation,
        roster.version,
        kit_dir,
    )
    return result


def revoke_lab(out_dir: Path, name: str) -> ProvisionResult:
    """Mark lab ``name`` revoked in roster version + 1 (its entry stays, as a record)."""
    out_dir = Path(out_dir)
    _check_lab_name(name)
    with _ca_lock(out_dir):
        ca = _load_ca_dir(out_dir)
        entry = ca.roster.get(name)
        if entry is None:
            raise ConfigError(
                f"lab {name!r} is not in roster version {ca.roster.version} of federation "
                f"{ca.roster.federation!r}; labs: {', '.join(e.name for e in ca.roster.labs)}"
            )
        if entry.revoked:
            raise ConfigError(
                f"lab {name!r} is already revoked (roster version "
                f"{ca.roster.version}); nothing to do"
            )
        labs = tuple(
            LabEntry(e.name, e.identity_public, e.node_public_openssh, True)
            if e.name == name
            else e
            for e in ca.roster.labs
        )
        roster = Roster(federation=ca.roster.federation, version=ca.roster.version + 1, labs=labs)
        roster_bytes = roster.to_bytes()
        roster_sig = _sign_roster(roster, ca.key)
        _distribute_roster(out_dir, roster, roster_bytes, roster_sig)
        result = _result(out_dir, roster, ca.cert, revoked=(name,))
    logger.info(
        "revoked lab %s of federation %s (roster version %d); copy the new roster.json + "
        "roster.sig to the server and every lab, and unregister the lab's SuperNode "
        "(flwr supernode unregister)",
        name,
        roster.federation,
        roster.version,
    )
    return result


@dataclass(frozen=True)
class _CaDir:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    roster: Roster
    state: dict[str, Any]
    config_text: str


def _load_ca_dir(out_dir: Path) -> _CaDir:
    ca_dir = out_dir / "ca"
    if not ca_dir.is_dir():
        raise KitError(
            f"{ca_dir} not found: {out_dir} is not a provisioned federation folder; pass the "
            "--out folder given to `fedlab provision`"
        )
    for name in _CA_FILES:
        if not (ca_dir / name).is_file():
            raise KitError(f"{ca_dir / name} is missing; restore {ca_dir} from your backup")
    _check_private_mode(ca_dir / CA_KEY)
    cert = _load_ca_cert(ca_dir / CA_CERT)
    key = _load_ec_pem_key(ca_dir / CA_KEY)
    if key.public_key() != cert.public_key():
        raise KitError(
            f"{ca_dir / CA_KEY} is not the key of {ca_dir / CA_CERT}; restore "
            f"{ca_dir} from your backup"
        )
    roster = _load_roster_with_ca(ca_dir / ROSTER_JSON, cert, ca_dir / CA_CERT)
    try:
        state = json.loads((ca_dir / STATE_JSON).read_text("utf-8"))
        hosts = _check_server_hosts(state["server_hosts"])
        _check_server_address(state["server_address"], hosts)
        if state["federation"] != roster.federation:
            raise ValueError("federation differs from the roster's")
    except (ValueError, KeyError, TypeError, ConfigError) as exc:
        raise KitError(
            f"{ca_dir / STATE_JSON} is damaged ({exc}); restore {ca_dir} from your backup"
        ) from exc
    config_text = (ca_dir / FEDERATION_TOML).read_text("utf-8")
    return _CaDir(cert=cert, key=key, roster=roster, state=state, config_text=config_text)


def _distribute_roster(out_dir: Path, roster: Roster, roster_bytes: bytes, sig: bytes) -> None:
    """Write a new roster into ca/, the server kit and every lab kit under DIR/labs/."""
    with _batched_dir_sync():
        _write_roster(out_dir / "ca", roster_bytes, sig)
        server_dir = out_dir / "server"
        if server_dir.is_dir():
            _write_roster(server_dir, roster_bytes, sig)
            nodes_dir = _mkdir(server_dir / NODES_DIR)
            for entry in roster.labs:
                pub = nodes_dir / f"{entry.name}.pub"
                if entry.revoked:
                    if pub.exists():
                        pub.unlink()
                elif not pub.exists():
                    _write_public(pub, _node_pub_file(entry))
            _fsync_dir(nodes_dir)
        else:
            logger.warning("%s not found: copy the new roster to the server yourself", server_dir)
        labs_dir = out_dir / "labs"
        if not labs_dir.is_dir():
            return
        for kit_dir in sorted(p for p in labs_dir.iterdir() if p.is_dir()):
            if kit_dir.name.startswith("."):
                continue
            if roster.get(kit_dir.name) is None:
                logger.warning("%s is not a lab of the roster; left unchanged", kit_dir)
                continue
            _write_roster(kit_dir, roster_bytes, sig)


def _result(
    out_dir: Path,
    roster: Roster,
    ca_cert: x509.Certificate,
    *,
    added: tuple[str, ...] = (),
    revoked: tuple[str, ...] = (),
) -> ProvisionResult:
    labs_dir = out_dir / "labs"
    kits = {e.name: labs_dir / e.name for e in roster.labs if (labs_dir / e.name).is_dir()}
    return ProvisionResult(
        out_dir=out_dir,
        federation=roster.federation,
        roster_version=roster.version,
        ca_cert_path=out_dir / "ca" / CA_CERT,
        ca_fingerprint=_fingerprint(ca_cert),
        server_kit=out_dir / "server",
        lab_kits=MappingProxyType(kits),
        added=added,
        revoked=revoked,
    )


@contextlib.contextmanager
def _ca_lock(out_dir: Path) -> Iterator[None]:
    """Serialise add_lab / revoke_lab on the same federation folder."""
    ca_dir = out_dir / "ca"
    if not ca_dir.is_dir():
        raise KitError(
            f"{ca_dir} not found: {out_dir} is not a provisioned federation folder; pass the "
            "--out folder given to `fedlab provision`"
        )
    fd = os.open(ca_dir / ".lock", os.O_RDWR | os.O_CREAT, _PRIVATE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- certificates


def _make_ca_cert(key: ec.EllipticCurvePrivateKey, federation: str) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
            x509.NameAttribute(NameOID.COMMON_NAME, "fedlab federation CA"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=_CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,  # the roster signature
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, _SIG_HASH)
    )


def _make_server_cert(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    federation: str,
    hosts: Sequence[str],
    valid_days: int,
) -> x509.Certificate:
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
            x509.NameAttribute(NameOID.COMMON_NAME, hosts[0][:64]),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(ca_key, _SIG_HASH)
    )


def _load_cert_file(path: Path, what: str) -> x509.Certificate:
    data = _read_required(path, what)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise KitError(
            f"{path} is not a PEM certificate ({exc}); copy it again from the coordinator"
        ) from exc


def _load_ca_cert(path: Path) -> x509.Certificate:
    """Load the federation CA certificate and check it is a usable CA."""
    cert = _load_cert_file(path, "the federation CA certificate; ask the coordinator for it")
    fix = "copy ca.crt again from the coordinator"
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise KitError(f"{path} is not a CA certificate (no CA:true); {fix}")
    public_key = cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, _CURVE
    ):
        raise KitError(f"{path} is not a fedlab federation CA (key is not ECDSA P-384); {fix}")
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise KitError(f"{path} is not a valid self-signed CA certificate ({exc}); {fix}") from exc
    _check_validity(cert, path, "the coordinator must provision a new federation (new CA)")
    _ca_federation(cert, path)
    return cert


def _ca_federation(cert: x509.Certificate, path: Path | None = None) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if len(attrs) != 1 or not isinstance(attrs[0].value, str):
        raise KitError(
            f"{path or 'the CA certificate'} does not name a federation; it is not a fedlab "
            "federation CA. Copy ca.crt again from the coordinator"
        )
    return attrs[0].value


def _load_server_cert(
    path: Path, ca_cert: x509.Certificate, ca_cert_path: Path
) -> x509.Certificate:
    cert = _load_cert_file(path, "the server's TLS certificate; ask the coordinator for it")
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise KitError(
            f"{path} is not issued by this federation's CA ({ca_cert_path}): the certificate "
            "is from another federation or was altered. Copy the server kit from the "
            "coordinator again"
        ) from exc
    _check_validity(cert, path, "ask the coordinator for a new server certificate")
    hosts = _san_strings(cert)
    if not hosts:
        raise KitError(
            f"{path} names no host (no subjectAltName); ask the coordinator for a "
            "new server certificate"
        )
    host = hosts[0]
    try:
        subject: Subject = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = x509.DNSName(host)
    verifier = PolicyBuilder().store(Store([ca_cert])).build_server_verifier(subject)
    try:
        verifier.verify(cert, [])
    except VerificationError as exc:
        raise KitError(
            f"{path} is not a valid TLS server certificate under {ca_cert_path} ({exc}); ask the "
            "coordinator for a new server certificate"
        ) from exc
    return cert


def _check_validity(cert: x509.Certificate, path: Path, fix: str) -> None:
    now = dt.datetime.now(dt.UTC)
    if now < cert.not_valid_before_utc - _CLOCK_SKEW:
        raise KitError(
            f"{path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check "
            "this machine's clock"
        )
    if now > cert.not_valid_after_utc:
        raise KitError(f"{path} expired on {cert.not_valid_after_utc:%Y-%m-%d} UTC; {fix}")
    if cert.not_valid_after_utc - now < _EXPIRY_WARNING:
        logger.warning(
            "%s expires on %s UTC; %s soon", path, f"{cert.not_valid_after_utc:%Y-%m-%d}", fix
        )


def _san_strings(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [
        *san.get_values_for_type(x509.DNSName),
        *(str(ip) for ip in san.get_values_for_type(x509.IPAddress)),
    ]


def _fingerprint(cert: x509.Certificate) -> str:
    digest = cert.fingerprint(hashes.SHA256())
    return "SHA256:" + ":".join(f"{b:02X}" for b in digest)


# --------------------------------------------------------------------------- keys


def _pkcs8_pem(key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _node_public_line(key: ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode("ascii")


def _canonical_node_public(line: str) -> str | None:
    """The canonical form of an OpenSSH P-384 public key line, or None if it is not one."""
    if not isinstance(line, str):
        return None
    parts = line.split()
    if len(parts) < 2 or parts[0] != _NODE_KEY_TYPE:
        return None
    try:
        key = serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode("ascii"))
    except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError):
        return None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, _CURVE):
        return None
    return _node_public_line(key)


def _node_pub_file(entry: LabEntry) -> bytes:
    return f"{entry.node_public_openssh} fedlab-lab:{entry.name}\n".encode("ascii")


def _entry_for(
    name: str, identity: Ed25519PrivateKey, node: ec.EllipticCurvePrivateKey
) -> LabEntry:
    return LabEntry(
        name=name,
        identity_public=_raw_public(identity.public_key()),
        node_public_openssh=_node_public_line(node.public_key()),
        revoked=False,
    )


def _load_identity_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KitError(
            f"{path} is not an unencrypted PEM private key; restore it from the kit the "
            "coordinator sent"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KitError(
            f"{path} is not an Ed25519 identity key; restore it from the kit the coordinator sent"
        )
    return key


def _load_identity_pub(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KitError(
            f"{path} is not a PEM public key; restore it from the kit the coordinator sent"
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KitError(
            f"{path} is not an Ed25519 public key; restore it from the kit the coordinator sent"
        )
    return key


def _load_node_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KitError(
            f"{path} is not an unencrypted OpenSSH private key (Flower needs the OpenSSH format, "
            "not PKCS8); restore it from the kit the coordinator sent"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, _CURVE):
        raise KitError(
            f"{path} is not an EC P-384 key; restore it from the kit the coordinator sent"
        )
    return key


def _read_node_pub(path: Path) -> str:
    line = _canonical_node_public(path.read_text("ascii", errors="replace"))
    if line is None:
        raise KitError(
            f"{path} is not an OpenSSH {_NODE_KEY_TYPE} public key; restore it from the kit the "
            "coordinator sent"
        )
    return line


def _load_ec_pem_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KitError(
            f"{path} is not an unencrypted PEM private key; restore it from the kit the "
            "coordinator sent"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, _CURVE):
        raise KitError(
            f"{path} is not an EC P-384 key; restore it from the kit the coordinator sent"
        )
    return key


# --------------------------------------------------------------------------- files


def _write_lab_kit(
    kit_dir: Path,
    *,
    name: str,
    federation: str,
    server_address: str,
    ca_pem: bytes,
    identity: Ed25519PrivateKey,
    node: ec.EllipticCurvePrivateKey,
    roster_bytes: bytes,
    roster_sig: bytes,
    config_text: str,
) -> None:
    _mkdir(kit_dir)
    _write_public(kit_dir / CA_CERT, ca_pem)
    _write_private(kit_dir / IDENTITY_KEY, _pkcs8_pem(identity))
    _write_public(
        kit_dir / IDENTITY_PUB,
        identity.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    _write_private(
        kit_dir / NODE_KEY,
        node.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    _write_public(
        kit_dir / NODE_PUB,
        f"{_node_public_line(node.public_key())} fedlab-lab:{name}\n".encode("ascii"),
    )
    _write_roster(kit_dir, roster_bytes, roster_sig)
    _write_public(kit_dir / FEDERATION_TOML, config_text.encode("utf-8"))
    lab_toml = (
        "# This lab's settings, written by `fedlab provision`.\n"
        f"name = {_toml_str(name)}\n"
        f"federation = {_toml_str(federation)}\n"
        f"server_address = {_toml_str(server_address)}\n"
    )
    _write_public(kit_dir / LAB_TOML, lab_toml.encode("utf-8"))
    _write_public(kit_dir / README, _lab_readme(name, federation, server_address).encode("utf-8"))


def _load_lab_toml(path: Path) -> dict[str, str]:
    try:
        doc = tomllib.loads(path.read_text("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise KitError(
            f"{path} is not valid TOML ({exc}); restore it from the kit the coordinator sent"
        ) from exc
    out: dict[str, str] = {}
    for key in ("name", "federation", "server_address"):
        value = doc.get(key)
        if not isinstance(value, str) or not value:
            raise KitError(
                f'{path} has no {key} = "..."; restore it from the kit the coordinator sent'
            )
        out[key] = value
    if not LAB_NAME_RE.match(out["name"]):
        raise KitError(
            f"{path}: {out['name']!r} is not a valid lab name; restore it from the "
            "kit the coordinator sent"
        )
    return out


def _check_toml(path: Path) -> None:
    try:
        tomllib.loads(path.read_text("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise KitError(
            f"{path} is not valid TOML ({exc}); copy it again from the coordinator"
        ) from exc


def _toml_str(value: str) -> str:
    # JSON string escapes (\", \\, \n, \uXXXX, ...) are valid TOML basic-string escapes.
    return json.dumps(value, ensure_ascii=True)


def _read_required(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise KitError(f"{path} is missing: {what}") from exc
    except IsADirectoryError as exc:
        raise KitError(f"{path} is a folder, expected a file: {what}") from exc
    except PermissionError as exc:
        raise KitError(
            f"{path} cannot be read (permission denied); run as the kit's owner"
        ) from exc


def _require_kit_dir(kit_dir: Path, what: str) -> None:
    if not kit_dir.is_dir():
        raise KitError(f"{kit_dir} is not a folder; pass the {what} folder the coordinator sent")


def _check_private_mode(path: Path) -> None:
    if os.name != "posix":
        return
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise KitError(f"{path} is not a regular file; restore it from the kit")
    if st.st_mode & 0o077:
        raise KitError(
            f"{path} is readable by other users (mode {stat.S_IMODE(st.st_mode):04o}); a "
            f"private key must be private: run `chmod 600 {path}`"
        )


def _write_roster(directory: Path, roster_bytes: bytes, sig: bytes) -> None:
    _write_public(directory / ROSTER_SIG, sig)
    _write_public(directory / ROSTER_JSON, roster_bytes)


def _write_private(path: Path, data: bytes) -> None:
    _write_atomic(path, data, _PRIVATE)


def _write_public(path: Path, data: bytes) -> None:
    _write_atomic(path, data, _PUBLIC)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` via a fresh temp file (created with ``mode``) and a rename."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, mode)
    try:
        try:
            os.fchmod(fd, mode)  # exact mode whatever the umask
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    pending = _PENDING_DIR_SYNCS.get()
    if pending is None:
        _fsync_dir(path.parent)
    else:
        pending.add(path.parent)


# Directories whose fsync is deferred to the end of a batch of writes (see _batched_dir_sync).
_PENDING_DIR_SYNCS: contextvars.ContextVar[set[Path] | None] = contextvars.ContextVar(
    "fedlab_pki_pending_dir_syncs", default=None
)


@contextlib.contextmanager
def _batched_dir_sync() -> Iterator[None]:
    """Within the block, fsync each written-to directory once at the end, not per file."""
    pending: set[Path] = set()
    token = _PENDING_DIR_SYNCS.set(pending)
    try:
        yield
    finally:
        _PENDING_DIR_SYNCS.reset(token)
        for directory in sorted(pending, key=lambda p: len(p.parts), reverse=True):
            _fsync_dir(directory)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _mkdir(path: Path) -> Path:
    path.mkdir(mode=_DIR_MODE, exist_ok=True)
    os.chmod(path, _DIR_MODE)
    pending = _PENDING_DIR_SYNCS.get()
    if pending is not None:
        pending.add(path.parent)
    return path


def _mkdtemp(parent: Path, prefix: str) -> str:
    return tempfile.mkdtemp(prefix=prefix, dir=parent)


# --------------------------------------------------------------------------- arguments


def _check_lab_name(name: str) -> None:
    if not isinstance(name, str) or not LAB_NAME_RE.match(name):
        raise ConfigError(
            f"lab name {name!r} is not valid: use 1-63 characters a-z, 0-9, '_' or '-', "
            "starting with a letter or digit"
        )


def _check_lab_names(labs: Sequence[str]) -> list[str]:
    if isinstance(labs, str):
        raise ConfigError("labs must be a list of lab names, not one string")
    names = list(labs)
    if not names:
        raise ConfigError("a federation needs at least one lab; list the labs in [labs]")
    seen: set[str] = set()
    for name in names:
        _check_lab_name(name)
        if name in seen:
            raise ConfigError(f"lab {name!r} is listed twice; lab names must be unique")
        seen.add(name)
    return names


def _check_federation_name(name: str) -> None:
    if not isinstance(name, str) or not FEDERATION_NAME_RE.match(name):
        raise ConfigError(
            f"federation name {name!r} is not valid: use 1-63 characters A-Z, a-z, 0-9, "
            "space, '.', '_' or '-', starting with a letter or digit"
        )


def _normalise_host(host: str) -> str:
    if not isinstance(host, str) or not host.strip():
        raise ConfigError(f"server host {host!r} is empty; give a DNS name or an IP address")
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
            raise ConfigError(
                f"server host {host!r}: scoped IPv6 addresses cannot go in a "
                "certificate; use the address without %scope"
            )
        return str(ip)
    name = text.lower().rstrip(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_DNS_LABEL_RE.match(label) for label in labels):
        raise ConfigError(
            f"server host {host!r} is neither an IP address nor a DNS name (letters, digits, "
            "'-' and dots; no port, no scheme)"
        )
    if labels[-1].isdigit():
        raise ConfigError(f"server host {host!r} looks like an IP address but is not one")
    return name


def _check_server_hosts(server_hosts: Sequence[str]) -> tuple[str, ...]:
    if isinstance(server_hosts, str):
        raise ConfigError("server_hosts must be a list of host names, not one string")
    hosts: list[str] = []
    for host in server_hosts:
        norm = _normalise_host(host)
        if norm not in hosts:
            hosts.append(norm)
    if not hosts:
        raise ConfigError(
            "server_hosts is empty: give the DNS names or IP addresses labs use "
            "to reach the aggregation host"
        )
    return tuple(hosts)


def _check_server_address(address: str, hosts: Sequence[str]) -> str:
    if not isinstance(address, str):
        raise ConfigError(f"server_address must be 'host:port', got {address!r}")
    text = address.strip()
    host, sep, port = text.rpartition(":")
    if text.startswith("[") and "]" in text:
        end = text.index("]")
        host, sep, port = text[: end + 1], text[end + 1 : end + 2], text[end + 2 :]
    bad_v6 = ":" in host and not host.startswith("[")
    if sep != ":" or not port.isdigit() or not 0 < int(port) < 65536 or not host or bad_v6:
        raise ConfigError(f"server_address {address!r} is not 'host:port' (IPv6 as '[addr]:port')")
    norm = _normalise_host(host)
    if norm not in hosts:
        raise ConfigError(
            f"server_address {address!r}: host {host!r} is not among the server hosts "
            f"({', '.join(hosts)}), so labs could not verify the server certificate; add it "
            "to the server hosts or use one of them"
        )
    shown = f"[{norm}]" if ":" in norm else norm
    return f"{shown}:{int(port)}"


def _check_valid_days(valid_days: int) -> None:
    if isinstance(valid_days, bool) or not isinstance(valid_days, int):
        raise ConfigError(f"valid_days must be a whole number of days, got {valid_days!r}")
    if not 1 <= valid_days <= _MAX_VALID_DAYS:
        raise ConfigError(f"valid_days must be between 1 and {_MAX_VALID_DAYS}, got {valid_days}")


def _check_config_text(config_text: str) -> None:
    if not isinstance(config_text, str):
        raise ConfigError("config_text must be the text of federation.toml")
    try:
        tomllib.loads(config_text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the federation config is not valid TOML ({exc})") from exc


# --------------------------------------------------------------------------- READMEs


def _server_readme(federation: str, hosts: Sequence[str]) -> str:
    return f"""# fedlab server kit: federation {federation}

This folder is everything the aggregation host needs. Start the server with:

    fedlab server <this folder>

- `server.pem` / `server.key`: the TLS certificate and key for {", ".join(hosts)}.
  `server.key` is private: keep it mode 600 and never share it.
- `ca.crt`: the federation CA; `roster.json` + `roster.sig`: the signed list of labs.
- `nodes/<lab>.pub`: the SuperNode keys of the active labs (registered at start).

When the coordinator adds or revokes a lab, replace `roster.json`, `roster.sig` and
`nodes/` with the new ones and restart the server.
"""


def _lab_readme(name: str, federation: str, server_address: str) -> str:
    return f"""# fedlab lab kit: lab {name} of federation {federation}

This folder lets lab `{name}` take part in federation `{federation}` (server
{server_address}). Your data never leaves this machine; only encrypted model updates do.
Start your lab's node with:

    fedlab client <this folder> --data <your file>

`identity.key` and `node.key` are this lab's private keys: keep them mode 600, never
copy, mail or share them. If they leak, ask the coordinator to revoke the lab.

When the coordinator adds or revokes a lab, replace `roster.json` and `roster.sig`
with the new ones they send.
"""
