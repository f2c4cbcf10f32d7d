"""The warm worker's channel: wire format, refusals, socket permissions (no TensorFlow)."""

from __future__ import annotations

import os
import socket
import stat
import struct
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from client import worker as w
from client.lab import Reply
from fedlab.errors import ProtocolError


class FakeLab:
    """Stands in for a LabWorker: echoes, keeps count of the state it was given."""

    lab = "alpha"

    class data:  # noqa: N801 - mimics LabData
        y_train = np.zeros(7)

    def __init__(self) -> None:
        self.seen_states: list[bytes | None] = []

    def handle(self, kind, cfg, vector, state):
        self.seen_states.append(state)
        if kind == "boom":
            raise ProtocolError("refused on purpose")
        if kind == "bug":
            raise ZeroDivisionError("oops")
        n = len(self.seen_states)
        vec = None if vector is None else (vector * 2).astype(np.float32)
        return Reply(meta={"lab": self.lab, "sig": b"\x00\x01sig", "n": n, "echo": cfg},
                     metrics={"loss": 0.5, "num-examples": 7}, vector=vec,
                     state=f"state-{n}".encode())


@pytest.fixture(params=["short", "deep"])
def served(request):
    folder = Path(tempfile.mkdtemp(prefix="fl-w-"))  # 0700
    if request.param == "deep":  # a socket path longer than AF_UNIX's 107 bytes
        folder = folder / ("d" * 60) / ("e" * 60)
        folder.mkdir(mode=0o700, parents=True)
        assert len(str(folder / "w.sock")) > 120
    lab = FakeLab()
    srv = w.WorkerServer(lab, folder / "w.sock")
    srv.bind()
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            try:
                conn, _ = srv.sock.accept()
            except TimeoutError:
                continue
            with conn:
                srv._serve_one(conn)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield srv, lab, str(folder / "w.sock")
    stop.set()
    t.join(timeout=3)
    srv.sock.close()


def test_roundtrip_keeps_state_in_the_worker(served):
    srv, lab, path = served
    vec = np.arange(5, dtype=np.float32)
    cfg = {"run": "r1", "round": 3, "secure": True, "blob": b"\xff\x00", "many": [b"a", b"bc"]}
    r1 = w.call_worker(path, "round", cfg, vec, state=b"ignored")
    assert isinstance(r1, Reply)
    assert r1.state is None  # the ClientApp never sees the secure-aggregation state
    assert r1.vector.dtype == np.float32 and np.array_equal(r1.vector, vec * 2)
    assert r1.meta["sig"] == b"\x00\x01sig" and r1.meta["echo"] == cfg
    assert r1.metrics == {"loss": 0.5, "num-examples": 7}
    w.call_worker(path, "round", {"run": "r1"}, None)
    w.call_worker(path, "round", {"run": "r2"}, None)
    # first call of a run: no state; then the state the worker kept for that run
    assert lab.seen_states == [None, b"state-1", None]
    assert srv.states == {"r1": b"state-2", "r2": b"state-3"}


def test_a_repeated_request_gets_the_same_answer_and_keeps_the_state(served):
    srv, lab, path = served
    cfg = {"run": "r1", "round": 2, "stage": "share", "blob": b"\x01"}
    first = w.call_worker(path, "share", cfg, np.ones(3, np.float32))
    again = w.call_worker(path, "share", dict(reversed(list(cfg.items()))), np.ones(3, np.float32))
    assert again.meta == first.meta and np.array_equal(again.vector, first.vector)
    assert len(lab.seen_states) == 1 and srv.states == {"r1": b"state-1"}
    w.call_worker(path, "share", {**cfg, "round": 3}, np.ones(3, np.float32))  # a new request
    assert len(lab.seen_states) == 2 and srv.states == {"r1": b"state-2"}


def test_errors_travel_as_fedlab_errors(served):
    _, _, path = served
    with pytest.raises(ProtocolError, match="refused on purpose"):
        w.call_worker(path, "boom", {}, None)
    with pytest.raises(w.RunError, match="ZeroDivisionError"):
        w.call_worker(path, "bug", {}, None)
    assert w.ping(path)["lab"] == "alpha"  # still serving


def test_socket_is_private(served):
    srv, _, path = served
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(Path(path).parent).st_mode) == 0o700


