"""The lab's warm training worker, and the ClientApp's way to reach it.

In deployment Flower starts a fresh ``flwr-clientapp`` process for every message.
Loading TensorFlow, the lab's data and the compiled model in each of them would
cost seconds per message, and would put the lab's data and keys into processes
Flower starts. So ``fedlab client`` starts one long-lived worker process
(:func:`serve`): it loads TensorFlow, the validated data, the compiled model (a
:class:`~client.lab.LabWorker`), the lab's identity key and the roster once, and
answers ``handle`` calls over a Unix socket. The ClientApp calls
:func:`call_worker`, which imports nothing heavy.

Who can reach the worker: the socket lives in a folder of mode 0700 and is itself
mode 0600, so only the lab's own user can open it; the worker also checks the
peer's user id (``SO_PEERCRED``) on every connection.

Secure-aggregation state (mask keys, shares, revealed neighbours) stays in the
worker: it passes the state of the current run to ``handle`` and keeps
``reply.state``; the ClientApp never receives it, so keys never enter a process
Flower starts. With differential privacy on, the lab's spent privacy is also kept in
a ledger file of the worker's (``<kit>/state/privacy/``, see :mod:`fedlab.ledger`),
so a resumed run (a new run id) or a restarted worker continues from it.

Wire format (no pickle; both directions)::

    b"FLW1" | u32 header length | u64 body length | header (UTF-8 JSON) | body

The header is JSON. Binary values are not inlined: a ``bytes`` value is written
as ``{"$bytes": [offset, length]}`` and a numpy array as ``{"$array": [dtype,
shape, offset, length]}``, both pointing into the body. Only plain numeric
dtypes are accepted, sizes are bounded, and every offset is checked, so a
malformed frame is an error, never code execution.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import stat
import struct
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from client.reply import Reply
from fedlab.errors import (
    ConfigError,
    DataError,
    FedlabError,
    KitError,
    ProtocolError,
    RoundAborted,
    RunError,
    SignatureError,
)

log = logging.getLogger(__name__)

MAGIC = b"FLW1"
_PREFIX = struct.Struct("!4sIQ")
MAX_HEADER = 64 << 20  # 64 MiB of JSON
MAX_BODY = 8 << 30  # 8 GiB of arrays and bytes
_DTYPES = frozenset({"<f4", "<f8", "<f2", "<i1", "<i2", "<i4", "<i8", "|u1", "|i1", "<u2",
                     "<u4", "<u8", "|b1"})
CALL_TIMEOUT = 3600.0  # seconds a ClientApp waits for the worker's answer
READ_TIMEOUT = 120.0  # seconds the worker waits for a request's bytes once connected
PING = "ping"
_ERRORS: dict[str, type[FedlabError]] = {
    cls.__name__: cls for cls in (FedlabError, ConfigError, DataError, ProtocolError,
                                  SignatureError, RoundAborted, KitError, RunError)
}


class WorkerUnavailable(RunError):
    """The ClientApp could not reach the lab's worker (not running, or it died)."""


# ------------------------------------------------------------------------------ encoding


class _Body:
    def __init__(self) -> None:
        self.parts: list[bytes | memoryview] = []
        self.size = 0

    def add(self, data: bytes | memoryview) -> tuple[int, int]:
        off = self.size
        self.parts.append(data)
        self.size += len(data)
        return off, len(data)


def _enc(value: Any, body: _Body) -> Any:
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, bytes | bytearray):
        return {"$bytes": list(body.add(bytes(value)))}
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        arr = arr.astype(dt, copy=False)
        if arr.dtype.str not in _DTYPES:
            raise ProtocolError(f"cannot send an array of dtype {arr.dtype} to the worker")
        off, n = body.add(memoryview(arr).cast("B"))
        return {"$array": [arr.dtype.str, list(arr.shape), off, n]}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_enc(v, body) for v in value]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or k.startswith("$"):
                raise ProtocolError(f"cannot send key {k!r} to the worker")
            out[k] = _enc(v, body)
        return out
    raise ProtocolError(f"cannot send a {type(value).__name__} to the worker")


