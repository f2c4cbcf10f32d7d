"""TensorBoard event files of a run: ``<run folder>/tensorboard/``, written as rounds happen.

``tensorboard --logdir runs/`` then shows every run. Scalars (one event per step):

- ``accuracy/<lab>``, ``loss/<lab>``, ``val_accuracy/<lab>``, ``val_loss/<lab>`` and the
  same for ``pooled`` (example-weighted, as in metrics.jsonl): the global model *after
  round step* (step 0 = the initial model; the last step is the final evaluation);
- ``train_loss/<lab>`` and, with differential privacy on, ``epsilon/<lab>`` (what the lab
  has spent in all, as it reports it): the training of round step;
- ``round/seconds``, ``round/contributors``, ``round/dropped``, ``round/aggregated``.

The ServerApp already has TensorFlow loaded (Keras), so the events are TensorFlow's own
format (``tf.io.TFRecordWriter`` records of ``Event`` protos with the scalars plugin's
metadata, what ``tf.summary.scalar`` writes). They are built as protos rather than through
``tf.summary``: its eager ops cost about a millisecond per scalar on this machine (tens
of milliseconds per round), the protos well under one for the whole round.

A resumed run redoes the rounds after its last checkpoint: what they wrote is dropped
from the existing event files (the same rule as ``RunFolder.drop_metrics_after``), and
the new rounds go to a new file, so the curves continue without duplicate points.
Writing event files never fails a run: an error is logged once and writing stops.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from server.federation import pooled

log = logging.getLogger(__name__)

FOLDER = "tensorboard"
# Tags whose step is the round of the model measured (written while the next round runs).
EVAL_PREFIXES = ("accuracy/", "loss/", "val_accuracy/", "val_loss/")


def _scalar(tag: str, value: float) -> Any:
    from tensorflow.core.framework import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2

    return summary_pb2.Summary.Value(
        tag=tag, metadata=_metadata(),
        tensor=tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT,
                                      tensor_shape=tensor_shape_pb2.TensorShapeProto(),
                                      float_val=[value]))


_META: Any = None


def _metadata() -> Any:
    global _META
    if _META is None:
        from tensorflow.core.framework import summary_pb2

        _META = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
            data_class=summary_pb2.DATA_CLASS_SCALAR)
    return _META


def read_events(path: Path) -> list[Any]:
    """The ``Event`` protos of one event file (up to a cut-off last record, if any)."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    out = []
    try:
        for record in tf.data.TFRecordDataset(str(path)):
            out.append(event_pb2.Event.FromString(record.numpy()))
    except tf.errors.DataLossError:  # the process died while writing the last record
        log.info("%s: a cut-off last record is dropped", path)
    return out


def _kept(tag: str, step: int, after: int) -> bool:
    if tag.startswith(EVAL_PREFIXES):
        return step < after  # the model after round `after` is measured in round after + 1
    return step <= after


def trim_events(folder: Path, after: int) -> None:
    """Drop from every event file in ``folder`` what rounds after ``after`` wrote."""
    import tensorflow as tf

    for path in sorted(folder.glob("*tfevents*")):
        events = read_events(path)
        kept = []
        changed = False
        for ev in events:
            if ev.HasField("summary"):
                values = [v for v in ev.summary.value if _kept(v.tag, ev.step, after)]
                if len(values) != len(ev.summary.value):
                    changed = True
                    if not values:
                        continue
                    del ev.summary.value[:]
                    ev.summary.value.extend(values)
            kept.append(ev)
        # A record is its bytes plus 16 (length, two CRCs): a size that does not add up
        # means a cut-off last record, which goes too.
        if not changed and path.stat().st_size == sum(len(e.SerializeToString()) + 16
                                                      for e in events):
            continue
        tmp = path.with_name(f".{path.name}.trim")
        with tf.io.TFRecordWriter(str(tmp)) as w:
            for ev in kept:
                w.write(ev.SerializeToString())
        os.replace(tmp, path)


