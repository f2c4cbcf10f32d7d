"""Text data: bundled corpus, loader errors, tokenizer, federated hashed vocabulary, encoder."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import os
import pathlib
import subprocess
import sys
import unicodedata

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedlab.data import text as T
from fedlab.data.partition import dirichlet
from fedlab.errors import ConfigError, DataError, FedlabError

MAPPING = {"pos": 1, "neg": 0}
GOOD = (
    "id,review,verdict\n"
    '1,"Great film, truly great.",pos\n'
    "2,Dull and long.,neg\n"
    '3,"She said ""wow""\nand left",pos\n'
    "4,No label here,\n"
    "5,A plot summary,plot\n"
    "6,Fine,neg\n"
)


def write(tmp_path: pathlib.Path, data: str | bytes, name: str = "lab.csv") -> pathlib.Path:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def load(path: pathlib.Path, **kw):
    args = {"text_column": "review", "label_column": "verdict", "mapping": MAPPING}
    args.update(kw)
    return T.load_text_csv(path, **args)


def load_error(path: pathlib.Path, **kw) -> str:
    with pytest.raises(DataError) as info:
        load(path, **kw)
    return str(info.value)


def assert_names(msg: str, path: pathlib.Path, line: int, column: str) -> None:
    assert str(path) in msg, msg
    assert f"line {line}" in msg, msg
    assert f"column {column!r}" in msg, msg


@pytest.fixture(scope="module")
def corpus():
    return T.load_rotten_tomatoes()


# ---------------------------------------------------------------- bundled corpus
def test_bundled_corpus_is_the_published_file():
    assert hashlib.sha256(T.CORPUS_FILE.read_bytes()).hexdigest() == T.CORPUS_SHA256
    attribution = (T.DATA_DIR / "ATTRIBUTION.md").read_text(encoding="utf-8")
    assert T.CORPUS_SHA256 in attribution
    assert "Apache License 2.0" in attribution and "Pang" in attribution


def test_corpus_counts(corpus):
    texts, labels = corpus
    assert len(texts) == 12_808 and labels.shape == (12_808,) and labels.dtype == np.int64
    assert int((labels == 1).sum()) == 7_403 and int((labels == 0).sum()) == 5_405
    assert all(isinstance(t, str) and t.strip() for t in texts)
    report = T.rotten_tomatoes_report()
    assert report.rows_read == 13_905 and report.rows_kept == 12_808
    assert report.dropped_labels == {"plot": 1_097} and report.missing_label == 0
    assert report.class_counts == {0: 5_405, 1: 7_403}
    movies = T.rotten_tomatoes_movies()
    assert movies.shape == (12_808,) and all(isinstance(m, str) and m for m in movies)
    # callers get copies: changing them does not change the next load
    texts[0] = "changed"
    labels[0] = 7
    again, labels_again = T.load_rotten_tomatoes()
    assert again[0] != "changed" and labels_again[0] in (0, 1)


def test_central_split_is_stratified_and_covers(corpus):
    _, labels = corpus
    train, test = T.rotten_tomatoes_split(seed=0, test_fraction=0.2)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(labels)
    assert len(test) == round(0.2 * len(labels))
    assert abs(labels[test].mean() - labels.mean()) < 0.002
    again = T.rotten_tomatoes_split(seed=0, test_fraction=0.2)
    np.testing.assert_array_equal(test, again[1])
    with pytest.raises(ConfigError, match="test_fraction"):
        T.rotten_tomatoes_split(test_fraction=0.0)


def test_lab_splits_partition_the_corpus(corpus):
    texts, labels = corpus
    labs = T.rotten_tomatoes_labs(5, alpha=0.5, seed=3, val_fraction=0.1)
    assert [lab.name for lab in labs] == ["lab1", "lab2", "lab3", "lab4", "lab5"]
    every = np.concatenate([np.concatenate([lab.train, lab.val, lab.test]) for lab in labs])
    np.testing.assert_array_equal(np.sort(every), np.arange(len(labels)))
    pooled_test = np.concatenate([lab.test for lab in labs])
    assert abs(len(pooled_test) / len(labels) - 0.2) < 0.01
    for lab in labs:  # stratified inside each lab
        rows = np.concatenate([lab.train, lab.val, lab.test])
        assert abs(labels[lab.test].mean() - labels[rows].mean()) < 0.02
    again = T.rotten_tomatoes_labs(5, alpha=0.5, seed=3, val_fraction=0.1)
    assert all(np.array_equal(a.test, b.test) for a, b in zip(labs, again, strict=True))

    encoder = T.TextEncoder(np.arange(100), 1024, 12)
    data = T.text_lab_data(labs[0], texts, labels, encoder, report=T.rotten_tomatoes_report())
    assert data.x_train.shape == (len(labs[0].train), 12) and data.x_train.dtype == np.int32
    assert data.num_val == len(labs[0].val) and data.num_test == len(labs[0].test)
    np.testing.assert_array_equal(data.y_test, labels[labs[0].test])
    assert data.lines_test.shape == (len(labs[0].test),) and data.lines_test.min() >= 2


# ---------------------------------------------------------------- tokenizer
def test_tokenizer_rules():
    assert T.tokenize("It’s a GREAT film -- isn't it? 10/10!") == [
        "it's", "a", "great", "film", "isn't", "it", "10", "10",
    ]  # fmt: skip
    assert T.tokenize("'Quoted' dogs' rock'n'roll") == ["quoted", "dogs", "rock'n'roll"]
    assert T.tokenize("STRASSE Straße ＦＵＬＬ") == ["strasse", "strasse", "full"]
    assert T.tokenize("soft\u00adhyphen zero\u200bwidth") == ["softhyphen", "zerowidth"]
    assert T.tokenize("Éclair à la crème, naïve café") == ["éclair", "à", "la", "crème", "naïve", "café"]
    assert T.tokenize("Ελληνικά ΚΑΙ русский текст 日本語") == [
        "ελληνικά",
        "και",
        "русский",
        "текст",
        "日本語",
    ]
    assert T.tokenize("") == [] and T.tokenize(" ... !!! ") == []
    with pytest.raises(DataError, match="expected a text"):
        T.tokenize(b"bytes")  # type: ignore[arg-type]


@given(st.text(max_size=60))
def test_tokenizer_fast_path_matches_the_full_rules(text):
    full = T._WORD.findall(unicodedata.normalize("NFKC", text).casefold().translate(T._TRANSLATE))
    assert T.tokenize(text) == full
    assert all(t and "'" not in (t[0], t[-1]) for t in full)


def test_bucket_hash_is_pinned():
    # The hash decides every id in a federation: it must never change silently.
    got = T.token_buckets(["film", "the", "it's", "café"], 2**18)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [54456, 247132, 11599, 16879])
    # the documented definition, written out
    digest = hashlib.blake2b("café".encode(), digest_size=8, person=b"fedlab-vocab-v1").digest()
    assert int.from_bytes(digest, "big") % 2**18 == got[3]
    keyed = T.token_buckets(["film"], 2**18, key=b"federation secret")
    assert keyed[0] != got[0]
    assert T.token_buckets([], 8).shape == (0,)


# ---------------------------------------------------------------- federated vocabulary
@pytest.fixture(scope="module")
def labs(corpus):
    """The corpus over five label-skewed labs: each lab's texts."""
    texts, labels = corpus
    return [[texts[i] for i in part] for part in dirichlet(labels, 5, 0.5, seed=1)]