def _dec(value: Any, body: memoryview) -> Any:
    if isinstance(value, list):
        return [_dec(v, body) for v in value]
    if not isinstance(value, dict):
        return value
    if "$bytes" in value:
        off, n = _span(value["$bytes"], body)
        return bytes(body[off:off + n])
    if "$array" in value:
        try:
            dtype, shape, off, n = value["$array"]
        except (TypeError, ValueError) as exc:
            raise ProtocolError("malformed array in a worker message") from exc
        if dtype not in _DTYPES or not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ProtocolError(f"array of dtype {dtype!r} / shape {shape!r} refused")
        off, n = _span([off, n], body)
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count * dt.itemsize != n:
            raise ProtocolError("array size does not match its shape in a worker message")
        return np.frombuffer(body[off:off + n], dtype=dt).reshape(shape).copy()
    return {k: _dec(v, body) for k, v in value.items()}


def _span(pair: Any, body: memoryview) -> tuple[int, int]:
    if (not isinstance(pair, list) or len(pair) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair)):
        raise ProtocolError("malformed reference in a worker message")
    off, n = pair
    if off < 0 or n < 0 or off + n > len(body):
        raise ProtocolError("a reference points outside a worker message")
    return off, n


def encode_frame(header: Mapping[str, Any]) -> list[bytes | memoryview]:
    """The frame for ``header`` (binary values go to the body)."""
    body = _Body()
    head = json.dumps(_enc(header, body), separators=(",", ":"), allow_nan=True).encode()
    if len(head) > MAX_HEADER or body.size > MAX_BODY:
        raise ProtocolError("message too large for the worker channel")
    return [_PREFIX.pack(MAGIC, len(head), body.size), head, *body.parts]


def send_frame(sock: socket.socket, header: Mapping[str, Any]) -> None:
    for part in encode_frame(header):
        sock.sendall(part)


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], min(n - got, 1 << 22))
        if k == 0:
            raise ConnectionError("the other side closed the connection")
        got += k
    return buf


def recv_frame(sock: socket.socket) -> dict[str, Any]:
    magic, hlen, blen = _PREFIX.unpack(bytes(_recv_exact(sock, _PREFIX.size)))
    if magic != MAGIC:
        raise ProtocolError("not a fedlab worker message (bad magic)")
    if hlen > MAX_HEADER or blen > MAX_BODY:
        raise ProtocolError("worker message too large")
    head = _recv_exact(sock, hlen)
    body = memoryview(_recv_exact(sock, blen)) if blen else memoryview(b"")
    try:
        raw = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"worker message header is not JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ProtocolError("worker message header is not an object")
    out = _dec(raw, body)
    assert isinstance(out, dict)
    return out


# Linux limits a Unix socket's path to 107 bytes; a lab's temporary folder can be deeper
# (a long TMPDIR). A longer path is reached through an open handle on its folder,
# /proc/self/fd/N/NAME, which the kernel resolves with the folder's own permissions.
_SUN_PATH_MAX = 100


@contextlib.contextmanager
def unix_address(path: str | os.PathLike[str]) -> Iterator[str]:
    """A path to bind or connect ``path`` with, short enough for AF_UNIX."""
    text = os.fspath(path)
    if len(os.fsencode(text)) <= _SUN_PATH_MAX:
        yield text
        return
    folder, name = os.path.split(text)
    fd = os.open(folder or ".", os.O_PATH | os.O_DIRECTORY)
    try:
        short = f"/proc/self/fd/{fd}/{name}"
        if len(os.fsencode(short)) > _SUN_PATH_MAX:
            raise OSError(f"socket name {name!r} is too long for a Unix socket")
        yield short
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------ client side


