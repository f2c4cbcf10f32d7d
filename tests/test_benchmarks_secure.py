"""Fast checks of benchmarks/secure_aggregation.py (the benchmark itself runs for minutes)."""

from __future__ import annotations

import tomllib

from benchmarks import secure_aggregation as bench


def test_same_neighbourhood_for_fedlab_and_stock():
    assert bench.shape_of(10) == (9, 5) and bench.stock_shape(10, 9, 5) == (10, 5)
    assert bench.shape_of(50) == (16, 9) and bench.stock_shape(50, 16, 9) == (17, 9)
    app = tomllib.loads((bench.STOCK_APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert set(app["components"]) == {"serverapp", "clientapp"} and "job" in app["config"]


def test_micro_round_is_correct_and_reports_ratios():
    row = bench.run_micro(2000, 5, reps=1, rounds=1)
    assert row["correct"] and row["dropout"]["dropped"] >= 1
    assert row["ratio_lab_to_floor"] > 0 and row["ratio_server_to_floor"] > 0
    ratios, goals = bench.ratios_and_goals([row])
    assert "lab masking / keystream floor" in ratios["2000x5"] and goals == {}
