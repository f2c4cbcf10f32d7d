"""Real simulations on Flower's simulation runtime (Ray): short, on the bundled data."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fedlab.runs import verify_audit

pytestmark = pytest.mark.slow

FEDLAB = [sys.executable, "-m", "fedlab.cli"]


def _started_under(tmp_path: Path) -> list[str]:
    """Live processes whose FLWR_HOME lies under ``tmp_path`` (the CLI runs with
    TMPDIR=tmp_path, so everything it starts, even detached, carries that there)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(e.startswith(b"FLWR_HOME=" + str(tmp_path).encode())
                                for e in env):
            out.append(pid)
    return out


def test_short_simulation_end_to_end(tmp_path):
    t0 = time.time()
    # A short private TMPDIR (Ray's socket paths live under it and must stay < 108 bytes):
    # everything the CLI starts carries FLWR_HOME under it, so leftovers can be found.
    short = Path(tempfile.mkdtemp(prefix="fl", dir="/tmp"))
    env = dict(os.environ, TMPDIR=str(short))
    proc = subprocess.run([*FEDLAB, "simulate", "--rounds", "3", "--out", str(tmp_path),
                           "--no-progress"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = Path(proc.stdout.strip().splitlines()[-1])  # the last line is the run folder
    assert run_dir.parent == tmp_path and run_dir.is_dir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == 3
    assert set(summary["federated"]["labs"]) == {"cleveland", "hungary", "switzerland", "va"}
    assert summary["federated"]["pooled_test"]["examples"] == 254
    rows0 = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    initial = next(r for r in rows0 if r["kind"] == "eval" and r["lab"] == "pooled"
                   and r["round"] == 0)
    # three rounds of FedAdam learn something: better than the initial model
    assert summary["federated"]["pooled_test"]["accuracy"] > initial["accuracy"] + 0.05
    assert summary["baselines"]["pooled_training"]["pooled_test"]["examples"] == 254
    for name in ("federation.toml", "metrics.jsonl", "audit.jsonl", "report.md", "accuracy.png",
                 "loss.png", "model.keras", "model.sha256", "tensorboard"):
        assert (run_dir / name).exists(), name
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert verify_audit(run_dir / "audit.jsonl") > 5
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert {r["lab"] for r in train} == {"cleveland", "hungary", "switzerland", "va"}
    assert all(r["bytes_sent"] > 0 for r in train)
    assert "Test accuracy" in proc.stdout and "pooled" in proc.stdout
    # nothing left behind: no SuperLink, SuperExec, simulation or Ray process
    time.sleep(1)
    assert _started_under(short) == []
    shutil.rmtree(short, ignore_errors=True)
    assert time.time() - t0 < 300


def test_simulation_on_an_existing_ray_cluster(tmp_path):
    ray = shutil.which("ray", path=str(Path(sys.executable).parent))
    assert ray, "ray CLI missing from the venv"
    port = 26379 + os.getpid() % 1000
    # Every process of this cluster carries the mark, so the test stops exactly those
    # (`ray stop` would stop every Ray process on the machine, another test's too).
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", FEDLAB_TEST_MARK=str(tmp_path))
    start = subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=2",
                            "--include-dashboard=false", "--disable-usage-stats"],
                           capture_output=True, text=True, env=env, timeout=120)
    assert start.returncode == 0, start.stderr
    try:
        proc = subprocess.run([*FEDLAB, "simulate", "--rounds", "2", "--plain", "--out",
                               str(tmp_path), "--no-progress", "--ray-address",
                               f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=600,
                              env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        run_dir = Path(proc.stdout.strip().splitlines()[-1])
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["rounds_completed"] == 2
        assert summary["runtime"]["ray_gcs_address"].endswith(f":{port}")
    finally:
        _stop_marked(str(tmp_path))


def _stop_marked(mark: str) -> None:
    from tests.deploy.harness import leftovers, wait_no_leftovers

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for line in leftovers(mark):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split()[0]), sig)
        if not wait_no_leftovers(mark, timeout=15):
            return
    left = leftovers(mark)
    assert not left, "Ray processes left behind:\n" + "\n".join(left)


def test_bad_config_fails_fast_with_one_line(tmp_path):
    bad = tmp_path / "f.toml"
    bad.write_text("[federation]\nrounds = -1\n[data]\ndataset = 'heart-disease'\n")
    proc = subprocess.run([*FEDLAB, "simulate", str(bad), "--out", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "federation.rounds" in proc.stderr and "Traceback" not in proc.stderr
    # refused before anything was started or written
    assert not (tmp_path / "runs").exists()