def call_worker(socket_path: str, kind: str, cfg: Mapping[str, Any], vector: np.ndarray | None,
                state: bytes | None = None, *, timeout: float = CALL_TIMEOUT) -> Reply:
    """Ask the lab's warm worker to answer one server request (used by the ClientApp).

    ``state`` is ignored: in deployment the worker keeps the secure-aggregation state
    itself, and the reply never carries it (``reply.state`` is always None)."""
    if state is not None:
        log.debug("state passed to call_worker ignored: the worker keeps its own")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            with unix_address(socket_path) as addr:
                sock.connect(addr)
            send_frame(sock, {"op": "handle", "kind": kind, "cfg": dict(cfg),
                              "vector": vector})
            res = recv_frame(sock)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise WorkerUnavailable(
            f"the lab's training worker is not ready (still loading) or not running (no "
            f"socket at {socket_path}); if this lasts, restart `fedlab client`") from exc
    except (OSError, ConnectionError) as exc:
        raise WorkerUnavailable(f"lost the lab's training worker at {socket_path} ({exc}); "
                                "see the `fedlab client` output") from exc
    return _reply_from(res)


def _reply_from(res: Mapping[str, Any]) -> Reply:
    if not res.get("ok"):
        err = res.get("error") or {}
        cls = _ERRORS.get(str(err.get("type")), RunError)
        raise cls(str(err.get("message", "the lab's worker failed without a message")))
    vec = res.get("vector")
    if vec is not None and not isinstance(vec, np.ndarray):
        raise ProtocolError("the worker's reply vector is not an array")
    meta = res.get("meta") or {}
    metrics = res.get("metrics") or {}
    if not isinstance(meta, dict) or not isinstance(metrics, dict):
        raise ProtocolError("malformed reply from the lab's worker")
    return Reply(meta=meta, metrics=metrics, vector=vec, state=None)


