"""Run folder: the audit chain shows every edit, checkpoints are atomic and verified."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedlab import codec
from fedlab.errors import RunError
from fedlab.runs import RunFolder, load_checkpoint, verify_audit, verify_run


def _run(tmp_path, n=6):
    folder = RunFolder(tmp_path / "run")
    for i in range(n):
        folder.audit.record("event", i=i, lab=f"lab-{i % 3}")
    return folder


def _lines(folder):
    return (folder.path / "audit.jsonl").read_bytes().splitlines()


def _write(folder, lines):
    (folder.path / "audit.jsonl").write_bytes(b"\n".join(lines) + b"\n")


def test_intact_log_verifies(tmp_path):
    folder = _run(tmp_path)
    assert verify_audit(folder.path / "audit.jsonl") == 6


@pytest.mark.parametrize("line", [1, 3, 6])
def test_editing_any_line_names_it(tmp_path, line):
    folder = _run(tmp_path)
    lines = _lines(folder)
    entry = json.loads(lines[line - 1])
    entry["lab"] = "someone-else"
    lines[line - 1] = json.dumps(entry, sort_keys=True).encode()
    _write(folder, lines)
    with pytest.raises(RunError, match=f"line {line} does not match its own hash"):
        verify_audit(folder.path / "audit.jsonl")


@pytest.mark.parametrize("line", [1, 4])
def test_deleting_a_line_names_where_the_chain_breaks(tmp_path, line):
    folder = _run(tmp_path)
    lines = _lines(folder)
    del lines[line - 1]
    _write(folder, lines)
    with pytest.raises(RunError, match=f"line {line} does not follow"):
        verify_audit(folder.path / "audit.jsonl")


def test_deleting_the_last_line_shows_through_the_head(tmp_path):
    folder = _run(tmp_path)
    _write(folder, _lines(folder)[:-1])
    with pytest.raises(RunError, match="cut off the end"):
        verify_audit(folder.path / "audit.jsonl")


def test_reordering_names_the_line(tmp_path):
    folder = _run(tmp_path)
    lines = _lines(folder)
    lines[2], lines[3] = lines[3], lines[2]
    _write(folder, lines)
    with pytest.raises(RunError, match="line 3 does not follow"):
        verify_audit(folder.path / "audit.jsonl")


def test_recomputed_hash_still_breaks_the_chain(tmp_path):
    from fedlab.runs import _entry_hash

    folder = _run(tmp_path)
    lines = _lines(folder)
    entry = json.loads(lines[1])
    entry["lab"] = "forged"
    entry["hash"] = _entry_hash(entry)
    lines[1] = json.dumps(entry, sort_keys=True).encode()
    _write(folder, lines)
    with pytest.raises(RunError, match="line 3 does not follow"):
        verify_audit(folder.path / "audit.jsonl")


def test_appending_after_reopen_continues_the_chain(tmp_path):
    folder = _run(tmp_path, n=3)
    again = RunFolder(folder.path)
    again.audit.record("resumed")
    assert verify_audit(folder.path / "audit.jsonl") == 4


def test_checkpoint_round_trip_and_tamper(tmp_path):
    folder = RunFolder(tmp_path / "run")
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float32)]
    sha = codec.weights_hash(weights)
    path = folder.checkpoint(4, weights, {"m": np.zeros(9)}, sha)
    folder.audit.record("round_completed", round=4, model_sha256=sha)
    got, state, recorded = load_checkpoint(path)
    assert recorded == sha and state["m"].shape == (9,)
    np.testing.assert_array_equal(got[0], weights[0])
    assert verify_run(folder.path) == 1
    # a checkpoint that no longer matches its hash is named
    bad = [weights[0] + 1, weights[1]]
    folder.checkpoint(4, bad, {}, sha)
    with pytest.raises(RunError, match="does not match round-0004.sha256"):
        verify_run(folder.path)


def test_missing_checkpoint_is_named(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.audit.record("round_completed", round=2, model_sha256="ab" * 32)
    with pytest.raises(RunError, match="line 1 records round 2 but checkpoints/ has no"):
        verify_run(folder.path)


def test_drop_metrics_after_keeps_what_the_resumed_round_will_not_redo(tmp_path):
    folder = RunFolder(tmp_path / "run")
    for r in (1, 2, 3):
        folder.metric(kind="train", round=r, lab="a")
        folder.metric(kind="eval", round=r - 1, lab="a")
        folder.metric(kind="round", round=r)
    folder.drop_metrics_after(2)
    kept = {(m["kind"], m["round"]) for m in folder.metrics()}
    assert kept == {("train", 1), ("eval", 0), ("round", 1), ("train", 2), ("eval", 1),
                    ("round", 2)}
