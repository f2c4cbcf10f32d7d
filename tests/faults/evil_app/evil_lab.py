"""fedlab's real ClientApp with faults injected (tests only).

FEDLAB_TEST_FAULTS is a JSON list of {"lab", "round", "stage", "kind"}:
- kind "fail": the lab's handler raises at that stage (setup, share, round, unmask),
  as a lab whose process dies there: the server gets an error reply (a dropout);
- kinds "nan", "inf", "shape", "dtype", "norm" (plain rounds): the lab sends a corrupted
  update, correctly signed with its own key (a broken or hostile lab, not a forger);
- kind "late" (with "seconds"): the lab answers, but only after that many seconds,
  holding its state meanwhile (a slow or paused machine): past the stage timeout, the
  server has moved on while Flower's engine still runs the late message;
- kind "poison" (secure rounds): the lab trains normally, then scales its update x1000
  and claims the maximum example count before masking: its contribution dominates the
  aggregate, which the server can only judge after unmasking.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from client import app as real
from fedlab.secure import signing
from fedlab.updates import digest_update

FAULTS: list[dict[str, Any]] = json.loads(os.environ.get("FEDLAB_TEST_FAULTS", "[]"))

app = ClientApp()


def _fault(lab: str, round_: int, stage: str) -> dict[str, Any] | None:
    for f in FAULTS:
        if f["lab"] == lab and int(f["round"]) == round_ and f["stage"] == stage:
            return f
    return None


def _round(msg: Message) -> int:
    try:
        return int(msg.content["cfg"]["round"])
    except (KeyError, TypeError, ValueError):
        return 0


def _corrupt(reply: Message, kind: str, worker: Any, round_: int, run: str) -> Message:
    vec = reply.content["update"]["v"].numpy().copy()
    if kind == "nan":
        vec[0] = np.nan
    elif kind == "inf":
        vec[-1] = np.inf
    elif kind == "shape":
        vec = np.concatenate([vec, np.zeros(3, dtype=np.float32)])
    elif kind == "dtype":
        vec = vec.astype(np.float64)
    elif kind == "norm":
        vec = vec * np.float32(1e7) + np.float32(1e3)
    metrics = dict(reply.content["metrics"])
    reply.content["update"] = ArrayRecord({"v": Array(np.ascontiguousarray(vec))})
    reply.content["meta"]["sig"] = signing.sign(worker.identity, run, round_, "round", worker.lab,
                                                digest_update(vec, metrics))
    return reply


def _run(stage: str, msg: Message, context: Context) -> Message:
    worker = real._local_worker(context)
    round_ = _round(msg)
    fault = _fault(worker.lab, round_, stage)  # type: ignore[attr-defined]
    kind = None if fault is None else str(fault["kind"])
    if kind == "late":
        honest_handle = type(worker).handle

        def late(self: Any, *args: Any) -> Any:
            reply = honest_handle(self, *args)
            time.sleep(float(fault["seconds"]))  # type: ignore[index]
            return reply

        worker.handle = late.__get__(worker)  # type: ignore[attr-defined]
        try:
            return real._handle(stage, msg, context)
        finally:
            del worker.handle  # type: ignore[attr-defined]
    if kind == "fail":
        raise RuntimeError(f"test fault: lab {worker.lab} fails at {stage} of round {round_}")  # type: ignore[attr-defined]
    if kind == "poison":
        honest = type(worker).train

        def poisoned(self: Any, r: int, global_vec: np.ndarray) -> tuple[np.ndarray, dict]:
            update, metrics = honest(self, r, global_vec)
            metrics["num-examples"] = 60_000
            return update * np.float32(1000.0), metrics

        worker.train = poisoned.__get__(worker)  # type: ignore[attr-defined]
        try:
            return real._handle(stage, msg, context)
        finally:
            del worker.train  # type: ignore[attr-defined]
    reply = real._handle(stage, msg, context)
    if kind in ("nan", "inf", "shape", "dtype", "norm"):
        reply = _corrupt(reply, kind, worker, round_, str(msg.content["cfg"]["run"]))
    return reply


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    return _run("hello", msg, context)


@app.train("round")
def train_round(msg: Message, context: Context) -> Message:
    return _run("round", msg, context)


@app.train("setup")
def setup(msg: Message, context: Context) -> Message:
    return _run("setup", msg, context)


@app.train("share")
def share(msg: Message, context: Context) -> Message:
    return _run("share", msg, context)


@app.train("unmask")
def unmask(msg: Message, context: Context) -> Message:
    return _run("unmask", msg, context)


@app.evaluate("final")
def final(msg: Message, context: Context) -> Message:
    return _run("final", msg, context)


@app.query("prep")
def prep(msg: Message, context: Context) -> Message:
    return _run("prep", msg, context)


@app.query("done")
def done(msg: Message, context: Context) -> Message:
    return _run("done", msg, context)
