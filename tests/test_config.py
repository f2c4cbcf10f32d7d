"""federation.toml parsing: every field validated, unknown keys are errors, all problems at once."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlab.config import DEFAULT_TOML, apply_overrides, default_config, load_config, parse_config
from fedlab.errors import ConfigError, FedlabError

MINIMAL = """
[federation]
name = "t"
[data]
dataset = "heart-disease"
"""


def test_default_config_is_the_four_hospitals():
    cfg = default_config()
    assert cfg.lab_names() == ("cleveland", "hungary", "switzerland", "va")
    assert cfg.secure is True
    assert cfg.data.dataset == "heart-disease"
    assert parse_config(DEFAULT_TOML) == cfg


def test_minimal_heart_disease_gets_the_hospitals_as_labs():
    cfg = parse_config(MINIMAL)
    assert len(cfg.labs) == 4
    assert cfg.strategy.name == "fedavg"


@pytest.mark.parametrize(
    ("snippet", "key", "hint"),
    [
        ("[federation]\nrouns = 3", "federation.rouns", "allowed keys here"),
        ("[federation]\nrounds = 0", "federation.rounds", "1..100000"),
        ("[federation]\nrounds = 'ten'", "federation.rounds", "an integer"),
        ("[federation]\nsecure = 1", "federation.secure", "true or false"),
        ("[training]\nbatch_size = true", "training.batch_size", "boolean"),
        ("[training]\nlearning_rate = -1.0", "training.learning_rate", "> 0"),
        ("[training]\noptimizer = 'rmsprop'", "training.optimizer", "sgd, adam"),
        ("[strategy]\nname = 'fedsgd'", "strategy.name", "fedavg, fedprox, fedadam"),
        ("[strategy]\nname = 'fedprox'\nmu = 0.0", "strategy.mu", "mu > 0"),
        ("[model]\nname = 'resnet'", "model.name", "module:function"),
        ("[model]\nhidden = [0]", "model.hidden", "positive integers"),
        ("[server]\naddress = 'nohost'", "server.address", "host:port"),
        ("[simulation]\npartition = 'random'", "simulation.partition", "natural, iid, dirichlet"),
        ("[extra]\nx = 1", "extra", "unknown section"),
    ],
)
def test_each_bad_field_is_named_with_allowed_values(snippet, key, hint):
    section = snippet.split("]")[0] + "]"
    text = MINIMAL.replace("[federation]\nname = \"t\"", "") if section == "[federation]" else MINIMAL
    if section == "[federation]":
        text = snippet + "\nname = \"t\"\n" + text
    else:
        text = text + "\n" + snippet + "\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, where="fed.toml")
    msg = str(err.value)
    assert key in msg and hint in msg and "fed.toml" in msg


def test_all_problems_are_reported_at_once():
    text = MINIMAL + "\n[training]\nbatch_size = 0\noptimizer = 'x'\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert "2 problem(s)" in str(err.value)


def test_labs_must_be_unique_and_well_named():
    text = MINIMAL + '[[labs]]\nname = "a"\ndata = "a.csv"\n[[labs]]\nname = "a"\ndata = "b.csv"\n'
    with pytest.raises(ConfigError, match="listed twice"):
        parse_config(text)
    with pytest.raises(ConfigError, match="not a lab name"):
        parse_config(MINIMAL + '[[labs]]\nname = "Lab A"\n')


def test_min_labs_cannot_exceed_labs():
    with pytest.raises(ConfigError, match="min_labs"):
        parse_config(MINIMAL.replace('name = "t"', 'name = "t"\nmin_labs = 9'))


def test_custom_schema_is_checked_by_the_data_package():
    text = """
[data]
[[data.columns]]
name = "x"
type = "numbr"
[[labs]]
name = "a"
data = "a.csv"
[[labs]]
name = "b"
data = "b.csv"
"""
    with pytest.raises(ConfigError, match=r"data\.columns\[0\]\.type"):
        parse_config(text)


def test_not_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("[federation\n")
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(bad)


def test_overrides():
    cfg = apply_overrides(default_config(), {"rounds": 3, "secure": False})
    assert cfg.rounds == 3 and not cfg.secure
    with pytest.raises(ConfigError):
        apply_overrides(default_config(), {"rounds": 0})
    with pytest.raises(ConfigError):
        apply_overrides(default_config(), {"colour": "red"})


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_random_text_gives_config_or_config_error(text):
    try:
        parse_config(text)
    except FedlabError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(DEFAULT_TOML) - 1), st.integers(0, 40), st.text(max_size=5))
def test_mutated_default_gives_config_or_config_error(pos, cut, insert):
    text = DEFAULT_TOML[:pos] + insert + DEFAULT_TOML[pos + cut:]
    try:
        parse_config(text)
    except FedlabError:
        pass


def test_privacy_never_rides_with_exact_federated_statistics():
    """Federated statistics are exact sums, outside the DP accountant: with [privacy] the
    default falls back to range scaling, and asking for them is an error naming the key."""
    from fedlab.config import DEFAULT_TOML, parse_config

    dp = DEFAULT_TOML + '\n[privacy]\nmode = "record"\nepsilon = 1.0\n'
    assert parse_config(DEFAULT_TOML).data.standardize == "federated"
    assert parse_config(dp).data.standardize == "range"
    explicit = dp.replace('dataset = "heart-disease"',
                          'dataset = "heart-disease"\nstandardize = "federated"')
    with pytest.raises(ConfigError, match=r"data.standardize: federated standardisation"):
        parse_config(explicit)
    impute = dp.replace('dataset = "heart-disease"',
                        'dataset = "heart-disease"\nmissing_policy = "impute"')
    with pytest.raises(ConfigError, match=r"data.missing_policy: mean imputation"):
        parse_config(impute)