def ping(socket_path: str, timeout: float = 5.0) -> dict[str, Any]:
    """The worker's identity ({"lab", "pid", "num-train"}) if it answers, else raises OSError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        with unix_address(socket_path) as addr:
            sock.connect(addr)
        send_frame(sock, {"op": PING})
        res = recv_frame(sock)
    if not res.get("ok"):
        raise ConnectionError(str(res.get("error")))
    return dict(res.get("meta") or {})


# ------------------------------------------------------------------------------ server side


class WorkerServer:
    """Answers ``handle`` calls for one lab over a Unix socket, one at a time."""

    def __init__(self, lab_worker: Any, socket_path: Path, kit: Any = None) -> None:
        self.lab = lab_worker
        self.socket_path = Path(socket_path)
        self.roster = RosterWatch(kit) if kit is not None else None
        self.runs_seen: set[str] = set()
        self.states: dict[str, bytes | None] = {}  # run id -> secure-aggregation state
        self.recent: dict[bytes, dict[str, Any]] = {}  # request digest -> the answer given
        self.finished_runs = 0
        self.sock: socket.socket | None = None

    def bind(self) -> None:
        folder = self.socket_path.parent
        st = folder.stat()
        if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
            raise KitError(f"{folder} must be a folder of this user with mode 0700 (it holds "
                           "the worker's socket); choose another --socket-dir")
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            with unix_address(self.socket_path) as addr:
                sock.bind(addr)
        finally:
            os.umask(old)
        os.chmod(self.socket_path, 0o600)
        sock.listen(8)
        sock.settimeout(1.0)
        self.sock = sock

    def serve_forever(self, parent_pid: int | None = None) -> None:
        assert self.sock is not None
        while True:
            if parent_pid is not None and os.getppid() != parent_pid:
                log.warning("fedlab client is gone; the worker stops")
                return
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                self._serve_one(conn)

    def _serve_one(self, conn: socket.socket) -> None:
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
            if uid != os.getuid():
                log.warning("refused a connection from user id %d", uid)
                return
            conn.settimeout(READ_TIMEOUT)
            req = recv_frame(conn)
        except (OSError, ConnectionError, ProtocolError, struct.error) as exc:
            log.warning("bad request on the worker socket: %s", exc)
            return
        conn.settimeout(None)
        try:
            res = self.answer(req)
        except FedlabError as exc:
            log.warning("request %s refused: %s", req.get("kind"), exc)
            res = {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc)}}
        except Exception as exc:  # a bug must not take the lab down: report it to the server
            log.exception("request %s failed", req.get("kind"))
            res = {"ok": False, "error": {"type": "RunError",
                                          "message": f"lab worker error: {type(exc).__name__}: "
                                                     f"{exc}"}}
        try:
            send_frame(conn, res)
        except OSError as exc:
            log.warning("could not answer the ClientApp: %s", exc)

    def answer(self, req: Mapping[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == PING:
            return {"ok": True, "meta": {"lab": self.lab.lab, "pid": os.getpid(),
                                         "num-train": int(len(self.lab.data.y_train))}}
        if op != "handle":
            raise ProtocolError(f"unknown worker operation {op!r}")
        kind = str(req.get("kind"))
        cfg = req.get("cfg") or {}
        if not isinstance(cfg, dict):
            raise ProtocolError("request cfg must be an object")
        vector = req.get("vector")
        if vector is not None and not isinstance(vector, np.ndarray):
            raise ProtocolError("request vector must be an array")
        run = str(cfg.get("run", ""))
        if self.roster is not None and run not in self.runs_seen:
            # A new run: take the roster the coordinator may have sent since (a lab added or
            # revoked); never in the middle of a run, whose secure session it fixes.
            self.runs_seen.add(run)
            keys = self.roster.refresh()
            if keys is not None:
                self.lab.roster = keys
        # Flower may run one message twice: when a ClientApp process starts too slowly its
        # task is handed to a second process while the first one still runs. Answering the
        # same request again from the new state would change the lab's secure-aggregation
        # state behind the server's back, so a repeated request gets the same answer.
        key = request_digest(kind, cfg, vector)
        if key in self.recent:
            log.info("run %s: %s request repeated by Flower; the same answer is sent again",
                     run, kind)
            return self.recent[key]
        t0 = time.perf_counter()
        reply: Reply = self.lab.handle(kind, cfg, vector, self.states.get(run))
        if reply.state is not None:
            self.states[run] = reply.state
            while len(self.states) > 4:  # keep the state of the last few runs only
                self.states.pop(next(iter(self.states)))
        secs = time.perf_counter() - t0
        if kind == "round":
            log.info("run %s round %s: answered in %.2f s", run, cfg.get("round"), secs)
        elif kind == "final":
            self.states.pop(run, None)
            log.info("run %s: final evaluation sent", run)
        elif kind == "done":
            self.finished_runs += 1
            log.info("run %s: the server has every final evaluation; the run is over for this "
                     "lab", run)
        elif kind == "hello":
            log.info("run %s: joined", run)
        res = {"ok": True, "meta": reply.meta, "metrics": reply.metrics, "vector": reply.vector}
        self.recent[key] = res
        while len(self.recent) > 16:
            self.recent.pop(next(iter(self.recent)))
        return res


class RosterWatch:
    """Notices a new roster.json/roster.sig in the kit and loads it (signature checked;
    an older version than the one in use is refused)."""

    def __init__(self, kit: Any) -> None:
        self.path = Path(kit.roster_path)
        self.ca = Path(kit.ca_cert_path)
        self.lab = str(kit.name)
        self.version = int(kit.roster.version)
        self.stamp = self._stamp()

    def _stamp(self) -> tuple[int, int, int]:
        try:
            a, b = self.path.stat(), self.path.with_name("roster.sig").stat()
        except OSError:
            return (0, 0, 0)
        return (a.st_mtime_ns, b.st_mtime_ns, a.st_size)

    def refresh(self) -> dict[str, Any] | None:
        """The active labs' identity keys of a newer roster, or None if nothing changed."""
        from fedlab.pki import load_roster

        stamp = self._stamp()
        if stamp == self.stamp:
            return None
        try:
            roster = load_roster(self.path, self.ca)
        except FedlabError as exc:  # e.g. roster.json copied, roster.sig not yet
            log.warning("the kit's roster changed but cannot be used yet: %s", exc)
            return None
        self.stamp = stamp
        if roster.version < self.version:
            log.warning("refused roster version %d: this lab already uses version %d",
                        roster.version, self.version)
            return None
        if roster.version == self.version:
            return None
        self.version = roster.version
        entry = roster.get(self.lab)
        if entry is None or entry.revoked:
            log.warning("roster version %d no longer admits lab %s", roster.version, self.lab)
        log.info("roster version %d in use (active labs: %s)", roster.version,
                 ", ".join(e.name for e in roster.active()))
        return dict(roster.identity_keys())