def test_refuses_a_folder_others_can_enter(tmp_path):
    folder = tmp_path / "open"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    with pytest.raises(w.KitError, match="0700"):
        w.WorkerServer(FakeLab(), folder / "w.sock").bind()


def test_missing_worker_is_a_clear_error(tmp_path):
    with pytest.raises(w.WorkerUnavailable, match="not ready"):
        w.call_worker(str(tmp_path / "nope.sock"), "hello", {}, None)


@pytest.mark.parametrize("frame", [
    b"XXXX" + struct.pack("!IQ", 2, 0) + b"{}",                      # bad magic
    w.MAGIC + struct.pack("!IQ", 9, 0) + b"not json!",               # bad header
    w.MAGIC + struct.pack("!IQ", 2**31, 0),                          # header too large
])
def test_malformed_frames_are_refused(frame):
    a, b = socket.socketpair()
    with a, b:
        a.sendall(frame)
        a.shutdown(socket.SHUT_WR)
        with pytest.raises((ProtocolError, ConnectionError)):
            w.recv_frame(b)


def _decode(header: dict, body: bytes) -> dict:
    head = __import__("json").dumps(header).encode()
    a, b = socket.socketpair()
    with a, b:
        a.sendall(w.MAGIC + struct.pack("!IQ", len(head), len(body)) + head + body)
        return w.recv_frame(b)


def test_references_are_checked():
    with pytest.raises(ProtocolError, match="outside"):
        _decode({"x": {"$bytes": [2, 10]}}, b"abc")
    with pytest.raises(ProtocolError, match="refused"):
        _decode({"x": {"$array": ["|O", [1], 0, 8]}}, b"\x00" * 8)  # object arrays: never
    with pytest.raises(ProtocolError, match="size"):
        _decode({"x": {"$array": ["<f4", [3], 0, 8]}}, b"\x00" * 8)
    out = _decode({"x": {"$array": ["<f4", [2], 0, 8]}}, np.ones(2, np.float32).tobytes())
    assert np.array_equal(out["x"], np.ones(2, np.float32))


def test_clientapp_path_imports_no_tensorflow():
    """Flower starts a process per message in deployment: its imports are paid each time,
    so it loads neither TensorFlow nor the lab's data, configuration or key handling."""
    import subprocess
    import sys

    code = ("import sys, client.app, client.worker; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras') "
            "or m in ('client.lab', 'fedlab.config', 'fedlab.data', 'fedlab.secure')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_new_roster_is_taken_at_the_next_run_only(tmp_path):
    from fedlab import pki

    res = pki.provision(tmp_path / "fed", federation="f", labs=["alpha", "beta", "gamma"],
                        server_hosts=["127.0.0.1"], server_address="127.0.0.1:9",
                        config_text="")
    kit = pki.load_lab_kit(res.lab_kits["alpha"])
    lab = FakeLab()
    lab.roster = dict(kit.roster.identity_keys())
    folder = Path(tempfile.mkdtemp(prefix="fl-w-"))
    srv = w.WorkerServer(lab, folder / "w.sock", kit)
    srv.answer({"op": "handle", "kind": "hello", "cfg": {"run": "r1"}})
    pki.revoke_lab(tmp_path / "fed", "gamma")  # writes roster v2 into alpha's kit too
    srv.answer({"op": "handle", "kind": "round", "cfg": {"run": "r1", "round": 1}})
    assert set(lab.roster) == {"alpha", "beta", "gamma"}  # not in the middle of run r1
    srv.answer({"op": "handle", "kind": "hello", "cfg": {"run": "r2"}})
    assert set(lab.roster) == {"alpha", "beta"}
    assert srv.roster.version == 2
    # a roster that is not newer than the one in use is ignored
    old = tmp_path / "old"
    old.mkdir()
    for name in ("roster.json", "roster.sig"):
        (old / name).write_bytes((res.lab_kits["beta"] / name).read_bytes())
    pki.add_lab(tmp_path / "fed", "delta")  # v3 everywhere ...
    for name in ("roster.json", "roster.sig"):  # ... but alpha gets v2 back
        (res.lab_kits["alpha"] / name).write_bytes((old / name).read_bytes())
    srv.answer({"op": "handle", "kind": "hello", "cfg": {"run": "r3"}})
    assert set(lab.roster) == {"alpha", "beta"} and srv.roster.version == 2
