"""Tests of fedlab.pki: real keys, real certificates, real TLS handshakes on loopback."""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fedlab import pki
from fedlab.errors import ConfigError, KitError

LABS = ["hospital-a", "hospital-b", "clinic_c", "lab4"]
HOSTS = ["fl.example.org", "127.0.0.1", "::1"]
ADDRESS = "fl.example.org:9092"
CONFIG = 'federation = "heart"\n[labs]\nnames = ["hospital-a"]\n'
LAB_FILES = [
    "ca.crt",
    "identity.key",
    "identity.pub",
    "node.key",
    "node.pub",
    "roster.json",
    "roster.sig",
    "federation.toml",
    "lab.toml",
]
SERVER_FILES = ["ca.crt", "server.pem", "server.key", "roster.json", "roster.sig"]


def _provision(out: Path, federation: str = "heart", **kwargs) -> pki.ProvisionResult:
    args = {
        "federation": federation,
        "labs": LABS,
        "server_hosts": HOSTS,
        "server_address": ADDRESS,
        "config_text": CONFIG,
    }
    args.update(kwargs)
    return pki.provision(out, **args)


@pytest.fixture
def fed(tmp_path: Path) -> Path:
    out = tmp_path / "fed"
    _provision(out)
    return out


def _private_key_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes())


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- layout, modes


def test_layout_and_private_key_modes(fed: Path) -> None:
    expected = {fed / "ca" / "ca.key", fed / "server" / "server.key"}
    for lab in LABS:
        expected |= {fed / "labs" / lab / "identity.key", fed / "labs" / lab / "node.key"}
    # Every file holding a private key is one we expect, and each is 0600.
    assert set(_private_key_files(fed)) == expected
    for path in expected:
        assert _mode(path) == 0o600, path
    for d in [fed / "ca", fed / "server", *(fed / "labs" / lab for lab in LABS)]:
        assert _mode(d) == 0o700, d
    for lab in LABS:
        kit = fed / "labs" / lab
        for name in LAB_FILES:
            assert (kit / name).is_file(), kit / name
        assert "fedlab client" in (kit / "README.md").read_text()
        assert (kit / "federation.toml").read_text() == CONFIG
        assert _mode(kit / "identity.pub") == 0o644
    server = fed / "server"
    for name in SERVER_FILES:
        assert (server / name).is_file()
    assert "fedlab server" in (server / "README.md").read_text()
    assert (server / "federation.toml").read_text() == CONFIG
    assert sorted(p.name for p in (server / "nodes").iterdir()) == sorted(
        f"{lab}.pub" for lab in LABS
    )
    # No temporary or staging leftovers.
    leftovers = [p for p in fed.rglob(".*") if p.name != ".lock"]
    assert leftovers == []


def test_private_keys_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        _provision(tmp_path / "fed")
    finally:
        os.umask(old)
    for path in _private_key_files(tmp_path / "fed"):
        assert _mode(path) == 0o600, path
    assert _mode(tmp_path / "fed" / "ca") == 0o700


def test_lab_toml_holds_name_and_server_address(fed: Path) -> None:
    import tomllib

    doc = tomllib.loads((fed / "labs" / "clinic_c" / "lab.toml").read_text())
    assert doc == {"name": "clinic_c", "federation": "heart", "server_address": ADDRESS}


# --------------------------------------------------------------------------- certificates


def test_ca_certificate(fed: Path) -> None:
    ca = _cert(fed / "ca" / "ca.crt")
    assert ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    pub = ca.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp384r1"
    key = serialization.load_pem_private_key((fed / "ca" / "ca.key").read_bytes(), None)
    assert key.public_key() == pub
    for lab in LABS:
        assert (fed / "labs" / lab / "ca.crt").read_bytes() == (fed / "ca" / "ca.crt").read_bytes()