def request_digest(kind: str, cfg: Mapping[str, Any], vector: np.ndarray | None) -> bytes:
    """SHA-256 of a request's kind, small values (canonical JSON) and vector bytes."""
    import hashlib

    body = _Body()
    head = json.dumps([kind, _enc(dict(cfg), body)], sort_keys=True, separators=(",", ":"),
                      allow_nan=True)
    h = hashlib.sha256(head.encode())
    for part in body.parts:
        h.update(part)
    if vector is not None:
        arr = np.ascontiguousarray(vector)
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(memoryview(arr).cast("B"))
    return h.digest()


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def build_lab_worker(kit_dir: Path, data_path: Path) -> Any:
    """Load the kit, the federation, the data and the model: the warm LabWorker."""
    from client.lab import LabWorker
    from fedlab.config import load_config
    from fedlab.pki import load_lab_kit
    from fedlab.task import load_lab

    kit = load_lab_kit(kit_dir)
    cfg = load_config(kit.config_path)
    data = load_lab(cfg, kit.name, data_path)
    worker = LabWorker(cfg, kit.name, data, kit.identity_key, kit.roster.identity_keys())
    worker.kit = kit
    if cfg.privacy.mode != "off":
        # The lab's own record of the privacy it has spent per run, which survives a
        # resumed run (new run id) and a restart of this worker (fedlab.ledger).
        from fedlab.ledger import LedgerStore

        worker.ledger_store = LedgerStore(Path(kit_dir) / "state" / "privacy", kit.federation)
        worker.ledger_store.prepare()
    return worker


def warm_up(worker: Any) -> None:
    """Trace the train and evaluate steps once, so the first round is as fast as the rest.

    Harmless: every round sets the weights and resets the optimizer before training."""
    trainer = getattr(worker, "trainer", None)
    data = getattr(worker, "data", None)
    if trainer is None or getattr(data, "x_train", None) is None or not len(data.y_train):
        return  # nothing to train on yet (e.g. texts waiting for the federated vocabulary)
    k = min(len(data.y_train), trainer.training.batch_size)
    weights = trainer.get_weights()
    trainer.fit(weights, data.x_train[:k], data.y_train[:k], epochs=1)
    trainer.evaluate(weights, data.x_train[:k], data.y_train[:k])


def serve(kit_dir: Path, data_path: Path, socket_path: Path, parent_pid: int | None,
          ready_file: Path | None = None) -> None:
    """Worker process body: load everything, then answer until the parent goes away."""
    t0 = time.perf_counter()
    worker = build_lab_worker(kit_dir, data_path)
    warm_up(worker)
    server = WorkerServer(worker, socket_path, getattr(worker, "kit", None))
    server.bind()
    if ready_file is not None:
        info = {"lab": worker.lab, "pid": os.getpid(), "num-train": int(len(worker.data.y_train)),
                "socket": str(socket_path)}
        tmp = ready_file.with_name(ready_file.name + ".tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, ready_file)
    log.info("worker of lab %s ready in %.1f s (%d training rows), socket %s", worker.lab,
             time.perf_counter() - t0, len(worker.data.y_train), socket_path)
    server.serve_forever(parent_pid)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m client.worker",
                                description="fedlab's warm training worker (started by "
                                            "`fedlab client`; not meant to be run by hand)")
    p.add_argument("--kit", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--socket", required=True)
    p.add_argument("--ready-file", help="written (JSON) once the worker listens")
    p.add_argument("--parent-pid", type=int)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker: %(message)s",
                        datefmt="%H:%M:%S")
    for name in ("tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    _die_with_parent()
    if args.parent_pid is not None and os.getppid() != args.parent_pid:
        return 1
    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        serve(Path(args.kit), Path(args.data), Path(args.socket), args.parent_pid,
              Path(args.ready_file) if args.ready_file else None)
    except FedlabError as exc:
        print(f"fedlab: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        with contextlib.suppress(OSError):
            Path(args.socket).unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
