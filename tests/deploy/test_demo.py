"""`fedlab demo --deployment`: a four-hospital federation provisioned in a temporary
folder, its server and four lab processes over TLS on loopback, the result table, and
nothing left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.harness import env_for, secure_ready, wait_no_leftovers

pytestmark = pytest.mark.slow


def test_demo_deployment(tmp_path):
    env = env_for(tmp_path)
    args = [sys.executable, "-m", "fedlab.cli", "demo", "--deployment", "--rounds", "2",
            "--out", str(tmp_path / "runs")]
    if not secure_ready():
        args.append("--plain")
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for lab in ("cleveland", "hungary", "switzerland", "va"):
        assert f"lab {lab}: started" in out
        assert f"lab {lab} joined" in out
    assert "Test accuracy" in out and "pooled test" in out
    run_dir = Path(out.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mode"] == "deployment" and summary["rounds_completed"] == 2
    assert set(summary["federated"]["labs"]) == {"cleveland", "hungary", "switzerland", "va"}
    # the default federated standardisation ran as its own secure session over the labs
    prep = json.loads((run_dir / "prep.json").read_text())
    assert set(prep["contributors"]) == {"cleveland", "hungary", "switzerland", "va"}, prep
    stats = json.loads((run_dir / "feature_stats.json").read_text())
    assert stats, "feature_stats.json is empty"
    events = [json.loads(x)["event"] for x in (run_dir / "audit.jsonl").read_text().splitlines()]
    assert "prep_completed" in events and events.index("prep_completed") < events.index(
        "round_started"), events
    assert not list(Path(env["TMPDIR"]).glob("fedlab-demo-*"))  # its temporary folder is gone
    left = wait_no_leftovers(str(tmp_path))
    assert not left, "processes left behind:\n" + "\n".join(left)
