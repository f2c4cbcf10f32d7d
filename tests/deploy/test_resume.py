"""fedlab server resumes an interrupted run of its kit (unless --new-run)."""

from __future__ import annotations

import os
import time

from fedlab.cli import build_parser
from fedlab.deploy import interrupted_run


def test_the_newest_unfinished_run_is_resumed(tmp_path):
    assert interrupted_run(tmp_path / "none") is None
    done = tmp_path / "fed-1"
    done.mkdir()
    (done / "audit.jsonl").write_text("{}\n")
    (done / "summary.json").write_text("{}")
    assert interrupted_run(tmp_path) is None  # finished runs are never resumed
    old = tmp_path / "fed-2"
    old.mkdir()
    (old / "audit.jsonl").write_text("{}\n")
    os.utime(old / "audit.jsonl", (time.time() - 100, time.time() - 100))
    new = tmp_path / "fed-3"
    new.mkdir()
    (new / "audit.jsonl").write_text("{}\n")
    assert interrupted_run(tmp_path) == new.resolve()


def test_new_run_flag_exists():
    args = build_parser().parse_args(["server", "kit", "--new-run"])
    assert args.new_run is True
