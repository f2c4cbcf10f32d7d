"""A virtual lab's state between messages in simulation (client.app.lab_state).

Flower's engine can run two messages of one virtual lab at once (a late reply after a
stage timeout beside the lab's next request) in different actor processes. The state
store must then serialise them: no update of the state may be lost or overwritten by an
older one."""

from __future__ import annotations

import multiprocessing
import stat
import time
from pathlib import Path

from client.app import lab_state


def _bump(folder: str, times: int) -> None:
    """Read-modify-write the counter kept as the lab's state, slowly, ``times`` times."""
    for _ in range(times):
        with lab_state(Path(folder), 7, 3) as slot:
            n = int(slot.state or b"0")
            time.sleep(0.002)  # the other process tries to get in meanwhile
            slot.state = str(n + 1).encode()


def test_two_processes_never_lose_an_update_of_one_labs_state(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_bump, args=(str(folder), 40)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with lab_state(folder, 7, 3) as slot:
        assert slot.state == b"80"
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert files == {"run7-lab3.state": 0o600, "lab3.lock": 0o600}
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_state_is_per_flower_run_and_unchanged_state_is_not_rewritten(tmp_path: Path) -> None:
    with lab_state(tmp_path, 1, 0) as slot:
        assert slot.state is None
        slot.state = b"run one"
    with lab_state(tmp_path, 2, 0) as slot:  # a restarted runtime: a new run, no state
        assert slot.state is None
    path = tmp_path / "run1-lab0.state"
    mtime = path.stat().st_mtime_ns
    with lab_state(tmp_path, 1, 0) as slot:
        assert slot.state == b"run one"
    assert path.stat().st_mtime_ns == mtime
    try:
        with lab_state(tmp_path, 1, 0) as slot:
            slot.state = b"half-done"
            raise RuntimeError("the lab failed")
    except RuntimeError:
        pass
    with lab_state(tmp_path, 1, 0) as slot:  # a failed message keeps the state it found
        assert slot.state == b"run one"
