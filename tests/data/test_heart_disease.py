"""The bundled heart-disease data: files, schema, the published FLamby split."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fedlab.data import LabData, heart_disease, load_csv, split_validation
from fedlab.errors import ConfigError, DataError

EXPECTED = {
    # hospital: (rows in file, rows kept, train, test)
    "cleveland": (303, 303, 199, 104),
    "hungary": (294, 261, 172, 89),
    "switzerland": (123, 46, 30, 16),
    "va": (200, 130, 85, 45),
}


def test_hospitals_and_names():
    assert heart_disease.HOSPITALS == ("cleveland", "hungary", "switzerland", "va")
    assert set(heart_disease.DISPLAY_NAMES) == set(heart_disease.HOSPITALS)
    assert heart_disease.data_file("hungary").name == "processed.hungarian.data"
    with pytest.raises(ConfigError, match="'cleveland', 'hungary', 'switzerland', 'va'"):
        heart_disease.data_file("berlin")


def test_bundled_files_match_md5sums():
    folder = heart_disease.DATA_DIR
    lines = (folder / "MD5SUMS").read_text().split("\n")
    sums = dict(reversed(line.split()) for line in lines if line.strip())
    assert len(sums) == 4
    for hospital in heart_disease.HOSPITALS:
        path = heart_disease.data_file(hospital)
        assert hashlib.md5(path.read_bytes()).hexdigest() == sums[path.name]
    attribution = (folder / "ATTRIBUTION.md").read_text()
    assert "CC BY 4.0" in attribution and "Janosi" in attribution and "FLamby" in attribution


def test_schema_shape():
    s = heart_disease.schema()
    assert s.feature_names == (
        "age",
        "sex",
        "cp=2",
        "cp=3",
        "cp=4",
        "trestbps",
        "chol",
        "fbs",
        "restecg=1",
        "restecg=2",
        "thalach",
        "exang",
        "oldpeak",
    )
    assert s.num_classes == 2
    assert [c.name for c in s.columns if c.type == "ignore"] == ["slope", "ca", "thal"]


@pytest.mark.parametrize("hospital", heart_disease.HOSPITALS)
def test_rows_kept_after_dropping_missing(hospital):
    rows, kept, _, _ = EXPECTED[hospital]
    table = load_csv(heart_disease.data_file(hospital), heart_disease.schema())
    assert table.report.rows_read == rows
    assert table.report.rows_kept == kept
    assert table.report.imputed == {}
    # Every value fits the declared ranges, so the min/max scaling lands in [0, 1].
    assert table.x.min() >= 0.0 and table.x.max() <= 1.0


def test_total_rows_and_pooled_test():
    labs = heart_disease.load_all()
    assert sum(lab.report.rows_kept for lab in labs) == 740
    assert sum(lab.num_test for lab in labs) == 254
    assert sum(lab.num_train for lab in labs) == 486


@pytest.mark.parametrize("hospital", heart_disease.HOSPITALS)
def test_published_split_sizes(hospital):
    _, kept, n_train, n_test = EXPECTED[hospital]
    train, test = heart_disease.published_split(hospital)
    assert (len(train), len(test)) == (n_train, n_test)
    lab = heart_disease.load_hospital(hospital)
    assert isinstance(lab, LabData) and lab.name == hospital
    assert (lab.num_train, lab.num_val, lab.num_test) == (n_train, 0, n_test)
    assert lab.x_train.shape == (n_train, 13) and lab.x_val.shape == (0, 13)
    assert lab.y_val.shape == (0,) and lab.y_val.dtype == np.int64
    assert lab.lines_train.tolist() == train and lab.lines_test.tolist() == test


def test_switzerland_training_rows_are_all_positive():
    lab = heart_disease.load_hospital("switzerland")
    assert lab.y_train.tolist() == [1] * 30
    assert lab.y_test.tolist().count(0) == 1


@pytest.mark.parametrize("hospital", heart_disease.HOSPITALS)
def test_validation_carved_from_train_only(hospital):
    _, _, n_train, n_test = EXPECTED[hospital]
    train_lines, test_lines = heart_disease.published_split(hospital)
    lab = heart_disease.load_hospital(hospital, val_fraction=0.2, seed=3)
    train, val, test = (set(lab.lines_train), set(lab.lines_val), set(lab.lines_test))
    assert not (train & val) and not (train & test) and not (val & test)
    assert val <= set(train_lines) and train <= set(train_lines)
    assert test == set(test_lines) and lab.num_test == n_test
    assert lab.num_train + lab.num_val == n_train
    assert lab.num_val == round(0.2 * n_train)
    # The rows really are the rows of those lines.
    full = heart_disease.load_hospital(hospital)
    position = {line: i for i, line in enumerate(full.lines_train)}
    np.testing.assert_array_equal(
        lab.x_val, full.x_train[[position[line] for line in lab.lines_val]]
    )
    np.testing.assert_array_equal(lab.x_test, full.x_test)


def test_validation_is_seeded_and_stratified():
    a = heart_disease.load_hospital("cleveland", val_fraction=0.25, seed=7)
    b = heart_disease.load_hospital("cleveland", val_fraction=0.25, seed=7)
    c = heart_disease.load_hospital("cleveland", val_fraction=0.25, seed=8)
    np.testing.assert_array_equal(a.lines_val, b.lines_val)
    assert a.lines_val.tolist() != c.lines_val.tolist()
    train_rate = np.concatenate([a.y_train, a.y_val]).mean()
    assert abs(a.y_val.mean() - train_rate) < 0.02  # stratified: same label mix


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 2, float("nan"), True, "0.2"])
def test_bad_val_fraction(fraction):
    with pytest.raises(ConfigError, match="val_fraction"):
        heart_disease.load_hospital("va", val_fraction=fraction)


def test_split_validation_edge_cases():
    y = np.array([0, 0, 1, 1, 1, 1])
    train, val = split_validation(y, 0.5, seed=0)
    assert len(val) == 3 and sorted(np.concatenate([train, val])) == list(range(6))
    assert set(y[train]) == {0, 1}  # every class keeps a training row
    # a class with a single row: plain random draw, still disjoint and covering
    train, val = split_validation(np.array([0, 1, 1, 1]), 0.5, seed=1)
    assert len(val) == 2 and len(set(train) | set(val)) == 4
    # a tiny fraction still gives one validation row
    assert len(split_validation(y, 0.01, seed=0)[1]) == 1
    with pytest.raises(ConfigError, match="leaves no training row"):
        split_validation(np.array([0]), 0.5, seed=0)


def test_split_rows_dropped_by_the_loader_are_an_error(tmp_path, monkeypatch):
    # A copy of the Cleveland file where a listed training row (line 1) lost a value.
    lines = heart_disease.data_file("cleveland").read_text().split("\n")
    lines[0] = lines[0].replace("63.0", "?", 1)
    broken = tmp_path / "processed.cleveland.data"
    broken.write_text("\n".join(lines))
    monkeypatch.setattr(heart_disease, "data_file", lambda hospital: broken)
    with pytest.raises(DataError) as info:
        heart_disease.load_hospital("cleveland")
    msg = str(info.value)
    assert str(broken) in msg and "line 1" in msg and "column 'num'" in msg
    assert "did not keep" in msg
