"""Loading CSV files against a schema: encodings, reports, and every bad-data error."""

from __future__ import annotations

import os
import pathlib
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedlab.data import FeatureStats, check_file, load_csv
from fedlab.data.schema import Schema
from fedlab.errors import ConfigError, DataError, FedlabError


def make_schema(**top) -> Schema:
    d = {
        "missing": "?",
        "missing_policy": "drop",
        "header": False,
        "columns": [
            {"name": "age", "type": "numeric", "min": 0, "max": 100},
            {"name": "dose", "type": "numeric"},
            {"name": "cp", "type": "categorical", "levels": [1, 2, 3], "drop_first": True},
            {"name": "site", "type": "categorical", "levels": ["a", "b"]},
            {"name": "note", "type": "ignore"},
            {"name": "num", "type": "label", "mapping": {"0": 0, "1": 1, "2": 1}},
        ],
    }
    d.update(top)
    return Schema.from_dict(d)


SCHEMA = make_schema()
GOOD = "50,1.5,1,a,x,0\n20,-2,3.0,b,,2\n100,0,2,a,?,1\n"


def write(tmp_path: pathlib.Path, text: str | bytes, name: str = "lab.csv") -> pathlib.Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_bytes(text.encode("utf-8"))
    return path


def load_error(path: pathlib.Path, schema: Schema = SCHEMA) -> str:
    with pytest.raises(DataError) as info:
        load_csv(path, schema)
    return str(info.value)


def assert_names(msg: str, path: pathlib.Path, line: int, column: str) -> None:
    assert str(path) in msg, msg
    assert f"line {line}" in msg, msg
    assert f"column {column!r}" in msg, msg


# ---------------------------------------------------------------- good files
def test_encoding_of_a_good_file(tmp_path):
    table = load_csv(write(tmp_path, GOOD), SCHEMA)
    # age scaled by [0, 100]; dose raw; cp one-hot without level 1; site one-hot.
    expected = np.array(
        [
            [0.5, 1.5, 0, 0, 1, 0],
            [0.2, -2.0, 0, 1, 0, 1],
            [1.0, 0.0, 1, 0, 1, 0],
        ],
        dtype=np.float32,
    )
    assert SCHEMA.feature_names == ("age", "dose", "cp=2", "cp=3", "site=a", "site=b")
    np.testing.assert_array_equal(table.x, expected)
    assert table.x.dtype == np.float32
    np.testing.assert_array_equal(table.y, [0, 1, 1])
    assert table.y.dtype == np.int64
    np.testing.assert_array_equal(table.lines, [1, 2, 3])
    assert table.lines.dtype == np.int64
    np.testing.assert_array_equal(table.numeric, [[50, 1.5], [20, -2], [100, 0]])
    assert len(table) == 3
    r = table.report
    assert (r.rows_read, r.rows_kept, r.dropped_missing, r.imputed) == (3, 3, {}, {})
    assert r.file == str(tmp_path / "lab.csv")


def test_header_line_is_checked_and_skipped(tmp_path):
    schema = make_schema(header=True)
    table = load_csv(write(tmp_path, "age,dose,cp,site,note,num\n" + GOOD), schema)
    np.testing.assert_array_equal(table.lines, [2, 3, 4])
    path = write(tmp_path, "age,dose,chest,site,note,num\n" + GOOD)
    msg = load_error(path, schema)
    assert_names(msg, path, 1, "cp")
    assert "'chest'" in msg


def test_crlf_and_bom_are_accepted(tmp_path):
    text = "\ufeff" + GOOD.replace("\n", "\r\n")
    table = load_csv(write(tmp_path, text), SCHEMA)
    np.testing.assert_array_equal(table.y, [0, 1, 1])


def test_quoted_string_level(tmp_path):
    table = load_csv(write(tmp_path, '50,1,1,"b",x,0\n'), SCHEMA)
    np.testing.assert_array_equal(table.x[0, 4:], [0, 1])


