"""A lab's own privacy ledger (fedlab.ledger): its spent privacy survives a resumed run
(new run id, no carried state), a restarted worker, and is never under-counted."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.lab import Reply, SyntheticLabWorker
from fedlab import privacy as dp
from fedlab.config import FederationConfig, PrivacyConfig, default_config
from fedlab.errors import ProtocolError, RunError
from fedlab.ledger import LabLedger, LedgerStore, base_run_id

LAB = "cleveland"


def _cfg(**privacy: Any) -> FederationConfig:
    return dataclasses.replace(default_config(), rounds=10, privacy=PrivacyConfig(**privacy))


RECORD = {"mode": "record", "epsilon": 50.0, "delta": 1e-5, "clip": 1.0, "noise_multiplier": 2.5}


class DpLab(SyntheticLabWorker):
    """A lab that trains nothing but spends privacy like a real one (LabWorker.train)."""

    def train(self, round_: int, global_vec: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        self._model(global_vec)
        self.privacy.before_round(self.lab, round_)
        metrics: dict[str, Any] = {"num-examples": self.num_train, "train-loss": 0.0,
                                   "seconds": 0.0}
        return self.privacy.after_round(self._update.copy(), metrics), metrics


def _lab(cfg: FederationConfig, store: LedgerStore | None) -> DpLab:
    lab = DpLab(cfg, LAB, 8, Ed25519PrivateKey.generate(), {LAB: b"", "va": b""})
    lab.ledger_store = store
    return lab


def _round(lab: DpLab, run: str, rnd: int, state: bytes | None) -> Reply:
    return lab.handle("round", {"run": run, "round": rnd}, np.zeros(8, np.float32), state)


def test_base_run_id():
    assert base_run_id("heart-20250101-120000") == "heart-20250101-120000"
    assert base_run_id("heart-20250101-120000.3") == "heart-20250101-120000"
    assert base_run_id("heart-20250101-120000-2.12") == "heart-20250101-120000-2"
    assert base_run_id("a.b-1") == "a.b-1"


def test_resumed_run_continues_from_the_ledger_not_from_zero(tmp_path):
    cfg = _cfg(**RECORD)
    store = LedgerStore(tmp_path / "kit" / "state" / "privacy", "four-hospitals")
    lab = _lab(cfg, store)
    spr = lab.privacy.steps_per_round
    state = None
    eps = []
    for rnd in (1, 2):
        reply = _round(lab, "heart-1", rnd, state)
        state = reply.state
        eps.append(reply.metrics["epsilon"])
    # The server dies; the resumed run has a new run id and the lab no carried state; the
    # worker process was restarted too (a fresh LabWorker, the same folder).
    lab = _lab(cfg, store)
    reply = _round(lab, "heart-1.1", 3, None)
    q = lab.privacy.ledger.sample_rate
    assert lab.privacy.ledger.steps == 3 * spr
    assert reply.metrics["epsilon"] == pytest.approx(dp.epsilon_spent(2.5, q, 3 * spr, 1e-5))
    assert reply.metrics["epsilon"] > eps[1] > eps[0] > 0
    # the file: where, what, private
    path = tmp_path / "kit" / "state" / "privacy" / "four-hospitals" / "heart-1.json"
    data = json.loads(path.read_text())
    assert (data["steps"], data["rounds"], data["run"], data["lab"]) == (3 * spr, 0, "heart-1",
                                                                         LAB)
    assert data["epsilon"] == pytest.approx(reply.metrics["epsilon"])
    assert data["last"]["run_id"] == "heart-1.1" and data["last"]["round"] == 3
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "kit" / "state" / "privacy").stat().st_mode) == 0o700
    # another run of the federation has a ledger of its own
    other = _round(_lab(cfg, store), "heart-2", 1, None)
    assert other.metrics["epsilon"] == pytest.approx(eps[0])


def test_budget_stop_triggers_at_the_right_round_across_a_resume(tmp_path):
    probe = _lab(_cfg(**RECORD), None).privacy
    allowed = 4  # a budget of exactly 4 rounds' steps
    budget = dp.epsilon_spent(2.5, probe.ledger.sample_rate, allowed * probe.steps_per_round,
                              1e-5) * (1 + 1e-9)
    cfg = _cfg(**{**RECORD, "epsilon": budget})
    store = LedgerStore(tmp_path / "privacy", cfg.name, per_run_folder=True)
    lab = _lab(cfg, store)
    state = None
    for rnd in range(1, 3):
        state = _round(lab, "sim-1", rnd, state).state
    lab = _lab(cfg, store)  # resumed: no state, a new run id
    state = None
    for rnd in range(3, allowed + 1):
        state = _round(lab, "sim-1.1", rnd, state).state
    with pytest.raises(ProtocolError, match=f"round {allowed + 1} would spend epsilon"):
        _round(lab, "sim-1.1", allowed + 1, state)
    with pytest.raises(ProtocolError, match="would spend epsilon"):  # and after another resume
        _round(_lab(cfg, store), "sim-1.2", allowed + 1, None)
    assert store.ledger("sim-1.2", LAB).counters()["steps"] == allowed * probe.steps_per_round
    assert (tmp_path / "privacy" / f"{LAB}.json").exists()


def test_lab_level_rounds_are_kept_too(tmp_path):
    cfg = _cfg(mode="lab", epsilon=5.0, delta=1e-5, clip=0.5, noise_multiplier=3.0)
    store = LedgerStore(tmp_path, cfg.name, per_run_folder=True)
    state = _round(_lab(cfg, store), "r", 1, None).state
    _round(_lab(cfg, store), "r", 2, state)
    reply = _round(_lab(cfg, store), "r.1", 3, None)
    assert reply.metrics["epsilon"] == pytest.approx(dp.epsilon_spent_lab_level(3.0, 3, 1e-5))


def test_carried_state_counts_when_the_file_is_behind(tmp_path):
    """The larger of the two records wins: a lost or older file never lowers the count."""
    cfg = _cfg(**RECORD)
    store = LedgerStore(tmp_path, cfg.name, per_run_folder=True)
    lab = _lab(cfg, store)
    state = _round(lab, "r", 1, None).state
    state = _round(lab, "r", 2, state).state
    (tmp_path / f"{LAB}.json").unlink()
    _round(lab, "r", 3, state)
    assert store.ledger("r", LAB).counters()["steps"] == 3 * lab.privacy.steps_per_round


def test_two_processes_answering_one_message_both_count(tmp_path):
    cfg = _cfg(**RECORD)
    store = LedgerStore(tmp_path, cfg.name, per_run_folder=True)
    a, b = _lab(cfg, store), _lab(cfg, store)
    _round(a, "r", 1, None)
    _round(b, "r", 1, None)  # Flower ran the message twice, from the same (empty) state
    ledger = store.ledger("r", LAB)
    steps = 2 * a.privacy.steps_per_round
    assert ledger.counters()["steps"] == steps
    recorded = json.loads(ledger.path.read_text())["epsilon"]
    assert recorded == pytest.approx(dp.epsilon_spent(2.5, a.privacy.ledger.sample_rate, steps,
                                                      1e-5))


def test_a_damaged_or_foreign_ledger_stops_training(tmp_path):
    cfg = _cfg(**RECORD)
    store = LedgerStore(tmp_path, cfg.name)
    _round(_lab(cfg, store), "r", 1, None)
    path = store.ledger("r", LAB).path
    good = path.read_text()
    path.write_text("{not json")
    with pytest.raises(RunError, match="is damaged"):
        _round(_lab(cfg, store), "r.1", 2, None)
    path.write_text(good.replace('"lab": "cleveland"', '"lab": "va"'))
    with pytest.raises(RunError, match="copied or moved"):
        _round(_lab(cfg, store), "r.1", 2, None)
    path.write_text(good)
    other = _cfg(**{**RECORD, "noise_multiplier": 3.0})  # [privacy] changed mid-run
    with pytest.raises(ProtocolError, match="other DP parameters"):
        _round(_lab(other, store), "r.1", 2, None)


def test_an_unwritable_ledger_withholds_the_update(tmp_path, monkeypatch):
    import errno

    from fedlab import ledger as ledger_mod

    def disk_full(path: Path, data: bytes, mode: int = 0o644) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ledger_mod, "atomic_write", disk_full)
    cfg = _cfg(**RECORD)
    with pytest.raises(RunError, match="No space left.*update is withheld"):
        _round(_lab(cfg, LedgerStore(tmp_path, cfg.name)), "r", 1, None)


def test_a_ledger_folder_of_another_user_is_refused(tmp_path, monkeypatch):
    from fedlab.errors import KitError

    monkeypatch.setattr(os, "getuid", lambda: os.stat(tmp_path).st_uid + 1)
    with pytest.raises(KitError, match="another user"):
        LedgerStore(tmp_path, "f").prepare()


def test_no_ledger_when_privacy_is_off(tmp_path):
    cfg = default_config()
    store = LedgerStore(tmp_path / "p", cfg.name)
    _round(_lab(cfg, store), "r", 1, None)
    assert not (tmp_path / "p").exists()


def test_unsafe_names_get_files_of_their_own(tmp_path):
    store = LedgerStore(tmp_path, "a/../b")
    one = store.ledger("../x", LAB)
    two = store.ledger("..-x", LAB)
    assert one.path != two.path
    for ledger in (one, two):
        assert ledger.path.resolve().is_relative_to(tmp_path.resolve())
    assert isinstance(one, LabLedger) and one.run == "../x"
    assert Path(one.path).parent.parent == tmp_path


def test_the_warm_worker_continues_a_resumed_run_from_its_ledger(tmp_path):
    """Deployment: the worker keeps states per run id, so a resumed run ("<run>.1") starts
    with none; the lab's ledger carries its spending over."""
    import tempfile

    from client import worker as w

    cfg = _cfg(**RECORD)
    lab = _lab(cfg, LedgerStore(tmp_path / "state" / "privacy", "four-hospitals"))
    srv = w.WorkerServer(lab, Path(tempfile.mkdtemp(prefix="fl-w-")) / "w.sock")
    vec = np.zeros(8, np.float32)

    def round_(run: str, rnd: int) -> float:
        res = srv.answer({"op": "handle", "kind": "round", "cfg": {"run": run, "round": rnd},
                          "vector": vec})
        return float(res["metrics"]["epsilon"])

    before = [round_("heart-20250101-120000", r) for r in (1, 2)]
    after = round_("heart-20250101-120000.1", 3)
    assert set(srv.states) == {"heart-20250101-120000", "heart-20250101-120000.1"}
    q, spr = lab.privacy.ledger.sample_rate, lab.privacy.steps_per_round
    assert after == pytest.approx(dp.epsilon_spent(2.5, q, 3 * spr, 1e-5)) and after > before[1]


