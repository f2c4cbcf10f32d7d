"""Fast checks of benchmarks/privacy.py (the benchmark itself trains for many minutes)."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import privacy as bench
from fedlab.config import parse_config


def _row(kind, eps, seed, acc, pooled, spent=None, nm=None):
    return {"bench": "dp_run", "kind": kind, "epsilon": eps, "seed": seed, "rounds": 5,
            "per_hospital_mean": acc, "pooled": pooled,
            "epsilon_spent": spent or {}, "noise_multiplier": nm or {}}


ROWS = [
    _row("none", None, 0, 0.78, 0.79), _row("none", None, 1, 0.76, 0.78),
    _row("record", 1.0, 0, 0.74, 0.75, {"cleveland": 0.99, "va": 1.0}, {"va": 9.5}),
    _row("record", 1.0, 1, 0.72, 0.74, {"cleveland": 1.0, "va": 0.98}, {"va": 9.4}),
    _row("record", 0.1, 0, 0.60, 0.61, {"cleveland": 0.1}),
    _row("lab", 1.0, 0, 0.40, 0.45, {"cleveland": 1.0}) | {"secagg_truncated": 0.0},
    _row("lab", 10.0, 0, 0.55, 0.50, {"cleveland": 9.9}),
    {"bench": "dp_run", "kind": "lab", "epsilon": 0.1, "seed": 0, "error": "RunError: x"},
]


def test_plot_writes_a_png(tmp_path):
    points = bench.summarize(ROWS)
    out = bench.plot(points, tmp_path / "sub" / "privacy.png",
                     constant={"per_hospital": 0.64, "pooled": 0.52})
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_summary_over_seeds_and_goal():
    points = bench.summarize(ROWS)
    assert [(p["kind"], p["epsilon"]) for p in points] == [
        ("none", None), ("record", 0.1), ("record", 1.0), ("lab", 1.0), ("lab", 10.0)]
    rec1 = points[2]
    assert rec1["seeds"] == 2 and math.isclose(rec1["per_hospital"]["mean"], 0.73)
    assert (rec1["per_hospital"]["min"], rec1["per_hospital"]["max"]) == (0.72, 0.74)
    assert rec1["epsilon_spent"] == {"cleveland": 1.0, "va": 1.0}  # largest over seeds
    assert rec1["flamby"] == 0.699 and points[3]["flamby"] is None
    goal = bench.goal_row(points)
    assert goal["record eps 1 >= 0.7"] is True and math.isclose(goal["cost_of_dp"], 0.04)
    table = bench.markdown_table(points)
    assert table.count("\n") == 1 + len(points) and "| no DP |" in table


def test_configs_are_valid_federations():
    for kind, eps in (("none", None), ("record", 1.0), ("lab", 0.3)):
        setting = bench.setting_for(kind)
        cfg = parse_config(bench.federation_toml(kind, eps, 2, setting))
        assert cfg.privacy.mode == ("off" if kind == "none" else kind)
        assert cfg.secure and cfg.seed == 2 and cfg.rounds == setting.rounds
        assert cfg.lab_names() == ("cleveland", "hungary", "switzerland", "va")
        assert getattr(cfg.data, "standardize", "range") == "range"  # public bounds only
        if eps is not None:
            assert cfg.privacy.epsilon == eps and cfg.privacy.delta == bench.DELTA
            assert cfg.privacy.clip == setting.clip
    with pytest.raises(ValueError):
        bench.federation_toml("record", None, 0, bench.RECORD)


def test_constant_baseline_is_the_always_disease_answer():
    # FLamby split, test rows positive: 48/104, 33/89, 15/16, 35/45
    assert bench.constant_baseline() == {"per_hospital": 0.6369, "pooled": 0.5157}


def test_encoder_truncation():
    assert bench.encoder_truncation(0.0, 1.0, 4) == 0.0
    assert bench.encoder_truncation(10.0, 0.1, 4) < 1e-6  # share std 0.5
    assert bench.encoder_truncation(200.0, 1.0, 4) > 0.9  # share std 100: nearly all cut


def test_argument_parsing():
    quick = bench.parse_args(["--quick"])
    assert quick.epsilons == list(bench.QUICK_EPSILONS) and quick.seeds == 1
    assert quick.out is None and quick.kinds == ["none", "record", "lab"] and quick.retries == 1
    full = bench.parse_args(["--out", "x.png", "--kinds", "record", "--seeds", "2",
                             "--epsilons", "0.5", "2"])
    assert (full.out, full.kinds, full.seeds, full.epsilons) == ("x.png", ["record"], 2, [0.5, 2.0])
    default = bench.parse_args([])
    assert default.epsilons == list(bench.EPSILONS) and default.seeds == 2 and default.first_seed == 0
    assert bench.parse_args(["--seeds", "1", "--first-seed", "2"]).first_seed == 2
    for bad in (["--kinds", "user"], ["--epsilons", "0"], ["--seeds", "0"], ["--first-seed", "-1"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_replot_needs_no_training(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in ROWS) + "\nnot json\n")
    out = tmp_path / "p.png"
    assert bench.main(["--replot", str(rows), "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and '"dp_goal"' in capsys.readouterr().out