def test_hashed_counts_sum_to_the_pooled_counts(corpus, labs):
    texts, _ = corpus
    buckets = T.DEFAULT_BUCKETS
    contributions = [T.vocabulary_contribution(lab, buckets) for lab in labs]
    pooled = T.hashed_counts(texts, buckets)
    assert pooled.dtype == np.int64 and pooled.shape == (buckets,)
    counts, presence = T.split_contribution(sum(contributions), buckets)
    np.testing.assert_array_equal(counts, pooled)
    smallest = min(range(len(labs)), key=lambda i: len(labs[i]))
    lab = labs[smallest]
    np.testing.assert_array_equal(T.hashed_counts(lab, buckets), contributions[smallest][:buckets])
    np.testing.assert_array_equal(T.hashed_presence(lab, buckets), contributions[smallest][buckets:])
    assert int(T.hashed_counts(lab, 1000).sum()) == sum(len(T.tokenize(t)) for t in lab)


def test_presence_sums_count_the_labs_having_a_bucket(labs):
    buckets = 4096
    presence = [T.hashed_presence(lab, buckets) for lab in labs]
    assert all(set(np.unique(p)) <= {0, 1} for p in presence)
    expected = np.zeros(buckets, dtype=np.int64)
    for lab in labs:
        tokens = sorted({t for text in lab for t in T.tokenize(text)})
        expected[np.unique(T.token_buckets(tokens, buckets))] += 1
    np.testing.assert_array_equal(sum(presence), expected)