class RunBoard:
    """Writes a run's per-round scalars to ``<run folder>/tensorboard/`` (see module doc).

    ``enabled=False`` (benchmarks' synthetic runs, which load no TensorFlow) makes every
    method a no-op. ``seconds`` is the time spent writing, for the record."""

    def __init__(self, run_dir: str | Path, *, resume_after: int | None = None,
                 enabled: bool = True) -> None:
        self.folder = Path(run_dir) / FOLDER
        self.writer: Any = None
        self.seconds = 0.0  # spent writing rounds' events
        self.setup_seconds = 0.0  # spent opening (and, on resume, trimming) the files
        self.rounds = 0
        if not enabled:
            return
        t0 = time.perf_counter()
        try:
            import tensorflow as tf
            from tensorflow.core.util import event_pb2

            if resume_after is not None and self.folder.is_dir():
                trim_events(self.folder, resume_after)
            self.folder.mkdir(exist_ok=True)
            name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                    f"{os.getpid()}.0.v2")
            self.writer = tf.io.TFRecordWriter(str(self.folder / name))
            self.writer.write(event_pb2.Event(wall_time=time.time(),
                                              file_version="brain.Event:2").SerializeToString())
            self.writer.flush()
        except Exception as exc:  # noqa: BLE001 - event files are a convenience, never fatal
            self._failed(exc)
        self.setup_seconds = time.perf_counter() - t0

    def _failed(self, exc: BaseException) -> None:
        log.warning("TensorBoard event files in %s are not written further: %s: %s",
                    self.folder, type(exc).__name__, exc)
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
        self.writer = None

    def scalars(self, step: int, values: Iterable[tuple[str, Any]]) -> None:
        """One event at ``step`` with every finite value of ``values`` (tag, number)."""
        if self.writer is None:
            return
        t0 = time.perf_counter()
        try:
            from tensorflow.core.framework import summary_pb2
            from tensorflow.core.util import event_pb2

            out = []
            for tag, value in values:
                if value is None or isinstance(value, str):
                    continue
                number = float(value)  # bools as 0/1
                if math.isfinite(number):
                    out.append(_scalar(tag, number))
            if out:
                ev = event_pb2.Event(wall_time=time.time(), step=int(step),
                                     summary=summary_pb2.Summary(value=out))
                self.writer.write(ev.SerializeToString())
                self.writer.flush()
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)
        self.seconds += time.perf_counter() - t0

    def log_round(self, rnd: int, lab_metrics: Mapping[str, Mapping[str, Any]], *,
                  seconds: float, contributors: int, dropped: int, aggregated: bool) -> None:
        """What round ``rnd`` produced: the labs' evaluations of the model they received
        (after round ``rnd - 1``), their training, the round's own figures."""
        if self.writer is None:
            return
        self.rounds += 1
        self.scalars(rnd - 1, _evaluations(lab_metrics))
        train: list[tuple[str, Any]] = []
        for lab, m in sorted(lab_metrics.items()):
            train.append((f"train_loss/{lab}", m.get("train-loss")))
            train.append((f"epsilon/{lab}", m.get("epsilon")))
        train += [("round/seconds", seconds), ("round/contributors", contributors),
                  ("round/dropped", dropped), ("round/aggregated", aggregated)]
        self.scalars(rnd, train)

    def log_final(self, rnd: int, final: Mapping[str, Mapping[str, Any]]) -> None:
        """The final evaluation: the model after round ``rnd`` at every lab."""
        if self.writer is None:
            return
        self.scalars(rnd, _evaluations(final))

    def close(self) -> None:
        if self.writer is None:
            return
        with contextlib.suppress(Exception):
            self.writer.close()
        self.writer = None
        log.info("TensorBoard events in %s: %.2f ms per round to write, %.0f ms to open",
                 self.folder, 1000 * self.seconds / max(1, self.rounds),
                 1000 * self.setup_seconds)


def _evaluations(lab_metrics: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for lab, m in sorted(lab_metrics.items()):
        out += [(f"accuracy/{lab}", m.get("test-accuracy")), (f"loss/{lab}", m.get("test-loss")),
                (f"val_accuracy/{lab}", m.get("val-accuracy")),
                (f"val_loss/{lab}", m.get("val-loss"))]
    rows = list(lab_metrics.values())
    if rows:
        test = pooled(rows)
        out += [("accuracy/pooled", test["accuracy"]), ("loss/pooled", test["loss"])]
        val = pooled(rows, prefix="val")
        if val["examples"]:
            out += [("val_accuracy/pooled", val["accuracy"]), ("val_loss/pooled", val["loss"])]
    return out