def test_standardised_with_stats(tmp_path):
    stats = FeatureStats(names=("dose", "age"), mean=(0.0, 50.0), std=(2.0, 10.0))
    table = load_csv(write(tmp_path, GOOD), SCHEMA, stats=stats)
    np.testing.assert_allclose(table.x[:, 0], [0.0, -3.0, 5.0])
    np.testing.assert_allclose(table.x[:, 1], [0.75, -1.0, 0.0])
    # zero std divides by 1
    flat = FeatureStats(names=("age", "dose"), mean=(50.0, 0.0), std=(0.0, 1.0))
    np.testing.assert_allclose(
        load_csv(write(tmp_path, GOOD), SCHEMA, stats=flat).x[:, 0], [0, -30, 50]
    )


def test_stats_must_match_numeric_columns(tmp_path):
    with pytest.raises(ConfigError, match="missing \\['dose'\\]"):
        load_csv(
            write(tmp_path, GOOD),
            SCHEMA,
            stats=FeatureStats(names=("age",), mean=(1.0,), std=(1.0,)),
        )


def test_stats_from_sums_and_values():
    values = np.array([[1.0, 10.0], [3.0, 10.0]])
    stats = FeatureStats.from_values(("a", "b"), values)
    assert stats.mean == (2.0, 10.0) and stats.std == (1.0, 0.0)
    # Two labs' moments summed give the pooled statistics.
    from fedlab.data import local_moments

    parts = [local_moments(values[:1]), local_moments(values[1:])]
    summed = [parts[0][i] + parts[1][i] for i in range(3)]
    assert FeatureStats.from_sums(("a", "b"), *summed) == stats
    with pytest.raises(ConfigError, match="no values for column"):
        FeatureStats.from_sums(("a",), [0], [0], [0])
    with pytest.raises(ConfigError, match="finite"):
        FeatureStats(names=("a",), mean=(float("nan"),), std=(1.0,))
    with pytest.raises(ConfigError, match="std >= 0"):
        FeatureStats(names=("a",), mean=(0.0,), std=(-1.0,))
    with pytest.raises(ConfigError, match="sequences of names and of numbers"):
        FeatureStats(names=("a",), mean=("x",), std=(1.0,))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="1 names, 2 means"):
        FeatureStats(names=("a",), mean=(0.0, 1.0), std=(1.0,))
    # lists and arrays are stored as tuples, so equal statistics compare equal
    assert FeatureStats(["a"], np.array([1.0]), [2.0]) == FeatureStats(("a",), (1.0,), (2.0,))


# ---------------------------------------------------------------- missing values
MISSING = (
    "50,1,1,a,x,0\n"  # 1 complete
    "?,1,1,a,x,1\n"  # 2 age missing
    "40,,2,?,x,0\n"  # 3 dose and site missing
    "30,2,,b,x,?\n"  # 4 cp and label missing
    "60,3,3,b,?,1\n"  # 5 ignore column missing: complete
    "70,4,2,a,x,\n"  # 6 label missing
)


def test_drop_policy_report(tmp_path):
    table = load_csv(write(tmp_path, MISSING), SCHEMA)
    np.testing.assert_array_equal(table.lines, [1, 5])
    r = table.report
    assert (r.rows_read, r.rows_kept, r.rows_dropped) == (6, 2, 4)
    assert r.dropped_missing == {"age": 1, "dose": 1, "cp": 1, "site": 1, "num": 2}
    assert r.imputed == {}
    assert list(r.dropped_missing) == ["age", "dose", "cp", "site", "num"]  # file order
    d = r.to_dict()
    assert d["rows_dropped"] == 4 and d["missing_policy"] == "drop"
    assert r.format() == (
        "lab.csv: 6 rows read, 2 kept, 4 dropped for missing values "
        "(age 1, dose 1, cp 1, site 1, num 2)"
    )


def test_impute_policy_report_and_values(tmp_path):
    table = load_csv(write(tmp_path, MISSING), make_schema(missing_policy="impute"))
    r = table.report
    np.testing.assert_array_equal(table.lines, [1, 2, 3, 5])  # missing labels still drop
    assert (r.rows_read, r.rows_kept) == (6, 4)
    assert r.dropped_missing == {"cp": 1, "num": 2}
    assert r.imputed == {"age": 1, "dose": 1, "site": 1}
    # age of line 2 = mean of the kept present ages (50, 40, 60) = 50 -> scaled 0.5
    assert table.x[1, 0] == pytest.approx(0.5)
    # dose of line 3 = mean of (1, 1, 3)
    assert table.numeric[2, 1] == pytest.approx(5 / 3)
    # site of line 3 = most frequent kept level: a (lines 1, 2) over b (line 5)
    np.testing.assert_array_equal(table.x[2, 4:], [1, 0])
    assert "imputed: age 1, dose 1, site 1" in r.format()


