"""Multi-host on one machine: the server and each lab in its own network namespace with
its own address, joined by a bridge; the kit is issued for the server's address (not
loopback), and a run completes over TLS between the namespaces."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.deploy.harness import (
    Proc,
    env_for,
    federation_toml,
    hospital_file,
    secure_ready,
    wait_no_leftovers,
)

pytestmark = pytest.mark.slow

LABS = ("cleveland", "hungary")
SUBNET = "10.213.77"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _cannot_make_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` tool (iproute2) is not installed"
    probe = f"flprobe{os.getpid()}"
    res = _ip("netns", "add", probe, check=False)
    if res.returncode != 0:
        return f"cannot create a network namespace: {res.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    res = _ip("link", "add", f"flp{os.getpid() % 100000}", "type", "veth", "peer", "name",
              f"flq{os.getpid() % 100000}", check=False)
    if res.returncode != 0:
        return f"cannot create veth pairs: {res.stderr.strip()}"
    _ip("link", "del", f"flp{os.getpid() % 100000}", check=False)
    return None


@pytest.fixture
def namespaces():
    reason = _cannot_make_namespaces()
    if reason:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:6]
    hub = f"flhub-{tag}"
    names = {"server": f"flsrv-{tag}", **{lab: f"fl{lab[:3]}-{tag}" for lab in LABS}}
    addrs = {"server": f"{SUBNET}.1", **{lab: f"{SUBNET}.{11 + i}" for i, lab in enumerate(LABS)}}
    created: list[str] = []
    try:
        _ip("netns", "add", hub)
        created.append(hub)
        _ip("-n", hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", hub, "link", "set", "br0", "up")
        for i, (role, ns) in enumerate(names.items()):
            _ip("netns", "add", ns)
            created.append(ns)
            inner, outer = f"fl{tag}i{i}", f"fl{tag}o{i}"
            _ip("link", "add", inner, "type", "veth", "peer", "name", outer)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "netns", hub)
            _ip("-n", hub, "link", "set", outer, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{addrs[role]}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield names, addrs
    finally:
        for ns in reversed(created):
            _ip("netns", "del", ns, check=False)


def test_server_and_labs_in_their_own_network_namespaces(namespaces, tmp_path):
    names, addrs = namespaces
    env = env_for(tmp_path)
    address = f"{addrs['server']}:9092"
    (tmp_path / "federation.toml").write_text(
        federation_toml(address, labs=LABS, secure=secure_ready(), rounds=2,
                        hosts=[addrs["server"]]))
    fed = tmp_path / "federation"
    prov = Proc("provision", ["provision", str(tmp_path / "federation.toml"), "--out", str(fed)],
                tmp_path / "provision.log", env)
    assert prov.wait(120) == 0, prov.text()

    procs: list[Proc] = []
    try:
        server = Proc("server", ["server", str(fed / "server"), "--out", str(tmp_path / "runs"),
                                 "--timeout", "600"],
                      tmp_path / "server.log", env, prefix=["ip", "netns", "exec", names["server"]])
        procs.append(server)
        server.wait_for(r"labs connect to " + address.replace(".", r"\."), 240)
        assert "listening on 0.0.0.0:9092" in server.text()
        for lab in LABS:
            data = hospital_file(tmp_path / "data" / lab, lab)
            procs.append(Proc(lab, ["client", str(fed / "labs" / lab), "--data", str(data),
                                    "--runs", "1"], tmp_path / f"{lab}.log", env,
                              prefix=["ip", "netns", "exec", names[lab]]))
        assert server.wait(600) == 0, server.text()[-3000:]
        for proc in procs[1:]:
            assert proc.wait(120) == 0, proc.text()[-3000:]
            assert f"connected to the server at {address}" in proc.text()
        run_dir = Path(server.text().strip().splitlines()[-1])
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["rounds_completed"] == 2
        assert set(summary["labs"]) == set(LABS)
    finally:
        for proc in procs:
            proc.stop()
    left = wait_no_leftovers(str(tmp_path))
    assert not left, "processes left behind:\n" + "\n".join(left)
