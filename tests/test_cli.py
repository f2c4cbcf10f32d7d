"""The fedlab command: fast help (no heavy imports), one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedlab.cli import build_parser, main


def test_help_imports_nothing_heavy():
    code = ("import sys, fedlab.cli as c\n"
            "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('tensorflow', 'keras', 'ray', 'flwr', 'numpy') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
    for sub in ("simulate", "check-data", "report"):
        out = subprocess.run([sys.executable, "-m", "fedlab.cli", sub, "--help"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "usage: fedlab" in out.stdout


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("63,1,1,145,233,1,2,150,0,2.3\n")
    assert main(["check-data", "--data", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fedlab: error:") and "Traceback" not in err
    assert str(bad) in err


def test_debug_shows_the_traceback(tmp_path):
    from fedlab.errors import FedlabError

    with pytest.raises(FedlabError):
        main(["--debug", "check-data", "--data", str(tmp_path / "missing.csv")])


def test_check_data_on_a_good_file(capsys):
    from fedlab.data import heart_disease as hd

    assert main(["check-data", "--data", str(hd.data_file("va"))]) == 0
    out = capsys.readouterr().out
    assert "OK:" in out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "simulate" in capsys.readouterr().out
    assert build_parser().prog == "fedlab"