def _federated_vocabulary(labs, buckets, vocab_size, min_labs):
    total = sum(T.vocabulary_contribution(lab, buckets) for lab in labs)
    selected = T.build_vocabulary(total, buckets, vocab_size=vocab_size, min_labs=min_labs)
    counts, lab_counts = T.split_contribution(total, buckets)
    np.testing.assert_array_equal(selected, T.select_buckets(counts, lab_counts, vocab_size, min_labs))
    return selected


def test_a_word_of_fewer_than_min_labs_labs_never_enters():
    common = "the film was good and the plot was thin"
    rare = [f"secretword{i}" for i in range(5)]
    labs = [[common] * 3 + [f"{rare[i]} " * 500] for i in range(5)]
    labs[0].append("sharedpair " * 400)
    labs[1].append("sharedpair " * 400)
    buckets = 2**16
    rare_buckets = T.token_buckets(rare, buckets)
    pair_bucket = int(T.token_buckets(["sharedpair"], buckets)[0])
    common_buckets = T.token_buckets(T.tokenize(common), buckets)
    assert not set(rare_buckets.tolist()) & (set(common_buckets.tolist()) | {pair_bucket})  # no collision

    selected = _federated_vocabulary(labs, buckets, 100, min_labs=2)
    assert not np.isin(rare_buckets, selected).any()  # 500 occurrences each, yet never selected
    assert pair_bucket in selected.tolist()  # two labs: enters
    assert set(common_buckets.tolist()) <= set(selected.tolist())
    encoder = T.TextEncoder(selected, buckets, 8)
    assert (encoder.token_ids(rare) == T.OOV).all()
    assert (encoder.token_ids(["the", "sharedpair"]) >= T.FIRST_ID).all()

    strict = _federated_vocabulary(labs, buckets, 100, min_labs=3)
    assert pair_bucket not in strict.tolist() and not np.isin(rare_buckets, strict).any()
    with pytest.raises(ConfigError, match="no bucket is held by 6 or more labs"):
        _federated_vocabulary(labs, buckets, 100, min_labs=6)


def test_select_buckets_ranks_by_count_then_bucket_id():
    totals = np.array([5, 9, 5, 0, 7, 5, 1])
    labs = np.array([2, 3, 2, 0, 1, 4, 1])
    np.testing.assert_array_equal(T.select_buckets(totals, labs, 10, 2), [1, 0, 2, 5])
    np.testing.assert_array_equal(T.select_buckets(totals, labs, 2, 2), [1, 0])
    np.testing.assert_array_equal(T.select_buckets(totals, labs, 3, 1), [1, 4, 0])
    selected = T.select_buckets(totals.astype(np.float64), labs.astype(np.uint32), 10, 2)
    assert selected.dtype == np.int64
    with pytest.raises(DataError, match="held by 3 labs but has only 1 tokens"):
        T.select_buckets(np.array([1]), np.array([3]), 5, 1)
    with pytest.raises(DataError, match="negative count"):
        T.select_buckets(np.array([-1]), np.array([0]), 5, 1)
    with pytest.raises(DataError, match="not whole numbers"):
        T.select_buckets(np.array([1.5]), np.array([1]), 5, 1)
    with pytest.raises(DataError, match="2 total counts but 1 lab counts"):
        T.select_buckets(np.array([1, 1]), np.array([1]), 5, 1)
    with pytest.raises(ConfigError, match="vocab_size"):
        T.select_buckets(totals, labs, 0, 1)
    with pytest.raises(ConfigError, match="min_labs"):
        T.select_buckets(totals, labs, 5, True)
    with pytest.raises(DataError, match="expected 8 values"):
        T.split_contribution(np.zeros(6, dtype=np.int64), 4)