def test_impute_uses_stats_mean(tmp_path):
    stats = FeatureStats(names=("age", "dose"), mean=(80.0, 7.0), std=(10.0, 1.0))
    table = load_csv(write(tmp_path, MISSING), make_schema(missing_policy="impute"), stats=stats)
    assert table.numeric[1, 0] == 80.0 and table.x[1, 0] == pytest.approx(0.0)
    assert table.numeric[2, 1] == 7.0


def test_impute_with_every_value_missing(tmp_path):
    path = write(tmp_path, "?,1,1,a,x,0\n,2,2,b,x,1\n")
    with pytest.raises(DataError) as info:
        load_csv(path, make_schema(missing_policy="impute"))
    msg = str(info.value)
    assert str(path) in msg and "lines 1-2" in msg and "column 'age'" in msg
    assert "every value is missing" in msg
    # With federation stats there is something to impute from.
    stats = FeatureStats(names=("age", "dose"), mean=(40.0, 0.0), std=(1.0, 1.0))
    assert load_csv(path, make_schema(missing_policy="impute"), stats=stats).report.imputed == {
        "age": 2
    }


def test_every_row_dropped(tmp_path):
    path = write(tmp_path, "?,1,1,a,x,0\n50,?,1,a,x,0\n")
    msg = load_error(path)
    assert str(path) in msg and "column 'age'" in msg
    assert "lines 1-2" in msg and "every one of the 2 rows was dropped" in msg
    assert "'age' in 1 rows" in msg and "'dose' in 1 rows" in msg


def test_custom_missing_marker(tmp_path):
    schema = make_schema(missing="NA")
    table = load_csv(write(tmp_path, "NA,1,1,a,x,0\n50,1,1,a,x,0\n"), schema)
    assert table.report.dropped_missing == {"age": 1}
    path = write(tmp_path, "?,1,1,a,x,0\n")
    msg = load_error(path, schema)
    assert_names(msg, path, 1, "age")
    assert "expected a number" in msg


# ---------------------------------------------------------------- unreadable files
def test_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    msg = load_error(path)
    assert str(path) in msg and "no such file" in msg


def test_directory(tmp_path):
    msg = load_error(tmp_path)
    assert str(tmp_path) in msg and "is a directory" in msg


def test_permission_denied(tmp_path, monkeypatch):
    path = write(tmp_path, GOOD)
    if os.geteuid() != 0:  # root reads anything: check the real thing where possible
        path.chmod(0)
        try:
            msg = load_error(path)
        finally:
            path.chmod(0o600)
        assert str(path) in msg and "permission denied" in msg

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(pathlib.Path, "read_bytes", denied)
    msg = load_error(path)
    assert str(path) in msg and "permission denied" in msg


@pytest.mark.parametrize("text", ["", "\n", "  \n\n"])
def test_empty_file(tmp_path, text):
    path = write(tmp_path, text)
    msg = load_error(path)
    assert str(path) in msg and "line 1" in msg and "empty" in msg
    assert "age, dose, cp, site, note, num" in msg


def test_binary_content(tmp_path):
    path = write(tmp_path, b"50,1,1,a,x,0\n20,2\x00\x01,3,b,x,1\n")
    msg = load_error(path)
    assert_names(msg, path, 2, "dose")
    assert "binary" in msg


def test_non_utf8(tmp_path):
    path = write(tmp_path, "50,1,1,a,x,0\n20,2,3,b,caf\u00e9,1\n".encode("latin-1"))
    msg = load_error(path)
    assert_names(msg, path, 2, "note")
    assert "0xe9" in msg and "UTF-8" in msg


def test_stray_carriage_return(tmp_path):
    path = write(tmp_path, "50,1,1,a,x,0\n20,2\r,3,b,x,1\n")
    msg = load_error(path)
    assert_names(msg, path, 2, "dose")


