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
    assert row["ratio_unmask_to_floor"] > 0 and row["ratio_server_to_work_floor"] > 0
    assert row["server_work_floor_s"] > row["server_floor_s"]  # + SHA-256 + sum
    assert "server unmasking (collect_unmask) / keystream floor" in ratios["2000x5"]


def test_keystream_floor_generates_the_stream_it_times():
    """The floor makes the whole AES-256-CTR stream, piece by piece: its last piece is the
    tail of the stream one cipher call makes."""
    import numpy as np
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key, words = bytes(range(32)), 3 * bench.FLOOR_CHUNK_WORDS + 5
    whole = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(4 * words))
    sink = memoryview(np.empty(bench.FLOOR_CHUNK_WORDS, dtype=np.uint32)).cast("B")
    bench._keystream(key, words, sink, bytes(4 * bench.FLOOR_CHUNK_WORDS))
    assert bytes(sink[:4 * 5]) == whole[-4 * 5:]