@pytest.mark.slow
def test_a_deployed_lab_keeps_its_ledger_in_its_kit(tmp_path):
    from client.worker import build_lab_worker
    from fedlab import pki
    from fedlab.data import heart_disease as hd

    text = ('[federation]\nname = "fed"\nrounds = 3\n[training]\nlocal_epochs = 1\n'
            '[privacy]\nmode = "record"\nepsilon = 50.0\nnoise_multiplier = 2.5\n'
            '[data]\ndataset = "heart-disease"\n[server]\naddress = "127.0.0.1:9"\n'
            'hosts = ["127.0.0.1"]\n[[labs]]\nname = "cleveland"\n[[labs]]\nname = "va"\n')
    res = pki.provision(tmp_path / "fed", federation="fed", labs=["cleveland", "va"],
                        server_hosts=["127.0.0.1"], server_address="127.0.0.1:9",
                        config_text=text)
    kit = res.lab_kits["cleveland"]
    worker = build_lab_worker(kit, hd.data_file("cleveland"))
    store = worker.ledger_store
    assert isinstance(store, LedgerStore) and store.federation == "fed"
    assert store.root == kit / "state" / "privacy"
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    assert store.ledger("fed-20250101-120000.2", "cleveland").path == (
        kit / "state" / "privacy" / "fed" / "fed-20250101-120000.json")