def _simulated_secure_sum(vectors, weight, frac_bits):
    """The fixed-point ring sum of fedlab.secure.encoding, written out."""
    acc = np.zeros(len(vectors[0]), dtype=np.int64)
    for values in vectors:
        acc += np.rint(values * weight * 2.0**frac_bits).astype(np.int64)
    return acc.astype(np.int32).astype(np.float64) / 2.0**frac_bits


def test_counts_travel_exactly_through_the_fixed_point_sum(labs, caplog):
    scaling = T.scale_for_aggregation(clip=8.0, max_weight=2**16, frac_bits=2)
    assert scaling.weight == 2**16 and scaling.capacity == 2**21
    contributions = [T.vocabulary_contribution(lab, 2**12) for lab in labs]
    vectors = [scaling.to_values(c) for c in contributions]
    decoded = scaling.from_sum(_simulated_secure_sum(vectors, scaling.weight, 2))
    np.testing.assert_array_equal(decoded, sum(contributions))
    # a non-power-of-two weight still rounds back exactly
    odd = T.scale_for_aggregation(clip=3.0, max_weight=1000, frac_bits=5)
    counts = np.array([0, 1, 2, 77, odd.capacity])
    np.testing.assert_array_equal(
        odd.from_sum(_simulated_secure_sum([odd.to_values(counts)], odd.weight, 5)), counts
    )
    with caplog.at_level("WARNING"):
        clamped = odd.to_values(np.array([odd.capacity + 5]))
    assert clamped[0] * odd.weight * 2**5 <= 3.0 * odd.weight * 2**5 and "clamped" in caplog.text
    with pytest.raises(ConfigError, match="cannot carry a count of 1"):
        T.scale_for_aggregation(clip=0.1, max_weight=1, frac_bits=0)
    with pytest.raises(DataError, match="not whole counts"):
        scaling.from_sum(np.array([0.1]))


def test_counts_through_the_real_encoder(labs):
    encoding = pytest.importorskip("fedlab.secure.encoding")
    encoder = encoding.FixedPointEncoder(8.0, 2**16, 1000)
    scaling = T.scale_for_aggregation(
        clip=encoder.clip, max_weight=encoder.max_weight, frac_bits=encoder.frac_bits
    )
    contributions = [T.vocabulary_contribution(lab, 2**12) for lab in labs]
    ring = np.zeros(2 * 2**12 + 1, dtype=np.uint32)
    for contribution in contributions:
        ring += encoder.encode(scaling.to_values(contribution), scaling.weight)
    weighted_sum, _ = encoder.decode_sum(ring, len(labs))
    np.testing.assert_array_equal(scaling.from_sum(weighted_sum), sum(contributions))


# ---------------------------------------------------------------- encoder
def test_every_lab_gets_the_same_ids(corpus, labs):
    texts, _ = corpus
    selected = _federated_vocabulary(labs, T.DEFAULT_BUCKETS, 2000, 2)
    probe = texts[:300] + ["A word nobody has: zyzzyvaqx!", ""]
    encoders = [T.TextEncoder(selected.tolist(), T.DEFAULT_BUCKETS, 40) for _ in labs]
    for encoder, lab in zip(encoders, labs, strict=True):
        encoder.encode(lab)  # each lab warms its cache on its own texts first
    first = encoders[0].encode(probe)
    for encoder in encoders[1:]:
        np.testing.assert_array_equal(encoder.encode(probe), first)
        assert encoder.fingerprint() == encoders[0].fingerprint()
    assert first.min() >= 0 and first.max() < encoders[0].input_dim == 2002

    # another process (another PYTHONHASHSEED) derives the same ids
    code = (
        "import sys, numpy as np; from fedlab.data import text as T\n"
        "sel = np.array([int(s) for s in sys.argv[1].split(',')])\n"
        "e = T.TextEncoder(sel, T.DEFAULT_BUCKETS, 40)\n"
        "print(e.fingerprint()); print(','.join(map(str, e.encode([sys.argv[2]])[0])))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, ",".join(map(str, selected)), probe[7]],
        capture_output=True, text=True, env=env, check=True, timeout=120,
    ).stdout.split()  # fmt: skip
    assert out[0] == encoders[0].fingerprint()
    assert out[1] == ",".join(map(str, first[7]))