# ---------------------------------------------------------------- bad rows
def test_too_few_columns(tmp_path):
    path = write(tmp_path, "50,1,1,a,x,0\n50,1,1\n")
    msg = load_error(path)
    assert_names(msg, path, 2, "site")
    assert "found 3 fields, expected 6" in msg


def test_too_many_columns(tmp_path):
    path = write(tmp_path, "50,1,1,a,x,0,7\n")
    msg = load_error(path)
    assert_names(msg, path, 1, "num")
    assert "found 7 fields, expected 6" in msg


def test_empty_line_in_the_middle(tmp_path):
    path = write(tmp_path, "50,1,1,a,x,0\n\n50,1,1,a,x,0\n")
    msg = load_error(path)
    assert_names(msg, path, 2, "age")
    assert "the line is empty" in msg


def test_text_in_numeric_column(tmp_path):
    path = write(tmp_path, GOOD + "41,abc,1,a,x,0\n")
    msg = load_error(path)
    assert_names(msg, path, 4, "dose")
    assert "found 'abc', expected a number" in msg


@pytest.mark.parametrize("value", ["nan", "inf", "1_0", "0x10", "1e999", "\u0661"])
def test_non_numbers_are_refused(tmp_path, value):
    path = write(tmp_path, f"41,{value},1,a,x,0\n")
    assert_names(load_error(path), path, 1, "dose")


def test_spaces_around_a_number(tmp_path):
    path = write(tmp_path, "41, 5,1,a,x,0\n")
    msg = load_error(path)
    assert_names(msg, path, 1, "dose")
    assert "remove the spaces" in msg


def test_unknown_category_numeric_levels(tmp_path):
    path = write(tmp_path, GOOD + "41,1,7,a,x,0\n")
    msg = load_error(path)
    assert_names(msg, path, 4, "cp")
    assert "unknown category: found '7'" in msg and "1, 2, 3" in msg


def test_unknown_category_string_levels(tmp_path):
    path = write(tmp_path, "41,1,1,A,x,0\n")
    msg = load_error(path)
    assert_names(msg, path, 1, "site")
    assert "unknown category: found 'A'" in msg


def test_label_not_in_mapping(tmp_path):
    path = write(tmp_path, GOOD + "41,1,1,a,x,3\n")
    msg = load_error(path)
    assert_names(msg, path, 4, "num")
    assert "label out of range" in msg and "'3'" in msg


def test_label_matches_numerically(tmp_path):
    table = load_csv(write(tmp_path, "41,1,1,a,x,2.0\n41,1,1,a,x,0\n"), SCHEMA)
    np.testing.assert_array_equal(table.y, [1, 0])


@pytest.mark.parametrize("age", ["-1", "100.5", "1e3"])
def test_value_out_of_range(tmp_path, age):
    path = write(tmp_path, GOOD + f"{age},1,1,a,x,0\n")
    msg = load_error(path)
    assert_names(msg, path, 4, "age")
    assert "outside the declared range [0, 100]" in msg


def test_value_too_large_for_float32(tmp_path):
    path = write(tmp_path, "41,1e300,1,a,x,0\n")
    msg = load_error(path)
    assert_names(msg, path, 1, "dose")
    assert "32-bit float" in msg


def test_malformed_quotes(tmp_path):
    path = write(tmp_path, '41,1,1,"a"b,x,0\n')
    msg = load_error(path)
    assert_names(msg, path, 1, "site")
    assert "quoting" in msg


def test_quoted_field_spanning_lines(tmp_path):
    path = write(tmp_path, '41,1,1,a,"x\ny",0\n41,1,1,a,x,0\n')
    msg = load_error(path)
    assert_names(msg, path, 1, "age")
    assert "spans lines 1-2" in msg


def test_several_problems_in_one_message(tmp_path):
    path = write(tmp_path, "41,1,9,a,x,0\nabc,1,1,a,x,0\n41,1,1,a,x,7\n")
    msg = load_error(path)
    assert msg.startswith(f"{path}, line 1, column 'cp': unknown category")
    assert "[2 more problem(s): line 2, column 'age'" in msg
    assert "line 3, column 'num'" in msg


