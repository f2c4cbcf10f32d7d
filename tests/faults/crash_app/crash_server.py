"""fedlab's real ServerApp, dying in round FEDLAB_TEST_CRASH_ROUND (tests only).

The labs have trained that round and answered; the server dies just before it writes the
round's checkpoint, as a server killed there would: the run folder is left without
summary.json, its last checkpoint is the round before, and ``fedlab simulate --resume``
redoes the round.
"""

from __future__ import annotations

import os
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlab.runs import RunFolder
from server import app as real

CRASH_ROUND = int(os.environ.get("FEDLAB_TEST_CRASH_ROUND", "0"))

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    honest = RunFolder.checkpoint

    def checkpoint(self: RunFolder, round_: int, *args: Any, **kwargs: Any) -> Any:
        if round_ == CRASH_ROUND:
            raise RuntimeError(f"test fault: the server dies in round {round_}, before its "
                             "checkpoint")
        return honest(self, round_, *args, **kwargs)

    RunFolder.checkpoint = checkpoint  # type: ignore[method-assign]
    real.main(grid, context)