def test_padding_truncation_and_oov():
    words = [f"w{i}" for i in range(50)]
    selected = T.token_buckets(words[:10], 2**18)
    encoder = T.TextEncoder(selected, 2**18, 40)
    assert encoder.vocab_size == 10 and encoder.input_dim == 12
    x = encoder.encode([" ".join(words), "w3 w1 unknown", "", "?!", "W0"])
    assert x.shape == (5, 40) and x.dtype == np.int32
    np.testing.assert_array_equal(x[0, :10], np.arange(2, 12))  # rank order: w0 -> 2, ...
    np.testing.assert_array_equal(x[0, 10:], np.ones(30))  # truncated at 40 tokens, the rest OOV
    np.testing.assert_array_equal(x[1, :4], [5, 3, 1, 0])
    assert not x[1, 3:].any()
    np.testing.assert_array_equal(x[2], [1] + [0] * 39)  # no token: one OOV, never all padding
    np.testing.assert_array_equal(x[3], x[2])
    assert x[4, 0] == 2
    assert encoder.encode([]).shape == (0, 40)
    short = T.TextEncoder(selected, 2**18, 2)
    np.testing.assert_array_equal(short.encode(["w9 w8 w7"]), [[11, 10]])


def test_encoder_arguments_are_checked():
    with pytest.raises(ConfigError, match="empty"):
        T.TextEncoder([], 100, 4)
    with pytest.raises(ConfigError, match=r"\[0, 100\)"):
        T.TextEncoder([5, 100], 100, 4)
    with pytest.raises(ConfigError, match="twice"):
        T.TextEncoder([5, 5], 100, 4)
    with pytest.raises(ConfigError, match="integer bucket ids"):
        T.TextEncoder([1.5], 100, 4)
    with pytest.raises(ConfigError, match="max_len"):
        T.TextEncoder([1], 100, 0)
    with pytest.raises(ConfigError, match="buckets"):
        T.TextEncoder([1], 2**30, 4)
    with pytest.raises(ConfigError, match="key"):
        T.TextEncoder([1], 100, 4, key="not bytes")  # type: ignore[arg-type]
    encoder = T.TextEncoder([1], 100, 4)
    with pytest.raises(DataError, match="single str"):
        encoder.encode("one text, not a list")
    with pytest.raises(DataError, match="text 1 is a int"):
        encoder.encode(["ok", 3])
    with pytest.raises(DataError, match="single str"):
        T.hashed_counts("one text", 16)
    keyed = T.TextEncoder([1], 100, 4, key=b"k")
    assert keyed.fingerprint() != encoder.fingerprint()


@settings(max_examples=100, deadline=None)
@given(texts=st.lists(st.text(max_size=30), max_size=6), max_len=st.integers(1, 6))
def test_random_texts_encode(texts, max_len):
    encoder = T.TextEncoder(np.arange(0, 64, 3), 64, max_len)
    x = encoder.encode(texts)
    assert x.shape == (len(texts), max_len)
    assert x.min(initial=0) >= 0 and x.max(initial=0) < encoder.input_dim
    for row, text in zip(x, texts, strict=True):
        n = max(1, min(len(T.tokenize(text)), max_len))
        assert (row[:n] > 0).all() and not row[n:].any()
    np.testing.assert_array_equal(T.hashed_counts(texts, 64).sum(), sum(len(T.tokenize(t)) for t in texts))


# ---------------------------------------------------------------- loader: good files
def test_good_file(tmp_path):
    path = write(tmp_path, GOOD)
    texts, labels, report = load(path, drop_labels=["plot"])
    assert texts == ["Great film, truly great.", "Dull and long.", 'She said "wow"\nand left', "Fine"]
    np.testing.assert_array_equal(labels, [1, 0, 1, 0])
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(report.lines, [2, 3, 4, 8])  # the quoted text spans lines 4-5
    assert report.rows_read == 6 and report.rows_kept == 4
    assert report.missing_label_lines == [6] and report.missing_label == 1
    assert report.dropped_labels == {"plot": 1} and report.class_counts == {0: 2, 1: 2}
    summary = report.format()
    assert "6 rows read, 4 kept" in summary and "1 left out for an empty label (lines 6)" in summary
    assert report.to_dict()["missing_label_lines"] == [6]