def test_count_and_value_problems_are_reported_together(tmp_path):
    path = write(tmp_path, "41,1,1,a,x\n41,1,1,zz,x,0\n")
    msg = load_error(path)
    assert msg.startswith(f"{path}, line 1, column 'num': found 5 fields")
    assert "line 2, column 'site': unknown category: found 'zz'" in msg


def test_header_only_file(tmp_path):
    path = write(tmp_path, "age,dose,cp,site,note,num\n")
    msg = load_error(path, make_schema(header=True))
    assert_names(msg, path, 2, "age")
    assert "no data rows after the header" in msg


def test_many_problems_are_capped(tmp_path):
    path = write(tmp_path, "".join(f"{200 + i},1,1,a,x,0\n" for i in range(50)))
    msg = load_error(path)
    assert "[49 more problem(s):" in msg and "and 40 more" in msg
    assert msg.count("outside the declared range") == 10


def test_check_file_is_the_same_check(tmp_path):
    path = write(tmp_path, MISSING)
    report = check_file(path, SCHEMA)
    assert report == load_csv(path, SCHEMA).report
    assert check_file(path, SCHEMA.to_dict()) == report
    bad = write(tmp_path, "41,1,9,a,x,0\n", "bad.csv")
    with pytest.raises(DataError, match="unknown category"):
        check_file(bad, SCHEMA)


# ---------------------------------------------------------------- property-based
_field = st.one_of(
    st.sampled_from(["", "?", "1", "2", "3", "0", "a", "b", "1.0", "-5", "100", "x", '"a"']),
    st.text(alphabet=string.printable, max_size=5),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


@st.composite
def _csv_text(draw):
    rows = draw(st.lists(st.lists(_field, min_size=4, max_size=8), min_size=0, max_size=8))
    end = draw(st.sampled_from(["\n", "\r\n"]))
    return end.join(",".join(r) for r in rows) + draw(st.sampled_from(["", end]))


_plausible_columns = [
    st.sampled_from(["0", "50", "100", "?", "", "99.5"]),
    st.sampled_from(["1.5", "-2", "0", "?", "1e3", ".7"]),
    st.sampled_from(["1", "2", "3", "2.0", "?"]),
    st.sampled_from(["a", "b", '"a"', "?", ""]),
    st.sampled_from(["x", "", "?", '"a,b"']),
    st.sampled_from(["0", "1", "2", "1.0", "?"]),
]


@st.composite
def _plausible_csv(draw):
    """Rows with the schema's six fields, mostly valid values, about one in ten junk."""
    n = draw(st.integers(min_value=1, max_value=8))
    rows = [
        ",".join(
            draw(_field) if draw(st.integers(0, 9)) == 0 else draw(column)
            for column in _plausible_columns
        )
        for _ in range(n)
    ]
    end = draw(st.sampled_from(["\n", "\r\n"]))
    return end.join(rows) + draw(st.sampled_from(["", end]))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=_csv_text() | _plausible_csv(), policy=st.sampled_from(["drop", "impute"]))
def test_random_csv_loads_or_raises_data_error(tmp_path, text, policy):
    _load_or_fedlab_error(write(tmp_path, text), make_schema(missing_policy=policy))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=40),
    position=st.integers(min_value=0, max_value=len(GOOD)),
    cut=st.integers(min_value=0, max_value=6),
    policy=st.sampled_from(["drop", "impute"]),
)
def test_mutated_csv_loads_or_raises_data_error(tmp_path, data, position, cut, policy):
    raw = GOOD.encode()
    mutated = raw[:position] + data + raw[position + cut :]
    _load_or_fedlab_error(write(tmp_path, mutated), make_schema(missing_policy=policy))


def _load_or_fedlab_error(path: pathlib.Path, schema: Schema) -> None:
    try:
        table = load_csv(path, schema)
    except FedlabError as exc:
        assert isinstance(exc, DataError)
        assert str(path) in str(exc)
        return
    n = table.report.rows_kept
    assert table.x.shape == (n, schema.num_features) and table.x.dtype == np.float32
    assert np.isfinite(table.x).all()
    assert table.y.shape == (n,) and set(table.y.tolist()) <= {0, 1}
    assert table.lines.shape == (n,) and (np.diff(table.lines) > 0).all()
    assert 0 < n <= table.report.rows_read
