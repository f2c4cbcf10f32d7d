"""One message exchange with a set of labs, with a deadline.

Flower's ``Grid.send_and_receive`` polls every 3 s in deployment (and its default
timeout is an hour); fedlab pushes with ``Grid.push_messages`` and polls
``Grid.pull_messages`` itself at a short interval, so an exchange ends as soon as
the last reply is in, and a lab that does not answer by the deadline counts as
dropped. Nothing waits forever.

The first half second it polls every 5 ms: in simulation Flower's engine hands out
messages on a 0.1 s tick, so a short exchange (secure aggregation's unmasking, a
small model's round) is answered within a tick, and a later look at the replies can
make the next exchange miss the next tick (a steady secure round of the heart demo took
three ticks, 0.3 s, at a 20 ms first poll growing by a quarter each time; two at 5 ms).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

log = logging.getLogger(__name__)

POLL_SECONDS = 0.005  # the first polls: short exchanges are bound by Flower's own ticks
FAST_POLL_SECONDS = 0.5  # poll that often for this long, then back off to at most 0.2 s
PULL_GRACE = 5.0  # a pull under way may finish this long after the deadline


@dataclass
class ExchangeResult:
    replies: dict[int, Message] = field(default_factory=dict)  # node id -> reply
    errors: dict[int, str] = field(default_factory=dict)  # node id -> error reported by the node
    missing: set[int] = field(default_factory=set)  # no reply before the deadline
    seconds: float = 0.0


def _pull(grid: Grid, ids: list[str], until: float) -> list[Message] | None:
    """``grid.pull_messages(ids)``, given up at monotonic time ``until`` (None then).

    Flower fetches a reply's content after its header, retrying for up to an hour and a
    half when the content is not there, which happens when a node is stopped between the
    two. The pull runs in a daemon thread so that such a reply cannot hold the run."""
    box: list[list[Message]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            box.append(list(grid.pull_messages(ids)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="fedlab-pull", daemon=True)
    thread.start()
    thread.join(max(0.0, until - time.monotonic()))
    if errors:
        raise errors[0]
    return box[0] if box else None


def exchange(grid: Grid, requests: Mapping[int, tuple[str, RecordDict]], timeout: float,
             *, ttl: float | None = None) -> ExchangeResult:
    """Send ``requests`` ({node id: (message type, content)}) and collect replies until all are
    in or ``timeout`` seconds have passed."""
    t0 = time.monotonic()
    out = ExchangeResult()
    if not requests:
        return out
    msgs = []
    for node_id, (mtype, content) in requests.items():
        msgs.append(Message(content, dst_node_id=node_id, message_type=mtype,
                            ttl=ttl if ttl is not None else max(timeout * 2, 60.0)))
    pending: dict[str, int] = {}
    for msg_id, msg in zip(grid.push_messages(msgs), msgs, strict=True):
        pending[msg_id] = msg.metadata.dst_node_id
    deadline = t0 + timeout
    interval = POLL_SECONDS
    while pending:
        replies = _pull(grid, list(pending), deadline + PULL_GRACE)
        if replies is None:
            log.warning("a reply started to arrive but its content never did (its node went "
                        "away while sending); counting the %d unanswered node(s) as dropped",
                        len(pending))
            break
        for reply in replies:
            node_id = pending.pop(reply.metadata.reply_to_message_id, None)
            if node_id is None:
                continue
            if reply.has_error():
                err = reply.error
                out.errors[node_id] = f"code {err.code}: {err.reason}"
            else:
                out.replies[node_id] = reply
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(interval)
        # Back off gently on long exchanges (training), never above 0.2 s.
        if time.monotonic() - t0 > FAST_POLL_SECONDS:
            interval = min(interval * 1.25, 0.2)
    out.missing = set(pending.values())
    out.seconds = time.monotonic() - t0
    if out.missing:
        log.warning("no reply from %d node(s) within %.0f s", len(out.missing), timeout)
    return out
