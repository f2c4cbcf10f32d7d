"""Which rows each lab holds: published split, a lab's own file, simulation partitions."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from fedlab.config import default_config, parse_config
from fedlab.data import heart_disease as hd
from fedlab.errors import ConfigError
from fedlab.task import load_lab, load_simulation_lab, simulation_labs

SIZES = {"cleveland": (199, 104), "hungary": (172, 89), "switzerland": (30, 16), "va": (85, 45)}


def test_builtin_labs_hold_the_published_split():
    cfg = default_config()
    for lab, (n_train, n_test) in SIZES.items():
        d = load_lab(cfg, lab)
        assert (len(d.y_train), len(d.y_test)) == (n_train, n_test)
        train, test = hd.published_split(lab)
        assert sorted(d.lines_train.tolist()) == sorted(train)
        assert sorted(d.lines_test.tolist()) == sorted(test)


def test_a_labs_own_copy_of_its_hospital_file_gets_the_published_split(tmp_path):
    own = tmp_path / "my-data.csv"
    shutil.copy(hd.data_file("hungary"), own)
    d = load_lab(default_config(), "hungary", own)
    assert (len(d.y_train), len(d.y_test)) == SIZES["hungary"]
    assert sorted(d.lines_test.tolist()) == sorted(hd.published_split("hungary")[1])


def test_validation_rows_come_from_training_rows_only():
    cfg = parse_config(default_config().to_toml().replace(
        'dataset = "heart-disease"', 'dataset = "heart-disease"\nvalidation_fraction = 0.2'))
    d = load_lab(cfg, "cleveland")
    assert len(d.y_val) == 40 and len(d.y_train) == 159 and len(d.y_test) == 104
    train, test = hd.published_split("cleveland")
    assert set(d.lines_val.tolist()) <= set(train)
    assert not set(d.lines_val.tolist()) & set(test)


def _pooled_csv(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(300):
        site = ["north", "south", "east"][i % 3]
        x = rng.uniform(0, 10)
        rows.append(f"{site},{x:.3f},{int(x > 5 + (i % 3))}")
    path = tmp_path / "pooled.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


SCHEMA = """
[data]
file = "pooled.csv"
test_fraction = 0.25
[[data.columns]]
name = "site"
type = "ignore"
[[data.columns]]
name = "x"
type = "numeric"
min = 0
max = 10
[[data.columns]]
name = "y"
type = "label"
mapping = { "0" = 0, "1" = 1 }
"""


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "column"])
def test_simulation_partitions_of_a_pooled_file(tmp_path, partition):
    _pooled_csv(tmp_path)
    sim = {"iid": '[simulation]\npartition = "iid"\nnum_labs = 5\n',
           "dirichlet": '[simulation]\npartition = "dirichlet"\nnum_labs = 5\nalpha = 0.3\n',
           "column": '[simulation]\npartition = "natural"\ncolumn = "site"\n'}[partition]
    cfg = parse_config(SCHEMA + sim, base_dir=str(tmp_path))
    names = simulation_labs(cfg)
    assert names == (["east", "north", "south"] if partition == "column"
                     else [f"lab-{i}" for i in range(5)])
    labs = [load_simulation_lab(cfg, i) for i in range(len(names))]
    total = sum(len(d.y_train) + len(d.y_test) for d in labs)
    assert total == 300
    lines = np.concatenate([np.concatenate([d.lines_train, d.lines_test]) for d in labs])
    assert len(set(lines.tolist())) == 300  # disjoint cover of the file
    again = load_simulation_lab(cfg, 1)
    np.testing.assert_array_equal(again.lines_train, labs[1].lines_train)  # reproducible
    if partition == "column":
        assert all(len(d.y_train) + len(d.y_test) == 100 for d in labs)


def test_unknown_column_and_missing_file_are_clear(tmp_path):
    _pooled_csv(tmp_path)
    cfg = parse_config(SCHEMA + '[simulation]\npartition = "natural"\ncolumn = "hospital"\n',
                       base_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="'hospital' is not a column"):
        simulation_labs(cfg)
