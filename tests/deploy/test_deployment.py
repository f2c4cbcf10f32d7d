"""A real deployment on loopback: `fedlab server` and four `fedlab client` processes over
TLS with SuperNode authentication; refusals (unregistered, revoked, other federation),
a lab killed mid-run that rejoins, a server restart the labs survive, nothing left behind.

The tests of this module share one provisioned federation and its running labs (TensorFlow
start-ups are the slow part), so they run in file order.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest

from fedlab.launch import free_port
from fedlab.pki import load_lab_kit
from tests.deploy.harness import (
    HOSPITALS,
    Proc,
    env_for,
    federation_toml,
    hospital_file,
    secure_ready,
    wait_no_leftovers,
)

pytestmark = pytest.mark.slow

SECURE = secure_ready()


class Deployment:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = env_for(root)
        self.address = f"127.0.0.1:{free_port()}"
        (root / "federation.toml").write_text(
            federation_toml(self.address, secure=SECURE, stage_timeout=60))
        self.fed = root / "federation"
        self.labs: dict[str, Proc] = {}
        self.n = 0
        p = self.run(["provision", str(root / "federation.toml"), "--out", str(self.fed)])
        assert p.wait(120) == 0, p.text()
        assert "CA fingerprint" in p.text()
        assert "PRIVATE KEY" not in p.text()

    def run(self, args: list[str], name: str = "cmd") -> Proc:
        self.n += 1
        return Proc(name, args, self.root / f"{self.n:02d}-{name}.log", self.env)

    def server(self, *extra: str) -> Proc:
        return self.run(["server", str(self.fed / "server"), "--out", str(self.root / "runs"),
                         *extra], "server")

    def lab(self, name: str, kit: Path | None = None, data_of: str | None = None,
            *extra: str) -> Proc:
        data = hospital_file(self.root / "data" / name, data_of or name)
        return self.run(["client", str(kit or self.fed / "labs" / name), "--data", str(data),
                         *extra], f"lab-{name}")

    def stop_all(self) -> None:
        for proc in self.labs.values():
            proc.stop()


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    d = Deployment(tmp_path_factory.mktemp("dep"))
    yield d
    d.stop_all()
    left = wait_no_leftovers(str(d.root))
    assert not left, "processes left behind:\n" + "\n".join(left)


def _summary(server: Proc) -> tuple[Path, dict]:
    run_dir = Path(server.text().strip().splitlines()[-1])
    return run_dir, json.loads((run_dir / "summary.json").read_text())


def _rounds(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    return [r for r in rows if r["kind"] == "round"]


def test_four_labs_refusals_dropout_and_rejoin(dep):
    rounds = 5  # round 1, va's dropped round, its rejoin and a round after it
    server = dep.server("--rounds", str(rounds), "--timeout", "900")
    server.wait_for(r"4 lab keys registered", 240)

    # A lab whose kit is signed by this federation's CA but that is not in the roster the
    # server runs with (issued from a copy of the coordinator's folder): its node key is
    # not registered with this server.
    forged = dep.root / "forged"
    shutil.copytree(dep.fed, forged, ignore=shutil.ignore_patterns("state"))
    add = dep.run(["provision", "--out", str(forged), "--add-lab", "intruder"], "add-lab")
    assert add.wait(60) == 0, add.text()
    # A kit of another federation (own CA, own keys) for the same address.
    other = dep.root / "other"
    other.mkdir()
    (other / "federation.toml").write_text(federation_toml(dep.address, name="other-fed"))
    p = dep.run(["provision", str(other / "federation.toml"), "--out", str(other / "fed")])
    assert p.wait(60) == 0, p.text()

    for h in HOSPITALS:
        dep.labs[h] = dep.lab(h)
    server.wait_for(r"round \d+/\d+ done", 600)

    # Kill one lab (SIGKILL of `fedlab client`: its worker and SuperNode follow it) while
    # two labs the server does not know try to join.
    dep.labs["va"].stop(signal.SIGKILL)
    intruder = dep.lab("intruder", kit=forged / "labs" / "intruder", data_of="cleveland")
    foreign = dep.lab("cleveland", kit=other / "fed" / "labs" / "cleveland")
    server.wait_for(r"dropped: [a-z, ]*va", 180)
    dep.labs["va"] = dep.lab("va")  # the lab comes back and rejoins the same run

    assert intruder.wait(240) == 3, intruder.text()
    assert "not registered at the server" in intruder.text()
    assert "Traceback" not in intruder.text()
    assert foreign.wait(240) == 3, foreign.text()
    assert "does not trust" in foreign.text() and "another federation" in foreign.text()

    assert server.wait(900) == 0, server.text()[-3000:]
    run_dir, summary = _summary(server)
    assert summary["mode"] == "deployment" and summary["secure"] == SECURE
    assert summary["rounds_completed"] == rounds
    assert set(summary["federated"]["labs"]) == set(HOSPITALS)
    assert 0.5 < summary["federated"]["pooled_test"]["accuracy"] <= 1.0
    contributors = [set(r["contributors"]) for r in _rounds(run_dir)]
    missing_va = [i for i, c in enumerate(contributors) if "va" not in c]
    assert missing_va, contributors  # the run went on without va ...
    assert any("va" in c for c in contributors[missing_va[0]:]), contributors  # ... and va rejoined
    assert all(len(c) >= 3 for c in contributors), contributors
    audit = (run_dir / "audit.jsonl").read_text()
    assert "intruder" not in audit
    assert "Test accuracy" in server.text()


def test_restarted_server_admits_a_new_lab_and_refuses_a_revoked_one(dep):
    # The coordinator adds a lab and revokes va; the new roster lands in every kit folder.
    # Labs cleveland, hungary and switzerland keep running from the previous test: they
    # reconnect to the restarted server (same state folder, same node ids) and take the
    # new roster for the new run.
    old_va = dep.root / "va-old-kit"
    shutil.copytree(dep.fed / "labs" / "va", old_va)
    add = dep.run(["provision", "--out", str(dep.fed), "--add-lab", "newcomer"], "add-lab")
    assert add.wait(60) == 0, add.text()
    rev = dep.run(["provision", "--out", str(dep.fed), "--revoke-lab", "va"], "revoke")
    assert rev.wait(60) == 0, rev.text()
    dep.labs.pop("va").stop()

    # --new-run: a fresh run even if the previous test left its run unfinished (by
    # default a restarted server resumes its kit's interrupted run).
    server = dep.server("--rounds", "2", "--timeout", "400", "--new-run")
    server.wait_for(r"lab va: SuperNode key unregistered", 240)
    dep.labs["newcomer"] = dep.lab("newcomer", data_of="va")  # admitted now

    refused = dep.lab("va", kit=old_va)  # a copy of the kit from before the revocation
    assert refused.wait(240) == 3, refused.text()
    assert "not registered at the server" in refused.text()
    local = dep.lab("va")  # the kit with the new roster knows it is revoked
    assert local.wait(120) == 1, local.text()
    assert "revoked" in local.text()

    assert server.wait(400) == 0, server.text()[-3000:]
    _, summary = _summary(server)
    assert summary["rounds_completed"] == 2
    assert set(summary["labs"]) == {"cleveland", "hungary", "switzerland", "newcomer"}
    with pytest.raises(Exception, match="revoked"):
        load_lab_kit(dep.fed / "labs" / "va")


def test_labs_stop_cleanly(dep):
    t0 = time.monotonic()
    for proc in dep.labs.values():
        proc.popen.send_signal(signal.SIGTERM)
    for name, proc in dep.labs.items():
        rc = proc.wait(30)
        assert rc in (0, 130), (name, rc, proc.text()[-2000:])
    assert time.monotonic() - t0 < 30
    left = wait_no_leftovers(str(dep.root))
    assert not left, "processes left behind:\n" + "\n".join(left)