def test_crlf_bom_and_compressed_files(tmp_path):
    plain = load(write(tmp_path, GOOD), drop_labels=["plot"])
    crlf = "\ufeff" + GOOD.replace("\n", "\r\n")
    for name, data in [
        ("crlf.csv", crlf.encode()),
        ("lab.csv.bz2", bz2.compress(GOOD.encode())),
        ("lab.csv.gz", gzip.compress(GOOD.encode())),
    ]:
        texts, labels, report = load(write(tmp_path, data, name), drop_labels=["plot"])
        assert [t.replace("\r\n", "\n") for t in texts] == plain[0]
        np.testing.assert_array_equal(labels, plain[1])
        np.testing.assert_array_equal(report.lines, plain[2].lines)


def test_columns_by_index_without_header(tmp_path):
    path = write(tmp_path, "pos,1,Nice one\nneg,2,Awful\n")
    texts, labels, report = T.load_text_csv(
        path, text_column=2, label_column=0, mapping=MAPPING, header=False
    )
    assert texts == ["Nice one", "Awful"] and labels.tolist() == [1, 0]
    np.testing.assert_array_equal(report.lines, [1, 2])


def test_text_without_tokens_is_kept_and_counted(tmp_path):
    texts, _, report = load(write(tmp_path, "review,verdict\n!!!,pos\nok,neg\n"))
    assert texts == ["!!!", "ok"] and report.no_tokens == 1


# ---------------------------------------------------------------- loader: errors
def test_missing_file_and_directory(tmp_path):
    msg = load_error(tmp_path / "nope.csv")
    assert "no such file" in msg and "nope.csv" in msg
    assert "is a directory" in load_error(tmp_path)


@pytest.mark.parametrize("data", ["", "\n\n", "\ufeff  "])
def test_empty_file(tmp_path, data):
    path = write(tmp_path, data)
    msg = load_error(path)
    assert str(path) in msg and "line 1" in msg and "empty" in msg


def test_binary_file(tmp_path):
    path = write(tmp_path, b'review,verdict\n"ok, fine",pos\nab\x00\x01cd,neg\n')
    msg = load_error(path)
    assert_names(msg, path, 3, "review")
    assert "binary" in msg


def test_non_utf8(tmp_path):
    path = write(tmp_path, 'review,verdict\n"a, b",pos\nok,n\u00e9g\n'.encode("latin-1"))
    msg = load_error(path)
    assert_names(msg, path, 3, "verdict")
    assert "0xe9" in msg and "UTF-8" in msg


def test_stray_carriage_return(tmp_path):
    path = write(tmp_path, 'review,verdict\n"ok\rthen",pos\n')
    msg = load_error(path)
    assert_names(msg, path, 2, "review")
    assert "carriage return" in msg


def test_bad_compressed_file(tmp_path):
    path = write(tmp_path, GOOD, "lab.csv.bz2")
    msg = load_error(path)
    assert str(path) in msg and "not a valid bzip2 file" in msg


def test_missing_column(tmp_path):
    path = write(tmp_path, GOOD)
    msg = load_error(path, text_column="text")
    assert_names(msg, path, 1, "text")
    assert "'review'" in msg  # lists what the header has
    msg = load_error(write(tmp_path, "a,b\nx,pos\n"), text_column=5, label_column=1, header=False)
    assert "line 1" in msg and "field 6" in msg


def test_duplicate_header_name(tmp_path):
    path = write(tmp_path, "review,review,verdict\na,b,pos\n")
    msg = load_error(path)
    assert_names(msg, path, 1, "review")
    assert "2 times" in msg


