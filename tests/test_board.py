"""TensorBoard event files of a run folder (server.board): tags, steps, resume, failures."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from server.board import FOLDER, RunBoard

LABS = ("cleveland", "va")


def _metrics(rnd: int, dp: bool = True) -> dict[str, dict[str, Any]]:
    out = {}
    for i, lab in enumerate(LABS):
        m: dict[str, Any] = {"test-accuracy": 0.5 + 0.01 * rnd + i * 0.1, "test-loss": 1.0 / rnd,
                             "test-examples": 10 + i, "val-accuracy": 0.6, "val-loss": 0.7,
                             "val-examples": 5, "train-loss": 0.9 / rnd}
        if dp:
            m["epsilon"] = 0.1 * rnd
        out[lab] = m
    return out


def _run(board: RunBoard, rounds: range, final: int | None = None) -> None:
    for rnd in rounds:
        board.log_round(rnd, _metrics(rnd), seconds=0.2, contributors=2, dropped=0,
                        aggregated=True)
    if final is not None:
        board.log_final(final, {lab: {k: v for k, v in m.items() if k.startswith("test")}
                                for lab, m in _metrics(final + 1).items()})
    board.close()


def _scalars(run_dir: Path) -> dict[tuple[str, int], list[float]]:
    """(tag, step) -> values, read back with TensorFlow's own event reader."""
    import tensorflow as tf

    out: dict[tuple[str, int], list[float]] = {}
    files = sorted((run_dir / FOLDER).glob("events.out.tfevents.*"))
    assert files
    for path in files:
        for ev in tf.compat.v1.train.summary_iterator(str(path)):
            for v in ev.summary.value:
                assert v.metadata.plugin_data.plugin_name == "scalars"
                out.setdefault((v.tag, ev.step), []).append(float(tf.make_ndarray(v.tensor)))
    return out


def test_rounds_write_the_expected_scalars(tmp_path):
    board = RunBoard(tmp_path)
    _run(board, range(1, 4), final=3)
    got = _scalars(tmp_path)
    tags = {tag for tag, _ in got}
    for lab in (*LABS, "pooled"):
        for name in ("accuracy", "loss"):  # step 3: the final evaluation
            assert {step for tag, step in got if tag == f"{name}/{lab}"} == {0, 1, 2, 3}
        for name in ("val_accuracy", "val_loss"):  # the final evaluation has no validation
            assert {step for tag, step in got if tag == f"{name}/{lab}"} == {0, 1, 2}
    for lab in LABS:
        assert {step for tag, step in got if tag == f"epsilon/{lab}"} == {1, 2, 3}
        assert f"train_loss/{lab}" in tags
    for name in ("seconds", "contributors", "dropped", "aggregated"):
        assert {step for tag, step in got if tag == f"round/{name}"} == {1, 2, 3}
    assert got[("epsilon/va", 2)] == [pytest.approx(0.2)]
    assert got[("round/contributors", 1)] == [2.0]
    # pooled = example-weighted (10 and 11 test rows)
    acc = (10 * 0.52 + 11 * 0.62) / 21  # round 2's replies measure the model after round 1
    assert got[("accuracy/pooled", 1)] == [pytest.approx(acc)]
    assert all(len(v) == 1 for v in got.values())


def test_a_resumed_run_continues_the_curves_without_duplicates(tmp_path):
    _run(RunBoard(tmp_path), range(1, 4))  # died during round 4, last checkpoint after round 2
    first = sorted((tmp_path / FOLDER).glob("events.out.tfevents.*"))
    with open(first[0], "ab") as f:
        f.write(b"\x20\x00\x00")  # and a record cut off mid-write
    time.sleep(1.1)  # a new file, named (by time) after the first
    board = RunBoard(tmp_path, resume_after=2)
    _run(board, range(3, 6), final=5)
    got = _scalars(tmp_path)
    assert len(list((tmp_path / FOLDER).glob("events.out.tfevents.*"))) == 2
    assert all(len(v) == 1 for v in got.values()), {k: v for k, v in got.items() if len(v) > 1}
    assert {s for t, s in got if t == "accuracy/pooled"} == {0, 1, 2, 3, 4, 5}
    assert {s for t, s in got if t == "epsilon/cleveland"} == {1, 2, 3, 4, 5}
    assert board.seconds / board.rounds < 0.05  # per round (measured: well under 1 ms)


def test_synthetic_runs_write_nothing_and_failures_never_stop_a_run(tmp_path, caplog):
    _run(RunBoard(tmp_path, enabled=False), range(1, 3))
    assert not (tmp_path / FOLDER).exists()
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / FOLDER).write_text("a file where the folder should be")
    board = RunBoard(tmp_path / "x")
    _run(board, range(1, 3), final=2)
    assert board.writer is None
    assert "not written further" in caplog.text
