"""The federated text classifier: the built-in Rotten Tomatoes labs, the text model, its
baselines, and (slow) `fedlab simulate examples/text-sentiment.toml` end to end."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from fedlab.config import ModelConfig, load_config, parse_config
from fedlab.data import partition
from fedlab.data import text as T
from fedlab.errors import ConfigError
from fedlab.prep import prepare_locally, selected_buckets
from fedlab.task import (
    encode_text_lab,
    is_text,
    load_lab,
    load_simulation_lab,
    simulation_labs,
    task_shape,
    vocabulary_settings,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "text-sentiment.toml"

TEXT = """
[federation]
name = "t"
rounds = 2
min_labs = 2
seed = {seed}
[training]
batch_size = 32
learning_rate = 0.01
optimizer = "adam"
[model]
name = "text"
embedding_dim = 8
vocab_size = 2000
sequence_length = 24
[data]
dataset = "rotten-tomatoes"
test_fraction = 0.2
validation_fraction = 0.1
[simulation]
partition = "dirichlet"
num_labs = 5
alpha = {alpha}
"""


def text_cfg(seed: int = 0, alpha: float = 0.5):
    return parse_config(TEXT.format(seed=seed, alpha=alpha))


@pytest.fixture(scope="module")
def labs():
    cfg = text_cfg()
    return cfg, [load_simulation_lab(cfg, i) for i in range(5)]


# ---------------------------------------------------------------- config
def test_example_config_is_the_text_federation():
    cfg = load_config(EXAMPLE)
    assert is_text(cfg) and cfg.secure and cfg.model.name == "text"
    assert cfg.simulation.partition == "dirichlet" and cfg.simulation.num_labs == 5
    assert simulation_labs(cfg) == [f"lab-{i}" for i in range(5)]
    shape = task_shape(cfg)
    assert (shape.num_features, shape.num_classes) == (cfg.model.sequence_length, 2)
    v = vocabulary_settings(cfg)
    assert (v.vocab_size, v.min_labs, v.max_len) == (cfg.model.vocab_size,
                                                     cfg.data.vocabulary_min_labs,
                                                     cfg.model.sequence_length)


@pytest.mark.parametrize("change, key, hint", [
    (("name = \"text\"", "name = \"logistic\""), "model.name", "set name = \"text\""),
    (("dataset = \"rotten-tomatoes\"", "dataset = \"heart-disease\""), "model.name",
     "token ids of a text data set"),
    (("embedding_dim = 8", "embedding_dim = 0"), "model.embedding_dim", "1..4096"),
    (("vocab_size = 2000", "vocab_size = -5"), "model.vocab_size", "must be in"),
    (("sequence_length = 24", "sequence_length = 1.5"), "model.sequence_length", "an integer"),
    (("validation_fraction = 0.1", "vocabulary_min_labs = 6"), "data.vocabulary_min_labs",
     "only 5 labs"),
    (("validation_fraction = 0.1", "vocabulary_buckets = 0"), "data.vocabulary_buckets",
     "1..16777216"),
    (("partition = \"dirichlet\"", "partition = \"natural\""), "simulation.partition",
     "no natural labs"),
    (("alpha = 0.5", "alpha = 0.5\ncolumn = \"movie_name\""), "simulation.column",
     "remove simulation.column"),
])
def test_config_refuses_what_the_text_task_cannot_use(change, key, hint):
    text = TEXT.format(seed=0, alpha=0.5).replace(*change)
    assert text != TEXT.format(seed=0, alpha=0.5)
    with pytest.raises(ConfigError) as err:
        parse_config(text, where="fed.toml")
    msg = str(err.value)
    assert "fed.toml" in msg and key in msg and hint in msg, msg


def test_text_keys_are_refused_for_table_models():
    heart = "[data]\ndataset = \"heart-disease\"\n[model]\nname = \"mlp\"\nembedding_dim = 8\n"
    with pytest.raises(ConfigError, match=r"model\.embedding_dim: only the text model"):
        parse_config(heart)
    heart = "[data]\ndataset = \"heart-disease\"\nvocabulary_min_labs = 2\n"
    with pytest.raises(ConfigError, match=r"data\.vocabulary_min_labs: only a text data set"):
        parse_config(heart)


# ---------------------------------------------------------------- data
def test_labs_follow_the_dirichlet_split_and_lose_no_row(labs):
    cfg, raws = labs
    texts, labels = T.load_rotten_tomatoes()
    assert len(texts) == 12_808
    parts = partition.dirichlet(labels, 5, 0.5, 0, min_size=10)
    lines = T.rotten_tomatoes_report().lines  # the source line of every corpus row: an id
    seen = []
    for raw, rows in zip(raws, parts, strict=True):
        assert isinstance(raw, T.TextLab) and raw.name.startswith("lab-")
        mine = np.concatenate([raw.lines_train, raw.lines_val, raw.lines_test])
        # exactly the rows the Dirichlet partition gave this lab, with their labels
        np.testing.assert_array_equal(np.sort(mine), np.sort(lines[rows]))
        y = np.concatenate([raw.y_train, raw.y_val, raw.y_test])
        np.testing.assert_array_equal(np.bincount(y, minlength=2),
                                      np.bincount(labels[rows], minlength=2))
        by_line = dict(zip(lines.tolist(), texts, strict=True))
        assert [by_line[int(n)] for n in raw.lines_test] == list(raw.test_texts)
        assert abs(raw.num_test - 0.2 * len(rows)) <= 1
        assert raw.num_val > 0 and raw.num_train > raw.num_test
        seen.append(mine)
    every = np.concatenate(seen)
    assert every.size == len(texts) == np.unique(every).size  # none lost, none duplicated
    shares = [raw.y_train.mean() for raw in raws]
    assert max(shares) - min(shares) > 0.3  # alpha 0.5: labels really are skewed


def test_partition_is_deterministic_and_seeded(labs):
    cfg, raws = labs
    again = load_simulation_lab(cfg, 3)
    assert again.train_texts == raws[3].train_texts
    np.testing.assert_array_equal(again.lines_test, raws[3].lines_test)
    other = load_simulation_lab(text_cfg(seed=1), 3)
    assert other.train_texts != raws[3].train_texts


def test_iid_partition_and_a_labs_own_text_file(tmp_path):
    cfg = parse_config(TEXT.format(seed=0, alpha=0.5).replace('"dirichlet"', '"iid"'))
    sizes = [load_simulation_lab(cfg, i) for i in range(5)]
    n = [r.num_train + r.num_val + r.num_test for r in sizes]
    assert sum(n) == 12_808 and max(n) - min(n) <= 1
    own = tmp_path / "reviews.csv"
    rows = ["text,category"] + [f"\"good film number {i}, great\",fresh" for i in range(20)]
    rows += [f"dull film number {i},rotten" for i in range(20)] + ["a plot summary,plot"]
    own.write_text("\n".join(rows) + "\n")
    lab = load_lab(cfg, "mylab", own)
    assert isinstance(lab, T.TextLab) and lab.name == "mylab"
    assert lab.num_train + lab.num_val + lab.num_test == 40 and lab.report.dropped_labels == {
        "plot": 1}
    bad = tmp_path / "bad.csv"
    bad.write_text("text,category\nfine,maybe\n")
    with pytest.raises(Exception, match=r"bad\.csv, line 2, column 'category'"):
        load_lab(cfg, "mylab", bad)


def test_check_data_reads_a_text_file_as_training_will(tmp_path, capsys):
    from fedlab.cli import main

    good = tmp_path / "lab.csv"
    good.write_text("text,category\n\"Sharp, funny.\",fresh\nA mess.,rotten\nplot here,plot\n")
    assert main(["check-data", str(EXAMPLE), "--data", str(good)]) == 0
    out = capsys.readouterr().out
    assert "2 kept" in out and "'plot' 1" in out and "OK:" in out
    bad = tmp_path / "bad.csv"
    bad.write_text("text,category\nfine,great\n")
    assert main(["check-data", str(EXAMPLE), "--data", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.csv, line 2, column 'category'" in err and "Traceback" not in err


def test_vocabulary_contribution_is_training_texts_only_and_encoding_uses_it(labs):
    cfg, raws = labs
    v = vocabulary_settings(cfg)
    raw = raws[0]
    vec = raw.vocabulary_contribution(v.buckets)
    np.testing.assert_array_equal(vec[:v.buckets], T.hashed_counts(raw.train_texts, v.buckets))
    only_test = T.hashed_presence(raw.test_texts, v.buckets) - T.hashed_presence(
        raw.train_texts + raw.val_texts, v.buckets)
    assert (only_test > 0).any() and (vec[v.buckets:][only_test > 0] == 0).all()
    # The federation's vocabulary (what the secure sum gives), then every lab encodes.
    data, results = prepare_locally(cfg, raws)
    total = sum(r.vocabulary_contribution(v.buckets) for r in raws)
    expect = T.build_vocabulary(total, v.buckets, vocab_size=v.vocab_size, min_labs=v.min_labs)
    np.testing.assert_array_equal(selected_buckets(results["vocabulary"]), expect)
    lab = data[0]
    assert lab.x_train.shape == (raw.num_train, cfg.model.sequence_length)
    assert lab.x_test.dtype == np.int32 and lab.x_test.max() < cfg.model.vocab_size + 2
    np.testing.assert_array_equal(lab.x_train, encode_text_lab(cfg, raw, expect).x_train)
    with pytest.raises(Exception, match="model.vocab_size"):
        encode_text_lab(cfg, raw, np.arange(cfg.model.vocab_size + 1))


def test_central_vocabulary_ranks_like_select_buckets(labs):
    _, raws = labs
    texts = raws[1].train_texts
    counts = T.hashed_counts(texts, 4096)
    expect = T.select_buckets(counts, (counts > 0).astype(np.int64), 300, min_labs=1)
    np.testing.assert_array_equal(T.central_vocabulary(texts, 4096, 300), expect)


# ---------------------------------------------------------------- model and training
def _trainer(cfg, **strategy):
    from fedlab.config import StrategyConfig
    from fedlab.training import LocalTrainer

    shape = task_shape(cfg)
    return LocalTrainer(cfg.model, shape.num_features, shape.num_classes, cfg.training,
                        StrategyConfig(**strategy) if strategy else None, seed=cfg.seed)


@pytest.fixture(scope="module")
def encoded(labs):
    cfg, raws = labs
    data, _ = prepare_locally(cfg, raws)
    return cfg, data


def test_text_model_architecture():
    from fedlab.models import build_model

    cfg = ModelConfig(name="text", embedding_dim=8, sequence_length=24, vocab_size=2000)
    model = build_model(cfg, 24, 2)
    names = [layer.__class__.__name__ for layer in model.layers]
    assert names == ["InputLayer", "Embedding", "GlobalAveragePooling1D", "Dense"]
    assert model.count_params() == 2002 * 8 + 8 + 1
    assert model.layers[1].mask_zero  # padding (id 0) is left out of the average
    with pytest.raises(ConfigError, match="sequence_length"):
        build_model(cfg, 30, 2)


def test_text_model_learns_on_real_texts(encoded):
    cfg, data = encoded
    x = np.concatenate([d.x_train for d in data])
    y = np.concatenate([d.y_train for d in data])
    xt = np.concatenate([d.x_test for d in data])
    yt = np.concatenate([d.y_test for d in data])
    t = _trainer(cfg)
    w0 = t.get_weights()
    before = t.evaluate(w0, xt, yt)
    fit = t.fit(w0, x, y, epochs=2, round_seed=1)
    after = t.evaluate(fit.weights, xt, yt)
    assert np.isfinite(fit.loss) and after.num_examples == len(yt)
    assert after.accuracy > 0.72 and after.accuracy > before.accuracy + 0.1


def test_padding_does_not_change_the_prediction():
    from fedlab.models import build_model

    cfg = ModelConfig(name="text", embedding_dim=4, sequence_length=10, vocab_size=50)
    model = build_model(cfg, 10, 2, seed=3)
    short = np.array([[5, 7, 9, 0, 0, 0, 0, 0, 0, 0]], dtype=np.float32)
    other_pad = np.array([[5, 7, 9, 0, 0, 0, 0, 0, 0, 0]], dtype=np.float32)
    longer = np.array([[5, 7, 9, 5, 7, 9, 0, 0, 0, 0]], dtype=np.float32)
    p = model.predict(np.concatenate([short, other_pad, longer]), verbose=0)
    np.testing.assert_allclose(p[0], p[2], rtol=1e-5)  # the mean of (a b c) = of (a b c a b c)


def test_fedprox_and_record_dp_work_with_the_text_model(encoded):
    cfg, data = encoded
    lab = data[2]
    x, y = lab.x_train[:256], lab.y_train[:256]
    free, pulled = _trainer(cfg), _trainer(cfg, name="fedprox", mu=100.0)
    w0 = free.get_weights()
    flat0 = np.concatenate([w.ravel() for w in w0])

    def moved(fit):
        return float(np.linalg.norm(np.concatenate([w.ravel() for w in fit.weights]) - flat0))

    assert moved(pulled.fit(w0, x, y, round_seed=2)) < 0.5 * moved(free.fit(w0, x, y, round_seed=2))

    # DP-SGD: per-example clipping holds on the embedding's (sparse) gradients. With plain
    # SGD, no noise and a fixed denominator B, one step moves the weights by at most
    # lr * clip (the mean of B gradients each clipped to clip).
    sgd = parse_config(TEXT.format(seed=0, alpha=0.5).replace('"adam"', '"sgd"').replace(
        "learning_rate = 0.01", "learning_rate = 1.0"))
    t = _trainer(sgd)
    t.enable_record_dp(l2_clip=0.01, noise_multiplier=0.0, expected_batch_size=32)
    t.set_weights(w0)
    t.dp.step(np.asarray(x[:32], np.float32), np.asarray(y[:32], np.float32))
    step = np.concatenate([w.ravel() for w in t.get_weights()]) - flat0
    assert 0 < np.linalg.norm(step) <= 0.01 * 1.0 + 1e-6
    fit = t.fit(w0, x, y, round_seed=3)  # a whole DP round (Poisson batches) runs too
    assert np.isfinite(fit.loss)


def test_baselines_use_their_own_vocabulary(labs):
    from fedlab.baselines import run_baselines

    cfg, _ = labs
    cfg = dataclasses.replace(cfg, rounds=1)
    out = run_baselines(cfg, simulation_labs(cfg))
    assert set(out["local_only"]) == {f"lab-{i}" for i in range(5)}
    sizes = out["vocabulary_size"]
    assert sizes["pooled"] == cfg.model.vocab_size  # the pooled texts fill the vocabulary
    assert all(0 < sizes[f"lab-{i}"] <= cfg.model.vocab_size for i in range(5))
    pooled = out["pooled_training"]["pooled_test"]
    assert pooled["examples"] == sum(r["examples"] for r in out["pooled_training"]["labs"]
                                     .values())
    assert pooled["accuracy"] > 0.65
    assert out["best_pass"] == {**{f"lab-{i}": 1 for i in range(5)}, "pooled": 1}


def test_a_baseline_is_kept_at_its_best_validation_pass(encoded):
    from fedlab.baselines import _fit

    cfg, data = encoded
    lab = data[3]
    t = _trainer(cfg)
    w0 = t.get_weights()
    curve: list[float] = []
    t.fit(w0, lab.x_train, lab.y_train, epochs=4, round_seed=1,
          after_epoch=lambda k: curve.append(t.evaluate(None, lab.x_val, lab.y_val).accuracy))
    kept = _fit(t, w0, [lab], 4)  # the same passes (same seed), keeping the best
    assert kept == int(np.argmax(curve)) + 1
    assert t.evaluate(None, lab.x_val, lab.y_val).accuracy == pytest.approx(max(curve))


# ---------------------------------------------------------------- end to end
@pytest.mark.slow
def test_text_example_end_to_end(tmp_path):
    """`fedlab simulate examples/text-sentiment.toml` as it stands (10 short rounds, secure
    aggregation, federated vocabulary): the federated model is within 0.03 of the pooled
    model trained in the same command (kept at its best validation pass); the table shows
    both and each lab alone."""
    short = Path(tempfile.mkdtemp(prefix="fl", dir="/tmp"))  # Ray's socket paths: < 108 bytes
    env = dict(os.environ, TMPDIR=str(short))
    try:
        proc = subprocess.run([sys.executable, "-m", "fedlab.cli", "simulate", str(EXAMPLE),
                               "--out", str(tmp_path), "--no-progress"],
                              capture_output=True, text=True, timeout=900, env=env)
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["secure"] and summary["rounds_completed"] >= 9  # one may fail on a loaded CI
    assert 1 <= summary["baselines"]["best_pass"]["pooled"] <= 20
    fed = summary["federated"]["pooled_test"]
    pooled = summary["baselines"]["pooled_training"]["pooled_test"]
    assert fed["examples"] == pooled["examples"] and abs(fed["examples"] - 0.2 * 12_808) < 5
    assert fed["accuracy"] >= pooled["accuracy"] - 0.03, (fed, pooled)
    assert fed["accuracy"] > 0.72
    vocab = json.loads((run_dir / "vocabulary.json").read_text())
    assert 0 < len(vocab["selected"]) <= 10_000 and vocab["min_labs"] == 2
    prep = json.loads((run_dir / "prep.json").read_text())
    assert prep["secure"] and len(prep["contributors"]) == 5
    for name in ("pooled data", "lab-0 alone", "lab-4 alone", "federated"):
        assert name in proc.stdout
