"""Schema parsing: every bad definition is a ConfigError naming its key path."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlab.data import heart_disease
from fedlab.data.schema import Column, Schema
from fedlab.errors import ConfigError, FedlabError


def base() -> dict:
    return {
        "missing": "?",
        "missing_policy": "drop",
        "header": False,
        "columns": [
            {"name": "age", "type": "numeric", "min": 0, "max": 120},
            {"name": "cp", "type": "categorical", "levels": [1, 2, 3, 4], "drop_first": True},
            {"name": "colour", "type": "categorical", "levels": ["red", "green"]},
            {"name": "note", "type": "ignore"},
            {"name": "num", "type": "label", "mapping": {"0": 0, "1": 1, "2": 1}},
        ],
    }


def error_of(d: dict, where: str = "data") -> str:
    with pytest.raises(ConfigError) as info:
        Schema.from_dict(d, where=where)
    return str(info.value)


def test_valid_schema_properties():
    s = Schema.from_dict(base())
    assert s.feature_names == ("age", "cp=2", "cp=3", "cp=4", "colour=red", "colour=green")
    assert s.num_features == 6
    assert s.num_classes == 2
    assert s.label_column.name == "num"
    assert s.numeric_names == ("age",)
    assert s.column_names == ("age", "cp", "colour", "note", "num")
    assert isinstance(s.columns[0], Column)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.missing = "NA"  # type: ignore[misc]


def test_defaults():
    d = base()
    del d["missing"], d["missing_policy"], d["header"]
    s = Schema.from_dict(d)
    assert (s.missing, s.missing_policy, s.header) == ("?", "drop", False)
    assert s.columns[2].drop_first is False


def test_round_trip():
    s = Schema.from_dict(base())
    assert Schema.from_dict(s.to_dict()) == s
    hd = heart_disease.schema()
    assert Schema.from_dict(hd.to_dict()) == hd
    assert hd.to_dict() == heart_disease.schema_dict()


def test_unknown_top_level_key_names_path_and_suggests():
    d = base()
    d["mising"] = "NA"
    msg = error_of(d)
    assert "data: unknown key 'mising'" in msg
    assert "did you mean 'missing'" in msg
    assert "missing_policy" in msg  # lists the allowed keys


def test_whole_file_passed_instead_of_data_table():
    msg = error_of({"data": base()})
    assert "pass the [data] table itself" in msg


def test_unknown_column_key():
    d = base()
    d["columns"][1]["lvels"] = [1]
    msg = error_of(d)
    assert "data.columns[1]" in msg and "'lvels'" in msg
    assert "did you mean 'levels'" in msg
    assert "name, type, levels, drop_first" in msg


def test_key_of_another_type_is_refused():
    d = base()
    d["columns"][0]["levels"] = [1, 2]
    msg = error_of(d)
    assert "data.columns[0]" in msg and "does not apply to a numeric column" in msg


def test_where_prefix_is_used():
    d = base()
    d["columns"][3]["type"] = "text"
    msg = error_of(d, where="federation.data")
    assert msg.startswith("federation.data.columns[3].type")
    assert "'numeric', 'categorical', 'label', 'ignore'" in msg


@pytest.mark.parametrize(
    ("mutate", "path", "expected"),
    [
        (lambda d: d.update(missing=1), "data.missing", "string"),
        (lambda d: d.update(header="yes"), "data.header", "true or false"),
        (lambda d: d.update(columns={"name": "a"}), "data.columns", "list of column tables"),
        (lambda d: d.update(columns=[]), "data.columns", "empty"),
        (lambda d: d["columns"].__setitem__(0, "age"), "data.columns[0]", "column table"),
        (lambda d: d["columns"][0].update(name=3), "data.columns[0].name", "string"),
        (lambda d: d["columns"][0].update(name=""), "data.columns[0].name", "non-empty"),
        (lambda d: d["columns"][0].update(name="a,b"), "data.columns[0].name", "','"),
        (lambda d: d["columns"][0].update(name=" age"), "data.columns[0].name", "spaces"),
        (lambda d: d["columns"][0].update(min="0"), "data.columns[0].min", "finite number"),
        (lambda d: d["columns"][0].update(max=True), "data.columns[0].max", "finite number"),
        (lambda d: d["columns"][0].update(max=float("nan")), "data.columns[0].max", "finite"),
        (lambda d: d["columns"][0].update(min=10**400), "data.columns[0].min", "finite"),
        (lambda d: d["columns"][0].update(min=200), "data.columns[0].min", "smaller than max"),
        (lambda d: d["columns"][1].update(levels=[]), "data.columns[1].levels", "empty"),
        (lambda d: d["columns"][1].update(levels="1234"), "data.columns[1].levels", "list"),
        (lambda d: d["columns"][1].update(levels=[1, "2"]), "data.columns[1].levels[1]", "all"),
        (lambda d: d["columns"][1].update(levels=[1, 1.0]), "data.columns[1].levels[1]", "dup"),
        (lambda d: d["columns"][1].update(levels=[True, 2]), "data.columns[1].levels[0]", "str"),
        (lambda d: d["columns"][2].update(levels=["red", "?"]), "data.columns[2].levels[1]", "mis"),
        (lambda d: d["columns"][1].update(drop_first=1), "data.columns[1].drop_first", "true"),
        (lambda d: d["columns"][1].pop("levels"), "data.columns[1].levels", "missing"),
        (lambda d: d["columns"][0].pop("type"), "data.columns[0].type", "missing"),
        (lambda d: d["columns"][0].pop("name"), "data.columns[0].name", "missing"),
        (lambda d: d["columns"][4].pop("mapping"), "data.columns[4].mapping", "missing"),
        (lambda d: d["columns"][4].update(mapping=[0, 1]), "data.columns[4].mapping", "table"),
        (
            lambda d: d["columns"][4].update(mapping={"0": 0, "1": 2}),
            "data.columns[4].mapping",
            "no value maps to 1",
        ),
        (
            lambda d: d["columns"][4].update(mapping={"0": 0, "1": 0}),
            "data.columns[4].mapping",
            "at least two",
        ),
        (
            lambda d: d["columns"][4].update(mapping={"0": 0, "1": -1}),
            "data.columns[4].mapping.1",
            "integer >= 0",
        ),
        (
            lambda d: d["columns"][4].update(mapping={"0": 0, "1": 1.0}),
            "data.columns[4].mapping.1",
            "integer >= 0",
        ),
        (
            lambda d: d["columns"][4].update(mapping={"1": 0, "1.0": 1}),
            "data.columns[4].mapping.1.0",
            "same number",
        ),
    ],
)
def test_bad_values_name_the_key_path(mutate, path, expected):
    d = copy.deepcopy(base())
    mutate(d)
    msg = error_of(d)
    assert msg.startswith(path + ":") or f"{path}:" in msg, msg
    assert expected in msg, msg


def test_bad_policy_lists_allowed_values():
    d = base()
    d["missing_policy"] = "mean"
    msg = error_of(d)
    assert msg.startswith("data.missing_policy:")
    assert "'mean'" in msg and "'drop', 'impute'" in msg


def test_missing_label():
    d = base()
    d["columns"] = [c for c in d["columns"] if c["type"] != "label"]
    msg = error_of(d)
    assert msg.startswith("data.columns:")
    assert "exactly one column with type = 'label', found 0" in msg


def test_two_labels():
    d = base()
    d["columns"].append({"name": "num2", "type": "label", "mapping": {"a": 0, "b": 1}})
    msg = error_of(d)
    assert "found 2 (data.columns[4], data.columns[5])" in msg


def test_duplicate_names():
    d = base()
    d["columns"][3]["name"] = "age"
    msg = error_of(d)
    assert msg.startswith("data.columns[3].name:")
    assert "duplicate column name 'age'" in msg and "data.columns[0].name" in msg


def test_no_feature_column():
    d = base()
    d["columns"] = [{"name": "x", "type": "ignore"}, d["columns"][4]]
    assert "no feature column" in error_of(d)


def test_missing_columns_and_not_a_table():
    assert error_of({"missing": "?"}).startswith("data.columns: missing")
    assert error_of([1, 2]).startswith("data: expected a table")  # type: ignore[arg-type]


def test_drop_first_with_one_level():
    d = base()
    d["columns"][2]["levels"] = ["red"]
    d["columns"][2]["drop_first"] = True
    assert error_of(d).startswith("data.columns[2].drop_first:")


def test_numeric_marker_clashing_with_numeric_level():
    d = base()
    d["missing"] = "-9"
    d["columns"][1]["levels"] = [-9, 1]
    assert error_of(d).startswith("data.columns[1].levels[0]:")


# ---------------------------------------------------------------- property-based
_keys = st.sampled_from(
    ["name", "type", "min", "max", "levels", "drop_first", "mapping", "missing", "x", ""]
)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
    | st.sampled_from(["numeric", "categorical", "label", "ignore", "drop", "impute", "?"])
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(_keys | st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=12,
)
_column = st.dictionaries(_keys, _values, max_size=5)
_random_schema = st.fixed_dictionaries(
    {},
    optional={
        "missing": _values,
        "missing_policy": _values,
        "header": _values,
        "columns": st.lists(_column, max_size=5) | _values,
        "extra": _values,
    },
)


@settings(max_examples=150, deadline=None)
@given(_random_schema)
def test_random_schema_dicts_parse_or_raise_config_error(d):
    try:
        s = Schema.from_dict(d)
    except FedlabError as exc:
        assert isinstance(exc, ConfigError)
        assert str(exc).startswith("data")
    else:
        assert Schema.from_dict(s.to_dict()) == s
        assert s.num_classes >= 2


@st.composite
def _mutated_valid(draw):
    d = copy.deepcopy(base())
    for _ in range(draw(st.integers(1, 3))):
        columns = d.get("columns")
        dicts = [c for c in columns if isinstance(c, dict)] if isinstance(columns, list) else []
        holder = draw(st.sampled_from([d, *dicts]))
        if holder and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(holder)))  # change an existing key
        else:
            key = draw(_keys | st.sampled_from(["missing_policy", "header", "columns"]))
        if draw(st.booleans()) and key in holder:
            del holder[key]
        else:
            holder[key] = draw(_values)
    return d


@settings(max_examples=200, deadline=None)
@given(_mutated_valid())
def test_mutated_schema_dicts_parse_or_raise_config_error(d):
    try:
        s = Schema.from_dict(d)
    except ConfigError as exc:
        assert str(exc).startswith("data")
    else:
        assert Schema.from_dict(s.to_dict()) == s
