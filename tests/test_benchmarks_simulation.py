"""Fast checks of benchmarks/simulation.py (the benchmark itself runs for minutes)."""

from __future__ import annotations

import sys
import tomllib

from benchmarks import simulation as bench
from fedlab.config import parse_config
from fedlab.task import simulation_labs


def test_job_is_expressible_in_federation_toml():
    cfg = parse_config(bench.federation_toml(10, 6, 3, [64, 64], 16, 0.05, 0))
    assert simulation_labs(cfg) == [f"lab-{i}" for i in range(10)]
    assert cfg.model.name == "mlp" and cfg.model.hidden == (64, 64)
    assert (cfg.training.local_epochs, cfg.training.batch_size) == (3, 16)
    assert not cfg.simulation.baselines


def test_steady_round_skips_warm_up():
    assert bench.steady([9.0, 1.0, 3.0, 2.0]) == 2.0


def test_stock_app_builds_fedlabs_architecture(tmp_path, monkeypatch):
    app = tomllib.loads((bench.STOCK_APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert set(app["components"]) == {"serverapp", "clientapp"} and "job" in app["config"]
    monkeypatch.syspath_prepend(str(bench.STOCK_APP))
    cfg_path = tmp_path / "federation.toml"
    cfg_path.write_text(bench.federation_toml(3, 3, 1, [8, 4], 16, 0.05, 0))
    job = tmp_path / "job.json"
    job.write_text(f'{{"config": "{cfg_path}", "times": "{tmp_path / "t.jsonl"}", '
                   '"num_labs": 3}')
    from stocktf.task import initial_weights, load_data, load_model

    try:
        stock = [w.shape for w in load_model(str(job)).get_weights()]
        assert stock == [w.shape for w in initial_weights(str(job))]
        x, y, xt, yt = load_data(str(job), 0)
        assert len(x) == len(y) > 0 and len(xt) == len(yt) > 0
    finally:
        for name in [m for m in sys.modules if m == "stocktf" or m.startswith("stocktf.")]:
            del sys.modules[name]