def test_server_certificate_chains_to_ca_with_sans(fed: Path) -> None:
    ca = _cert(fed / "server" / "ca.crt")
    cert = _cert(fed / "server" / "server.pem")
    # Signature checked by hand with the CA public key.
    ca_pub = ca.public_key()
    assert isinstance(ca_pub, ec.EllipticCurvePublicKey)
    ca_pub.verify(
        cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
    )
    assert cert.issuer == ca.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    assert ips == ["127.0.0.1", "::1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=825) <= lifetime <= dt.timedelta(days=825, hours=1)
    key = serialization.load_pem_private_key((fed / "server" / "server.key").read_bytes(), None)
    assert key.public_key() == cert.public_key()
    # A standard RFC 5280 path validation accepts it for every host, and only for them.
    for subject in (
        x509.DNSName("fl.example.org"),
        x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1")),
        x509.IPAddress(__import__("ipaddress").ip_address("::1")),
    ):
        PolicyBuilder().store(Store([ca])).build_server_verifier(subject).verify(cert, [])
    with pytest.raises(VerificationError):
        verifier = (
            PolicyBuilder()
            .store(Store([ca]))
            .build_server_verifier(x509.DNSName("evil.example.org"))
        )
        verifier.verify(cert, [])


def test_valid_days_is_honoured(tmp_path: Path) -> None:
    _provision(tmp_path / "fed", valid_days=30)
    cert = _cert(tmp_path / "fed" / "server" / "server.pem")
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=30) <= lifetime <= dt.timedelta(days=30, hours=1)


