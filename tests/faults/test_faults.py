"""Faults a federation meets, on real simulated runs (Flower's runtime, Ray, real protocol).

Each test names the fault in the catalogue (tests/faults/README.md). The misbehaving
lab runs tests/faults/evil_app (fedlab's real lab with a fault injected).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedlab.launch import descendants
from fedlab.runs import verify_run

pytestmark = pytest.mark.slow

EVIL_APP = Path(__file__).parent / "evil_app"
FOUR = ("cleveland", "hungary", "switzerland", "va")


def _config(tmp_path: Path, *, labs=FOUR, rounds: int, secure: bool, extra: str = "") -> Path:
    text = (f'[federation]\nname = "faults"\nrounds = {rounds}\nmin_labs = 2\n'
            f'secure = {"true" if secure else "false"}\nstage_timeout = 60\n'
            '[training]\nlocal_epochs = 3\nbatch_size = 16\nlearning_rate = 0.1\n'
            '[strategy]\nname = "fedadam"\nserver_learning_rate = 0.03\n'
            '[data]\ndataset = "heart-disease"\n[simulation]\nbaselines = false\n' + extra)
    for lab in labs:
        text += f'[[labs]]\nname = "{lab}"\ndata = "builtin:{lab}"\n'
    path = tmp_path / f"{'-'.join(labs)}.toml"
    path.write_text(text)
    return path


def _simulate(config: Path, out: Path, faults: list[dict] | None = None,
              app: Path | None = None) -> tuple[Path, dict]:
    os.environ["FEDLAB_TEST_FAULTS"] = json.dumps(faults or [])
    try:
        from fedlab.simulate import simulate

        return simulate(str(config), out, progress=False, app_dir=app, timeout=600)
    finally:
        os.environ.pop("FEDLAB_TEST_FAULTS", None)


def _rounds(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "round"]


def _audit(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "audit.jsonl").read_text().splitlines()]


def _honest_accuracy(summary: dict, labs=("cleveland", "hungary", "switzerland")) -> float:
    per = summary["federated"]["labs"]
    n = sum(per[lab]["examples"] for lab in labs)
    return sum(per[lab]["accuracy"] * per[lab]["examples"] for lab in labs) / n


def test_bad_updates_in_plain_mode_are_rejected(tmp_path):
    """Faults P1-P5: NaN, Inf, wrong shape, wrong dtype, huge norm from one lab."""
    kinds = ["nan", "inf", "shape", "dtype", "norm"]
    faults = [{"lab": "va", "round": r + 1, "stage": "round", "kind": k}
              for r, k in enumerate(kinds)]
    run_dir, summary = _simulate(_config(tmp_path, rounds=5, secure=False), tmp_path / "evil",
                                 faults, EVIL_APP)
    assert summary["rounds_completed"] == 5
    for row, kind in zip(_rounds(run_dir), kinds, strict=True):
        assert row["aggregated"] and "va" not in row["contributors"]
        assert "va" in row["rejected"], (kind, row)
    reasons = [e["reason"] for e in _audit(run_dir) if e["event"] == "rejected"]
    assert any("NaN or infinite" in r for r in reasons)
    assert any("shape (17,), expected (14,)" in r for r in reasons)
    assert any("dtype float64" in r for r in reasons)
    assert any("exceeds the bound" in r for r in reasons)
    _, clean = _simulate(_config(tmp_path, labs=FOUR[:3], rounds=5, secure=False),
                         tmp_path / "clean")
    assert abs(_honest_accuracy(summary) - _honest_accuracy(clean)) <= 0.02
    verify_run(run_dir)


def test_secure_dropouts_at_every_stage_poison_and_threshold(tmp_path):
    """Faults S1-S5: a lab lost before keys, after shares, after its masked update; a
    poisoned aggregate; too few survivors."""
    faults = [
        {"lab": "switzerland", "round": 1, "stage": "setup", "kind": "fail"},   # before keys
        {"lab": "hungary", "round": 3, "stage": "round", "kind": "fail"},       # after shares
        {"lab": "cleveland", "round": 4, "stage": "unmask", "kind": "fail"},    # after update
        {"lab": "va", "round": 5, "stage": "round", "kind": "poison"},
        {"lab": "cleveland", "round": 6, "stage": "round", "kind": "fail"},
        {"lab": "hungary", "round": 6, "stage": "round", "kind": "fail"},
        {"lab": "switzerland", "round": 6, "stage": "round", "kind": "fail"},
    ]
    cfg = _config(tmp_path, rounds=7, secure=True, extra="[robustness]\nmax_update_norm = 10.0\n")
    run_dir, summary = _simulate(cfg, tmp_path / "secure", faults, EVIL_APP)
    rows = _rounds(run_dir)
    assert [r["aggregated"] for r in rows] == [True, True, True, True, False, False, True]
    assert summary["rounds_completed"] == 5
    assert all(r["secure"] for r in rows)
    # S1: no keys, no part in round 1; it runs setup before it contributes in round 2
    assert rows[0]["contributors"] == ["cleveland", "hungary", "va"]
    assert rows[1]["contributors"] == list(FOUR) and rows[1]["exchanges"] == 4
    # S2: lost after sharing its keys: dropped, the others' round is aggregated
    assert rows[2]["contributors"] == ["cleveland", "switzerland", "va"]
    assert rows[2]["dropped"] == ["hungary"] and rows[2]["exchanges"] == 2
    # S3: lost after its masked update: its update still counts; hungary re-ran setup first
    assert rows[3]["contributors"] == list(FOUR) and rows[3]["exchanges"] == 4
    # S4: poisoned aggregate rejected, previous model kept
    assert "aggregate rejected" in rows[4]["reason"]
    # S5: fewer than t survivors: aborted cleanly with the reason
    assert "can be unmasked" in rows[5]["reason"] and "previous global model is kept" in rows[5]["reason"]
    assert rows[6]["contributors"] == list(FOUR) and rows[6]["exchanges"] == 4
    events = [e["event"] for e in _audit(run_dir)]
    assert "aggregate_rejected" in events and events.count("round_failed") == 2
    assert "secagg_aborted" in events and "secagg_dropped" in events
    # the global model was kept: no checkpoint for rounds 5 and 6
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("*.npz"))
    assert ckpts == [f"round-000{r}.npz" for r in (1, 2, 3, 4, 7)]
    verify_run(run_dir)


def test_a_late_reply_does_not_overwrite_the_labs_newer_state(tmp_path):
    """Fault S7: a lab answers its round-2 masked update 1 s after the stage timeout. The
    server drops it and goes on; in round 3 the lab re-runs setup while Flower may still
    run the late message in another actor. Its state must come out of both messages in
    order: it contributes in every later round. (With the state in Flower's Context, the
    late message's older state overwrote the newer keys when it ended, a round or two
    later, and the lab was refused there and had to set up again.)"""
    timeout = 25
    faults = [{"lab": "va", "round": 2, "stage": "round", "kind": "late", "seconds": timeout + 1}]
    cfg = _config(tmp_path, rounds=12, secure=True)
    cfg.write_text(cfg.read_text().replace("stage_timeout = 60", f"stage_timeout = {timeout}")
                   .replace("local_epochs = 3", "local_epochs = 1"))
    run_dir, summary = _simulate(cfg, tmp_path / "late", faults, EVIL_APP)
    rows = _rounds(run_dir)
    assert [r["aggregated"] for r in rows] == [True] * 12
    assert rows[1]["dropped"] == ["va"]
    assert rows[1]["contributors"] == ["cleveland", "hungary", "switzerland"]
    assert rows[2]["contributors"] == list(FOUR) and rows[2]["exchanges"] == 4  # setup again
    for row in rows[3:]:
        assert row["contributors"] == list(FOUR) and row["exchanges"] == 2, row
    refused = [e for e in _audit(run_dir) if e["event"] == "lab_error" and e.get("lab") == "va"]
    assert refused == []
    verify_run(run_dir)


def test_server_killed_mid_round_resumes_there(tmp_path):
    """Fault R1: SIGKILL of the whole server side in the middle of round 3, then resume."""
    cfg = _config(tmp_path, rounds=5, secure=True)
    proc = subprocess.Popen([sys.executable, "-m", "fedlab.cli", "simulate", str(cfg), "--out",
                             str(tmp_path / "runs"), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 400
    run_dir = None
    while time.time() < deadline:
        dirs = list((tmp_path / "runs").glob("faults-*"))
        if dirs and (dirs[0] / "audit.jsonl").exists():
            run_dir = dirs[0]
            if any(e["event"] == "round_started" and e["round"] == 3 for e in _audit(run_dir)):
                break
        time.sleep(0.05)
    assert run_dir is not None
    victims = [proc.pid, *descendants(proc.pid)]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    assert not (run_dir / "summary.json").exists()
    done_before = {e["round"] for e in _audit(run_dir) if e["event"] == "round_completed"}
    assert done_before <= {1, 2, 3}
    res = subprocess.run([sys.executable, "-m", "fedlab.cli", "simulate", "--resume",
                          str(run_dir), "--no-progress"], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == 5
    audit = _audit(run_dir)
    resumed = [e for e in audit if e["event"] == "resumed"]
    assert resumed and resumed[0]["from_round"] == max(done_before)
    completed = [e["round"] for e in audit if e["event"] == "round_completed"]
    assert sorted(set(completed)) == [1, 2, 3, 4, 5]
    verify_run(run_dir)
    time.sleep(1)
    assert all(not Path(f"/proc/{p}").exists() or
               Path(f"/proc/{p}/stat").read_text().split(")")[-1].split()[0] == "Z"
               for p in victims)