def test_unmapped_label(tmp_path):
    path = write(tmp_path, GOOD)
    msg = load_error(path)  # 'plot' is not dropped this time
    assert_names(msg, path, 7, "verdict")
    assert "'plot'" in msg and "mapping" in msg
    spaced = write(tmp_path, "review,verdict\nok, pos\n", "spaced.csv")
    assert "remove the spaces" in load_error(spaced)


def test_empty_text(tmp_path):
    path = write(tmp_path, 'review,verdict\nfine,pos\n"  ",neg\n')
    msg = load_error(path)
    assert_names(msg, path, 3, "review")
    assert "the text is empty" in msg


def test_wrong_number_of_fields(tmp_path):
    path = write(tmp_path, "review,verdict\nfine,pos\nno label\ntoo,many,fields\n\nok,neg\n")
    msg = load_error(path)
    assert_names(msg, path, 3, "verdict")
    assert "found 1 fields, expected 2" in msg
    assert "line 4" in msg and "line 5" in msg and "3 more problem(s)" not in msg


def test_malformed_quoting(tmp_path):
    path = write(tmp_path, 'review,verdict\nfine,pos\n"bad "quote,neg\n')
    msg = load_error(path)
    assert str(path) in msg and "line 3" in msg and "quoting" in msg


def test_header_only_and_no_labels(tmp_path):
    path = write(tmp_path, "review,verdict\n")
    msg = load_error(path)
    assert_names(msg, path, 2, "review")
    assert "no data rows" in msg
    msg = load_error(write(tmp_path, "review,verdict\na,\nb,\n", "nolabel.csv"))
    assert "none of the 2 rows has a label" in msg and "column 'verdict'" in msg


def test_argument_errors(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(ConfigError, match="0-based index"):
        load(path, header=False)
    with pytest.raises(ConfigError, match="both"):
        load(path, label_column="review")
    with pytest.raises(ConfigError, match="mapping"):
        load(path, mapping={})
    with pytest.raises(ConfigError, match="class index"):
        load(path, mapping={"pos": -1})
    with pytest.raises(ConfigError, match="either kept or left out"):
        load(path, drop_labels=["pos"])
    with pytest.raises(ConfigError, match="drop_labels"):
        load(path, drop_labels="plot")


# ---------------------------------------------------------------- property-based
_fields = st.one_of(
    st.sampled_from(["pos", "neg", "", "plot", " pos", "a text", '"q, uoted"', '"x""y"', "\u00e9t\u00e9"]),
    st.text(max_size=8),
)


@st.composite
def _text_csv(draw):
    rows = draw(st.lists(st.lists(_fields, min_size=1, max_size=4), max_size=6))
    end = draw(st.sampled_from(["\n", "\r\n"]))
    return end.join(",".join(r) for r in rows) + draw(st.sampled_from(["", end]))


def _load_or_fedlab_error(path: pathlib.Path, header: bool) -> None:
    spec = (
        {"text_column": "review", "label_column": "verdict"}
        if header
        else {"text_column": 1, "label_column": 2}
    )
    try:
        texts, labels, report = T.load_text_csv(
            path, mapping=MAPPING, header=header, drop_labels=["plot"], **spec
        )
    except FedlabError as exc:
        assert isinstance(exc, DataError), exc
        assert str(path) in str(exc)
        return
    assert len(texts) == labels.shape[0] == report.rows_kept == report.lines.shape[0] > 0
    assert set(labels.tolist()) <= {0, 1} and all(t.strip() for t in texts)
    assert report.rows_read == report.rows_kept + report.missing_label + sum(report.dropped_labels.values())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_text_csv(), header=st.booleans())
def test_random_text_files_load_or_raise_data_error(tmp_path, text, header):
    body = ("id,review,verdict\n" if header else "") + text
    _load_or_fedlab_error(write(tmp_path, body.encode("utf-8", "surrogatepass")), header)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.binary(max_size=40),
    position=st.integers(min_value=0, max_value=len(GOOD.encode())),
    cut=st.integers(min_value=0, max_value=6),
    header=st.booleans(),
)
def test_mutated_text_files_load_or_raise_data_error(tmp_path, data, position, cut, header):
    raw = GOOD.encode()
    _load_or_fedlab_error(write(tmp_path, raw[:position] + data + raw[position + cut :]), header)