def _tls_handshake(server_kit: Path, ca_file: Path, server_hostname: str) -> str:
    """Handshake through real sockets on loopback; returns the negotiated TLS version."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(server_kit / "server.pem", server_kit / "server.key")
    client_ctx = ssl.create_default_context(cafile=str(ca_file))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    port = listener.getsockname()[1]
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(5)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                assert tls.recv(2) == b"ok"
                return str(tls.version())
    finally:
        thread.join(5)
        listener.close()


def test_tls_handshake_with_the_kits(fed: Path, tmp_path: Path) -> None:
    lab_ca = fed / "labs" / "hospital-a" / "ca.crt"
    assert _tls_handshake(fed / "server", lab_ca, "fl.example.org").startswith("TLS")
    assert _tls_handshake(fed / "server", lab_ca, "127.0.0.1").startswith("TLS")
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_handshake(fed / "server", lab_ca, "other.example.org")
    other = tmp_path / "other"
    _provision(other, federation="other")
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_handshake(fed / "server", other / "labs" / "lab4" / "ca.crt", "fl.example.org")


# --------------------------------------------------------------------------- node keys


def test_node_keys_are_openssh_p384(fed: Path) -> None:
    for lab in LABS:
        kit = fed / "labs" / lab
        data = (kit / "node.key").read_bytes()
        assert data.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        key = serialization.load_ssh_private_key(data, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.curve.name == "secp384r1" and key.key_size == 384
        pub = serialization.load_ssh_public_key((kit / "node.pub").read_bytes())
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        assert pub == key.public_key()
        assert (kit / "node.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
        server_pub = serialization.load_ssh_public_key(
            (fed / "server" / "nodes" / f"{lab}.pub").read_bytes()
        )
        assert server_pub == pub
        # Flower signs with this key; a signature made with it verifies with node.pub.
        sig = key.sign(b"hello", ec.ECDSA(hashes.SHA256()))
        pub.verify(sig, b"hello", ec.ECDSA(hashes.SHA256()))


# --------------------------------------------------------------------------- roster


def test_roster_verifies_and_identity_keys_match(fed: Path) -> None:
    roster = pki.load_roster(fed / "server" / "roster.json", fed / "server" / "ca.crt")
    assert roster.federation == "heart" and roster.version == 1
    assert [e.name for e in roster.labs] == LABS
    assert roster.active() == roster.labs
    keys = roster.identity_keys()
    assert sorted(keys) == sorted(LABS)
    for lab in LABS:
        kit = fed / "labs" / lab
        identity = serialization.load_pem_private_key((kit / "identity.key").read_bytes(), None)
        assert isinstance(identity, Ed25519PrivateKey)
        keys[lab].verify(identity.sign(b"msg"), b"msg")
        assert pki.load_roster(kit / "roster.json", kit / "ca.crt") == roster
    # Distinct keys for every lab.
    assert len({e.identity_public for e in roster.labs}) == len(LABS)
    assert len({e.node_public_openssh for e in roster.labs}) == len(LABS)
    # Canonical bytes round-trip exactly.
    assert roster.to_bytes() == (fed / "server" / "roster.json").read_bytes()


def test_roster_rejects_bad_entries() -> None:
    good = pki.LabEntry(
        name="a",
        identity_public=bytes(32),
        node_public_openssh=ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode(),
        revoked=False,
    )
    with pytest.raises(ConfigError, match="'a' appears twice"):
        pki.Roster(federation="f", version=1, labs=(good, good))
    with pytest.raises(ConfigError, match="32-byte"):
        pki.LabEntry("b", bytes(31), good.node_public_openssh, False)
    p256 = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    with pytest.raises(ConfigError, match="nistp384"):
        pki.LabEntry("b", bytes(32), p256, False)
    with pytest.raises(ConfigError, match="lab name"):
        pki.LabEntry("Bad Name", bytes(32), good.node_public_openssh, False)
    with pytest.raises(ConfigError, match="version"):
        pki.Roster(federation="f", version=0, labs=(good,))


def test_tampered_roster_fails(fed: Path) -> None:
    kit = fed / "labs" / "hospital-a"
    data = (kit / "roster.json").read_bytes()
    assert b'"revoked":false' in data
    (kit / "roster.json").write_bytes(data.replace(b'"revoked":false', b'"revoked":true', 1))
    with pytest.raises(KitError, match="not signed by this federation's CA"):
        pki.load_roster(kit / "roster.json", kit / "ca.crt")
    with pytest.raises(KitError, match="roster.json"):
        pki.load_lab_kit(kit)


def test_tampered_signature_fails(fed: Path) -> None:
    kit = fed / "labs" / "hospital-b"
    sig = bytearray(base64.b64decode((kit / "roster.sig").read_bytes()))
    sig[-1] ^= 1
    (kit / "roster.sig").write_bytes(base64.b64encode(bytes(sig)))
    with pytest.raises(KitError, match="not signed by this federation's CA"):
        pki.load_roster(kit / "roster.json", kit / "ca.crt")
    (kit / "roster.sig").write_text("not base64 !!")
    with pytest.raises(KitError, match=r"roster\.sig"):
        pki.load_roster(kit / "roster.json", kit / "ca.crt")


def test_signed_but_non_canonical_roster_is_refused(fed: Path) -> None:
    ca_key = serialization.load_pem_private_key((fed / "ca" / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    kit = fed / "labs" / "lab4"
    import json

    pretty = json.dumps(json.loads((kit / "roster.json").read_bytes()), indent=2).encode()
    sig = ca_key.sign(b"fedlab roster v1\x00" + pretty, ec.ECDSA(hashes.SHA384()))
    (kit / "roster.json").write_bytes(pretty)
    (kit / "roster.sig").write_bytes(base64.b64encode(sig))
    with pytest.raises(KitError, match="canonical"):
        pki.load_roster(kit / "roster.json", kit / "ca.crt")


def test_roster_signature_is_domain_separated(fed: Path) -> None:
    """The CA key signs the roster under a prefix, never the bare bytes."""
    ca = _cert(fed / "ca" / "ca.crt")
    data = (fed / "server" / "roster.json").read_bytes()
    sig = base64.b64decode((fed / "server" / "roster.sig").read_bytes())
    pub = ca.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    pub.verify(sig, b"fedlab roster v1\x00" + data, ec.ECDSA(hashes.SHA384()))
    with pytest.raises(InvalidSignature):
        pub.verify(sig, data, ec.ECDSA(hashes.SHA384()))


def test_missing_roster_signature_is_named(fed: Path) -> None:
    kit = fed / "labs" / "lab4"
    (kit / "roster.sig").unlink()
    with pytest.raises(KitError, match=r"roster\.sig"):
        pki.load_roster(kit / "roster.json", kit / "ca.crt")


def test_foreign_federation_fails(fed: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    _provision(other, federation="heart")  # same name, other CA: still foreign
    ca = fed / "server" / "ca.crt"
    with pytest.raises(KitError, match="another federation"):
        pki.load_roster(other / "server" / "roster.json", ca)
    # A lab kit with a foreign roster copied in.
    kit = fed / "labs" / "hospital-a"
    shutil.copy(other / "labs" / "hospital-a" / "roster.json", kit / "roster.json")
    shutil.copy(other / "labs" / "hospital-a" / "roster.sig", kit / "roster.sig")
    with pytest.raises(KitError, match="another federation"):
        pki.load_lab_kit(kit)
    # A server kit with a foreign CA: its certificate no longer chains.
    shutil.copy(other / "server" / "ca.crt", fed / "server" / "ca.crt")
    with pytest.raises(KitError, match="not issued by this federation's CA"):
        pki.load_server_kit(fed / "server")


def test_foreign_lab_keys_fail(fed: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    _provision(other)
    kit = fed / "labs" / "clinic_c"
    shutil.copy(other / "labs" / "clinic_c" / "identity.key", kit / "identity.key")
    with pytest.raises(KitError, match=r"identity\.key does not match lab 'clinic_c'"):
        pki.load_lab_kit(kit)


# --------------------------------------------------------------------------- kits


def test_load_lab_kit(fed: Path, tmp_path: Path) -> None:
    # Kits are self-contained: a copy elsewhere loads.
    kit_dir = tmp_path / "elsewhere" / "kit"
    shutil.copytree(fed / "labs" / "hospital-b", kit_dir)
    kit = pki.load_lab_kit(kit_dir)
    assert kit.name == "hospital-b" and kit.federation == "heart"
    assert kit.server_address == ADDRESS
    assert kit.roster.version == 1
    assert kit.node_key_path == kit_dir / "node.key"
    assert kit.ca_cert_path == kit_dir / "ca.crt"
    assert kit.entry.name == "hospital-b"
    kit.roster.identity_keys()["hospital-b"].verify(kit.identity_key.sign(b"m"), b"m")


def test_load_server_kit(fed: Path) -> None:
    kit = pki.load_server_kit(fed / "server")
    assert kit.federation == "heart"
    assert kit.server_hosts == ("fl.example.org", "127.0.0.1", "::1")
    assert dict(kit.node_pub_paths) == {
        lab: fed / "server" / "nodes" / f"{lab}.pub" for lab in LABS
    }
    assert kit.cert_path.name == "server.pem" and kit.key_path.name == "server.key"
    assert kit.cert_not_after > dt.datetime.now(dt.UTC) + dt.timedelta(days=800)


def test_server_key_must_match_certificate(fed: Path) -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    path = fed / "server" / "server.key"
    path.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KitError, match=r"server\.key is not the key of .*server\.pem"):
        pki.load_server_kit(fed / "server")


def test_missing_file_is_named(fed: Path) -> None:
    """Each required file, removed in turn, is named in the error (then put back)."""
    cases = [(fed / "labs" / "hospital-a", name, pki.load_lab_kit) for name in LAB_FILES]
    cases += [
        (fed / "server", name, pki.load_server_kit)
        for name in [*SERVER_FILES, "federation.toml", "nodes/lab4.pub"]
    ]
    for kit, name, loader in cases:
        path = kit / name
        saved = path.read_bytes()
        path.unlink()
        with pytest.raises(KitError) as info:
            loader(kit)
        assert name in str(info.value), (name, str(info.value))
        assert str(path) in str(info.value), (name, str(info.value))
        path.write_bytes(saved)
        path.chmod(0o600)
        loader(kit)


def test_readable_private_key_is_refused(fed: Path) -> None:
    cases = [
        (fed / "labs" / "hospital-a", "identity.key", pki.load_lab_kit),
        (fed / "labs" / "hospital-a", "node.key", pki.load_lab_kit),
        (fed / "server", "server.key", pki.load_server_kit),
    ]
    for kit, name, loader in cases:
        path = kit / name
        for mode in (0o644, 0o640, 0o604):
            path.chmod(mode)
            with pytest.raises(KitError, match=r"chmod 600") as info:
                loader(kit)
            assert str(path) in str(info.value)
        path.chmod(0o600)
        loader(kit)


def test_pkcs8_node_key_is_refused(fed: Path) -> None:
    kit = fed / "labs" / "lab4"
    key = serialization.load_ssh_private_key((kit / "node.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    (kit / "node.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KitError, match="OpenSSH"):
        pki.load_lab_kit(kit)


def test_expired_ca_is_refused(fed: Path) -> None:
    ca_key = serialization.load_pem_private_key((fed / "ca" / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = _cert(fed / "ca" / "ca.crt")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    builder = (
        x509.CertificateBuilder()
        .subject_name(ca.subject)
        .issuer_name(ca.subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(past - dt.timedelta(days=100))
        .not_valid_after(past)
    )
    for ext in ca.extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    expired = builder.sign(ca_key, hashes.SHA384())
    kit = fed / "labs" / "hospital-a"
    (kit / "ca.crt").write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(KitError, match=r"ca\.crt .*expired"):
        pki.load_lab_kit(kit)


def test_non_ca_certificate_is_refused(fed: Path) -> None:
    kit = fed / "labs" / "hospital-a"
    shutil.copy(fed / "server" / "server.pem", kit / "ca.crt")
    with pytest.raises(KitError, match="not a CA certificate"):
        pki.load_lab_kit(kit)


# --------------------------------------------------------------------------- add / revoke


def _snapshot(root: Path) -> dict[Path, bytes]:
    names = {
        "identity.key",
        "identity.pub",
        "node.key",
        "node.pub",
        "ca.crt",
        "ca.key",
        "server.key",
        "server.pem",
    }
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name in names}


def test_add_lab_issues_one_kit_and_roster_v2(fed: Path) -> None:
    before = _snapshot(fed)
    result = pki.add_lab(fed, "newlab")
    assert result.added == ("newlab",) and result.roster_version == 2
    assert sorted(result.lab_kits) == sorted([*LABS, "newlab"])
    # Nobody was re-keyed: every key and certificate that existed is byte-identical.
    after = _snapshot(fed)
    assert {p: after[p] for p in before} == before
    new_files = set(after) - set(before)
    assert {p.parent.name for p in new_files} == {"newlab"}
    # Every kit holds roster v2, and still loads.
    kit = pki.load_lab_kit(fed / "labs" / "newlab")
    assert kit.roster.version == 2 and kit.name == "newlab"
    assert kit.server_address == ADDRESS
    for lab in LABS:
        loaded = pki.load_lab_kit(fed / "labs" / lab)
        assert loaded.roster == kit.roster
    server = pki.load_server_kit(fed / "server")
    assert server.roster.version == 2
    assert "newlab" in server.node_pub_paths
    assert pki.load_roster(fed / "ca" / "roster.json", fed / "ca" / "ca.crt").version == 2
    for path in _private_key_files(fed / "labs" / "newlab"):
        assert _mode(path) == 0o600


def test_add_lab_with_other_server_address(fed: Path) -> None:
    pki.add_lab(fed, "lab5", server_address="127.0.0.1:9100")
    assert pki.load_lab_kit(fed / "labs" / "lab5").server_address == "127.0.0.1:9100"
    with pytest.raises(ConfigError, match="not among the server hosts"):
        pki.add_lab(fed, "lab6", server_address="10.0.0.1:9100")


def test_add_lab_refuses_duplicate_and_bad_names(fed: Path) -> None:
    with pytest.raises(ConfigError, match="'hospital-a'"):
        pki.add_lab(fed, "hospital-a")
    with pytest.raises(ConfigError, match="'Bad Lab'"):
        pki.add_lab(fed, "Bad Lab")
    with pytest.raises(KitError, match="not a provisioned federation"):
        pki.add_lab(fed / "nowhere", "x")
    # Nothing changed.
    assert pki.load_roster(fed / "ca" / "roster.json", fed / "ca" / "ca.crt").version == 1


def test_revoke_lab(fed: Path) -> None:
    result = pki.revoke_lab(fed, "clinic_c")
    assert result.revoked == ("clinic_c",) and result.roster_version == 2
    roster = pki.load_roster(fed / "server" / "roster.json", fed / "server" / "ca.crt")
    assert roster.get("clinic_c") is not None and roster.get("clinic_c").revoked
    assert "clinic_c" not in [e.name for e in roster.active()]
    assert "clinic_c" not in roster.identity_keys()
    assert len(roster.active()) == 3
    with pytest.raises(KitError, match="revoked"):
        pki.load_lab_kit(fed / "labs" / "clinic_c")
    server = pki.load_server_kit(fed / "server")
    assert "clinic_c" not in server.node_pub_paths
    assert not (fed / "server" / "nodes" / "clinic_c.pub").exists()
    assert pki.load_lab_kit(fed / "labs" / "hospital-a").roster.version == 2
    with pytest.raises(ConfigError, match="'clinic_c' is already revoked"):
        pki.revoke_lab(fed, "clinic_c")
    with pytest.raises(ConfigError, match="'nobody'"):
        pki.revoke_lab(fed, "nobody")
    with pytest.raises(ConfigError, match="'clinic_c'"):
        pki.add_lab(fed, "clinic_c")


def test_server_kit_refuses_stale_node_key_of_revoked_lab(fed: Path) -> None:
    stale = (fed / "server" / "nodes" / "lab4.pub").read_bytes()
    pki.revoke_lab(fed, "lab4")
    (fed / "server" / "nodes" / "lab4.pub").write_bytes(stale)
    with pytest.raises(KitError, match=r"lab4\.pub .*revoked"):
        pki.load_server_kit(fed / "server")


def test_old_roster_of_the_same_federation_still_verifies(fed: Path, tmp_path: Path) -> None:
    """Rollback is the caller's job (keep the highest version seen): both versions verify."""
    old_json = (fed / "server" / "roster.json").read_bytes()
    old_sig = (fed / "server" / "roster.sig").read_bytes()
    pki.add_lab(fed, "lab5")
    new = pki.load_roster(fed / "server" / "roster.json", fed / "server" / "ca.crt")
    assert new.version == 2 and new.get("lab5") is not None
    (tmp_path / "roster.json").write_bytes(old_json)
    (tmp_path / "roster.sig").write_bytes(old_sig)
    old = pki.load_roster(tmp_path / "roster.json", fed / "server" / "ca.crt")
    assert old.version == 1 and old.get("lab5") is None


# --------------------------------------------------------------------------- arguments


def test_refuses_to_overwrite_without_force(fed: Path) -> None:
    fp = pki.load_roster(fed / "ca" / "roster.json", fed / "ca" / "ca.crt")
    with pytest.raises(KitError, match="--force"):
        _provision(fed)
    assert pki.load_roster(fed / "ca" / "roster.json", fed / "ca" / "ca.crt") == fp
    old_ca = (fed / "ca" / "ca.crt").read_bytes()
    result = _provision(fed, labs=["only"], force=True)
    assert (fed / "ca" / "ca.crt").read_bytes() != old_ca
    assert sorted(p.name for p in (fed / "labs").iterdir()) == ["only"]
    assert result.roster_version == 1
    pki.load_lab_kit(fed / "labs" / "only")
    assert [p for p in fed.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labs": ["ok", "Not-OK"]}, "'Not-OK'"),
        ({"labs": ["a", "a"]}, "'a' is listed twice"),
        ({"labs": []}, "at least one lab"),
        ({"labs": ["x" * 64]}, "is not valid"),
        ({"server_hosts": []}, "server_hosts is empty"),
        ({"server_hosts": ["fl.example.org:9092"]}, "neither an IP address nor a DNS name"),
        ({"server_hosts": ["https://fl.example.org"]}, "neither an IP address"),
        ({"server_address": "other.example.org:9092"}, "not among the server hosts"),
        ({"server_address": "fl.example.org"}, "not 'host:port'"),
        ({"server_address": "::1:9092"}, "not 'host:port'"),
        ({"valid_days": 0}, "valid_days"),
        ({"valid_days": 10_000}, "valid_days"),
        ({"config_text": "not = [toml"}, "not valid TOML"),
        ({"federation": ""}, "federation name"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _provision(tmp_path / "fed", **kwargs)
    assert not (tmp_path / "fed" / "ca").exists()


def test_ipv6_server_address(tmp_path: Path) -> None:
    _provision(tmp_path / "fed", server_address="[::1]:9092")
    assert pki.load_lab_kit(tmp_path / "fed" / "labs" / "lab4").server_address == "[::1]:9092"


# --------------------------------------------------------------------------- secrecy


def _secret_fragments(root: Path) -> list[str]:
    """Pieces of every private key under root, as they could leak into text."""
    fragments: list[str] = []
    for path in _private_key_files(root):
        text = path.read_text()
        body = [line for line in text.splitlines() if line and not line.startswith("-----")]
        fragments += [line for line in body if len(line) >= 16]
        fragments.append("".join(body))
        key = (
            serialization.load_ssh_private_key(path.read_bytes(), None)
            if "OPENSSH" in text
            else serialization.load_pem_private_key(path.read_bytes(), None)
        )
        if isinstance(key, Ed25519PrivateKey):
            raw = key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
        else:
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            raw = key.private_numbers().private_value.to_bytes(48, "big")
        fragments += [raw.hex(), raw.hex().upper(), base64.b64encode(raw).decode(), repr(raw)]
        fragments.append(str(int.from_bytes(raw, "big")))
    return fragments


def test_no_private_key_material_in_logs_or_reprs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "fed"
    texts = [
        repr(_provision(out)),
        repr(pki.add_lab(out, "lab5")),
        repr(pki.revoke_lab(out, "lab4")),
    ]
    lab_kit = pki.load_lab_kit(out / "labs" / "hospital-a")
    texts += [repr(lab_kit), str(lab_kit), repr(pki.load_server_kit(out / "server"))]
    (out / "labs" / "lab5" / "node.key").chmod(0o644)
    with pytest.raises(KitError) as info:
        pki.load_lab_kit(out / "labs" / "lab5")
    texts.append(str(info.value))
    assert caplog.records, "expected the operations to log"
    texts.append(caplog.text)
    texts += [r.getMessage() for r in caplog.records]
    joined = "\n".join(texts)
    fragments = _secret_fragments(out)
    assert len(fragments) > 40
    for fragment in fragments:
        assert fragment not in joined


def test_generate_identity() -> None:
    a, b = pki.generate_identity(), pki.generate_identity()
    assert isinstance(a, Ed25519PrivateKey)
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert a.public_key().public_bytes(*raw) != b.public_key().public_bytes(*raw)
    a.public_key().verify(a.sign(b"x"), b"x")


def test_import_is_light() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); import fedlab.pki; "
        "d = time.perf_counter() - t; "
        "heavy = [m for m in ('flwr', 'tensorflow', 'keras', 'numpy') if m in sys.modules]; "
        "assert not heavy, heavy; assert d < 1.0, d"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_flower_accepts_the_node_keys(fed: Path) -> None:
    """Flower 1.42's own loaders: `flwr supernode register` and `--auth-supernode-private-key`."""
    pytest.importorskip("flwr")
    import argparse

    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    kit = fed / "labs" / "hospital-a"
    registered = try_load_public_key(fed / "server" / "nodes" / "hospital-a.pub")
    args = argparse.Namespace(
        auth_supernode_private_key=str(kit / "node.key"), auth_supernode_public_key=None
    )
    auth = _try_setup_client_authentication(args)
    assert auth is not None
    private, public = auth
    assert (
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == registered
    )
