"""Secure aggregation: fedlab secure vs fedlab plain vs stock Flower SecAgg+, and the floor.

Everything is measured in this one script on this machine:

1. ``micro`` (pure :mod:`fedlab.secure`, no Flower): the keystream floor (AES-256-CTR
   generating ``(P+1)*4`` bytes in cache-sized pieces into one reused buffer, the
   fastest this machine makes them; for reference one ``update_into`` writing them all
   to memory, ChaCha20, and ``expand_mask``); an in-process federation of N labs (``ServerSession`` + N
   ``LabSession``, real keys, setup S1/S2) runs full rounds at P parameters, timing every
   lab's ``masked_update`` (lab side: its floor is ``k+1`` keystreams) and the server's
   ``collect_unmask`` (unmasking: its floor is one keystream per survivor plus one per
   revealed pair key), without and with a few dropouts, and checks that the decoded
   average is the true one. The server's whole work also includes ``collect_masked``
   (checking each masked vector against the SHA-256 its lab signed, and the ring sum),
   which no keystream floor covers: it is compared with the keystream floor plus
   SHA-256 of every vector (2 threads) plus numpy's sum of them. The pieces (encoding,
   masking, SHA-256, summing, decoding) are timed on their own to show where time goes.
2. ``flower``: whole simulated rounds on Flower 1.42's simulation runtime (Ray), synthetic
   updates (every lab returns a fixed random float32 vector of P values, no training):
   ``fedlab-secure`` and ``fedlab-plain`` (``fedlab.simulate.simulate(...,
   synthetic_params=P, synthetic_labs=N)``), and ``stock-secagg`` / ``stock-plain``: the
   legacy app in ``benchmarks/stock_secagg_app`` (NumPyClient + LegacyContext +
   DefaultWorkflow + SecAggPlusWorkflow + secaggplus_mod, as Flower's own secure
   aggregation example), submitted with ``flwr run`` through fedlab's launcher (private
   SuperLink, offline settings, ``num-supernodes=N client-resources-num-cpus=1``, same
   cleanup). A steady round is the median of rounds 2..R. Bytes per lab come from
   fedlab's metrics.jsonl (``bytes_sent`` of kind "train") and, for stock, from the
   replies recorded by the stock ServerApp.
3. ``heart``: the built-in heart-disease demo in simulation, secure vs ``plain=True``, and
   Flower's floor for it: the stock app of ``benchmarks/simulation.py`` in floor mode
   (the same four nodes answer a train message at once, no TensorFlow, one exchange a
   round, Flower's own FedAvg loop). Its rounds are this small model's cost of one
   exchange in Flower's engine, which hands out messages on a 0.1 s tick: a plain round
   needs one exchange, a secure one two, so 2x is where secure/plain sits at the floor.

Neighbours and threshold are the same for every system: fedlab's own (it has no setting
for them): ``k = n - 1`` (full SecAgg) up to 20 labs, ``k = 2*ceil(log2 n) + 4`` beyond
(16 for 50 labs), ``t = k//2 + 1``. Flower's SecAgg+ builds each node's neighbourhood as
the ``num_shares`` nodes at ring offsets ``-num_shares//2 .. +num_shares//2`` *including
the node itself* (it keeps one share of its own secrets), so the same graph degree is
``num_shares = k + 1`` (``= n`` for full SecAgg), and ``reconstruction_threshold = t``.

Output: one JSON line per measurement, then ``ratios`` and ``goals`` lines. Each line
carries ``os.getloadavg()`` and ``other_users_cores`` (machine CPU minus ours while it
ran); a busy machine is flagged. Usage::

    .venv/bin/python -m benchmarks.secure_aggregation                  # everything
    .venv/bin/python -m benchmarks.secure_aggregation --parts micro --params 1000000 --labs 10
    .venv/bin/python -m benchmarks.secure_aggregation --parts flower --configs 10000000x50 \\
        --systems fedlab-secure,stock-secagg --rounds 3
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cputime import TreeCpu

STOCK_APP = Path(__file__).resolve().parent / "stock_secagg_app"
PARTS = ("micro", "flower", "heart")
SYSTEMS = ("fedlab-secure", "fedlab-plain", "stock-secagg", "stock-plain")
WEIGHT = 100  # every synthetic lab's example count, in fedlab and in the stock app
GOAL_CONFIG = (10_000_000, 50)


# -- small helpers --------------------------------------------------------------------------
def emit(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall, CPU seconds busy on the whole machine, CPU seconds of this process and its
    reaped descendants; fedlab's launcher reaps every process Flower and Ray start)."""
    with open("/proc/stat") as f:
        fields = [float(v) for v in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / hz
    t = os.times()
    return time.monotonic(), busy, t.user + t.system + t.children_user + t.children_system


def other_cores(before: tuple[float, float, float]) -> float:
    """Mean number of cores other users' processes kept busy since ``before``."""
    after = cpu_snapshot()
    wall = after[0] - before[0]
    if wall <= 0:
        return 0.0
    return round(max(0.0, (after[1] - before[1]) - (after[2] - before[2])) / wall, 2)


class Watch:
    """Load before/after and other users' CPU for one measurement."""

    def __init__(self) -> None:
        self.before = loadavg()
        self.snap = cpu_snapshot()

    def fields(self) -> dict[str, Any]:
        return {"loadavg_before": self.before, "loadavg_after": loadavg(),
                "other_users_cores": other_cores(self.snap)}


def steady(rounds: list[float]) -> float:
    """Median of rounds 2..R (round 1 starts Ray, the actors and, when secure, runs setup)."""
    return float(statistics.median(rounds[1:])) if len(rounds) > 1 else float("nan")


def timed(fn: Callable[[], Any], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def r4(x: float) -> float:
    return round(float(x), 6)


def r3(x: float) -> float:
    return round(float(x), 3)


def stats(xs: list[float]) -> dict[str, float]:
    return {"min": r4(min(xs)), "median": r4(statistics.median(xs)), "n": len(xs)}


def shape_of(n: int) -> tuple[int, int]:
    """fedlab's (k, t) for n labs: exactly what its Flower apps use (fedlab.updates)."""
    from fedlab.updates import secagg_params

    p = secagg_params("bench", tuple(f"lab-{i}" for i in range(n)), 2)
    return p.neighbours, p.threshold


def stock_shape(n: int, k: int, t: int) -> tuple[int, int]:
    """Flower SecAgg+ (num_shares, reconstruction_threshold) giving degree k, threshold t."""
    return (n if k == n - 1 else k + 1), t


def parse_ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


# -- 1. micro-measurements ------------------------------------------------------------------
FLOOR_CHUNK_WORDS = 1 << 16  # 256 KiB: the piece fedlab.secure.prg works in, in cache


def _keystream(key: bytes, words: int, sink: memoryview, zeros: bytes, cipher: str = "aes") -> None:
    """Generate ``words`` uint32 of keystream in cache-sized pieces into one reused buffer:
    the cipher's cost alone, without writing the stream to memory (the floor)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if cipher == "aes":
        enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    else:
        enc = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    piece = memoryview(zeros)
    for start in range(0, words, FLOOR_CHUNK_WORDS):
        n = 4 * min(FLOOR_CHUNK_WORDS, words - start)
        enc.update_into(piece[:n], sink[:n])


def keystream_floor(words: int, reps: int) -> dict[str, Any]:
    """Seconds for one keystream of ``words`` uint32: AES-256-CTR in pieces (the floor),
    AES-256-CTR in one ``update_into`` into a preallocated array of ``words`` (the stream
    written to memory), ChaCha20 in pieces, and fedlab's ``expand_mask`` (which writes it)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from fedlab.secure.prg import expand_mask

    out = np.empty(words, dtype=np.uint32)
    full_sink = memoryview(out).cast("B")
    buf = np.empty(FLOOR_CHUNK_WORDS, dtype=np.uint32)
    sink = memoryview(buf).cast("B")
    zeros = bytes(4 * FLOOR_CHUNK_WORDS)
    all_zeros = bytes(4 * words)
    key = os.urandom(32)

    def aes_one_call() -> None:
        Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update_into(all_zeros,
                                                                                  full_sink)

    aes_one_call()  # touch the pages once
    res = {"aes256ctr_s": stats(timed(lambda: _keystream(key, words, sink, zeros), reps)),
           "aes256ctr_one_call_s": stats(timed(aes_one_call, reps)),
           "chacha20_s": stats(timed(lambda: _keystream(key, words, sink, zeros, "chacha"),
                                     reps)),
           "expand_mask_s": stats(timed(lambda: expand_mask(key, words, out=out), reps))}
    return res


class Keystreams:
    """Times ``count`` AES-256-CTR keystreams of ``words`` uint32, generated in pieces (the
    floor), so a floor sample can be taken right after each measured operation (paired
    ratios hold up on a shared machine better than one floor measured minutes apart)."""

    def __init__(self, words: int) -> None:
        self.words = words
        self.zeros = bytes(4 * FLOOR_CHUNK_WORDS)
        self.buf = np.empty(FLOOR_CHUNK_WORDS, dtype=np.uint32)
        self.sink = memoryview(self.buf).cast("B")

    def seconds(self, count: int) -> float:
        t0 = time.perf_counter()
        for _ in range(count):
            _keystream(os.urandom(32), self.words, self.sink, self.zeros)
        return time.perf_counter() - t0


class MicroFederation:
    """N LabSessions and one ServerSession in this process, set up (S1, S2) for real."""

    def __init__(self, n: int, params: int) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from fedlab.secure.protocol import LabSession, ServerSession
        from fedlab.updates import secagg_params

        self.labs = tuple(f"lab-{i}" for i in range(n))
        self.params = secagg_params("bench-micro", self.labs, 2)
        ids = {lab: Ed25519PrivateKey.generate() for lab in self.labs}
        roster = {lab: key.public_key() for lab, key in ids.items()}
        self.server = ServerSession(self.params, roster, params)
        self.sessions = {lab: LabSession(self.params, lab, ids[lab], roster) for lab in self.labs}
        # Three distinct updates, rotated (50 labs x 10 M floats would be 2 GB more).
        rng = np.random.default_rng(7)
        self.updates = [(rng.standard_normal(params, dtype=np.float32) * np.float32(0.01))
                        for _ in range(3)]
        self.round = 0
        self.floor = Keystreams(params + 1)
        self.setup()

    def update_of(self, lab: str) -> np.ndarray:
        return self.updates[self.labs.index(lab) % len(self.updates)]

    def setup(self) -> None:
        need = self.server.labs_needing_setup(self.labs)
        if not need:
            return
        s1 = self.server.advertise_requests(need)
        adverts = {lab: self.sessions[lab].advertise(req) for lab, req in s1.items()}
        s2 = self.server.collect_adverts(adverts)
        shares = {lab: self.sessions[lab].share_keys(req) for lab, req in s2.items()}
        self.server.collect_shares(shares)

    def run_round(self, drop: tuple[str, ...] = ()) -> dict[str, Any]:
        """One full round; lab and server stages timed separately."""
        self.setup()
        self.round += 1
        rnd = self.round
        r1 = self.server.train_requests(rnd, self.labs)
        masked = {}
        lab_mask_s, lab_floor_s = [], []
        k = self.params.neighbours
        for lab, req in r1.items():
            if lab in drop:
                continue
            session = self.sessions[lab]
            t0 = time.perf_counter()
            masked[lab] = session.masked_update(req, self.update_of(lab), WEIGHT)
            lab_mask_s.append(time.perf_counter() - t0)
            lab_floor_s.append(self.floor.seconds(k + 1))  # paired floor, right after
        gc.collect()
        t0 = time.perf_counter()
        r2 = self.server.collect_masked(rnd, masked)
        collect_masked_s = time.perf_counter() - t0
        del masked
        unmask = {}
        lab_unmask_s = []
        for lab, req in r2.items():
            t0 = time.perf_counter()
            unmask[lab] = self.sessions[lab].unmask(req)
            lab_unmask_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = self.server.collect_unmask(rnd, unmask)
        collect_unmask_s = time.perf_counter() - t0
        survivors = list(result.survivors)
        pair_keys = sum(1 for d in result.dropped for v in self.params.neighbours_of(d)
                        if v in set(survivors))
        server_floor_s = self.floor.seconds(len(survivors) + pair_keys)  # paired floor
        # Correctness: the decoded average is the survivors' plain average (within the bound).
        want = np.zeros_like(self.updates[0], dtype=np.float64)
        counts = [0] * len(self.updates)
        for lab in survivors:
            counts[self.labs.index(lab) % len(self.updates)] += 1
        for i, c in enumerate(counts):
            if c:
                want += c * self.updates[i].astype(np.float64)
        want /= len(survivors)
        err = float(np.max(np.abs(result.average - want)))
        return {"round": rnd, "dropped": len(result.dropped), "survivors": len(survivors),
                "self_masks": len(survivors), "pair_keys": pair_keys,
                "lab_mask_s": lab_mask_s, "lab_unmask_s": lab_unmask_s,
                "lab_floor_s": lab_floor_s, "server_floor_s": server_floor_s,
                "collect_masked_s": collect_masked_s, "collect_unmask_s": collect_unmask_s,
                "server_s": collect_masked_s + collect_unmask_s,
                "max_abs_error": err, "error_bound": result.error_bound,
                "correct": err <= result.error_bound * 1.0001 + 1e-12}


def lab_pieces(params: int, k: int, reps: int) -> dict[str, Any]:
    """The lab's R1 work piece by piece at P params and k neighbours."""
    from fedlab.secure.encoding import FixedPointEncoder
    from fedlab.secure.prg import apply_masks_into

    enc = FixedPointEncoder(8.0, 1 << 16, 1000)  # SecAggParams defaults
    upd = np.random.default_rng(1).standard_normal(params, dtype=np.float32) * np.float32(0.01)
    out = np.empty(params + 1, dtype=np.uint32)
    keys = [(os.urandom(32), 1 if i % 2 else -1) for i in range(k + 1)]
    return {
        "encode_s": stats(timed(lambda: enc.encode_counting(upd, WEIGHT, out=out), reps)),
        "apply_masks_s": stats(timed(lambda: apply_masks_into(out, keys), reps)),
        "sha256_s": stats(timed(lambda: hashlib.sha256(memoryview(out)).digest(), reps)),
    }


def server_pieces(params: int, n: int, reps: int) -> dict[str, Any]:
    """The server's per-round work piece by piece: N SHA-256 digests (2 threads, as
    collect_masked), the ring sum of N vectors, N self masks, the decode."""
    from fedlab.secure.encoding import FixedPointEncoder
    from fedlab.secure.prg import apply_masks_into

    vecs = [np.random.default_rng(i).integers(0, 2**32, params + 1, dtype=np.uint32)
            for i in range(min(n, 3))]
    vlist = [vecs[i % len(vecs)] for i in range(n)]
    acc = np.zeros(params + 1, dtype=np.uint32)
    keys = [(os.urandom(32), -1) for _ in range(n)]
    enc = FixedPointEncoder(8.0, 1 << 16, 1000)

    def digests() -> None:
        with ThreadPoolExecutor(max_workers=min(n, os.cpu_count() or 1)) as pool:
            list(pool.map(lambda v: hashlib.sha256(memoryview(v)).digest(), vlist))

    def ring_sum() -> None:
        acc[:] = 0
        for v in vlist:
            np.add(acc, v, out=acc)

    def decode() -> None:
        acc[-1] = n * WEIGHT
        enc.decode_sum(acc, n)

    return {"sha256_all_s": stats(timed(digests, reps)), "ring_sum_s": stats(timed(ring_sum, reps)),
            "self_masks_s": stats(timed(lambda: apply_masks_into(acc, keys), max(1, reps - 1))),
            "decode_s": stats(timed(decode, reps))}


def run_micro(params: int, n: int, reps: int, rounds: int) -> dict[str, Any]:
    k, t = shape_of(n)
    words = params + 1
    watch = Watch()
    floor = keystream_floor(words, max(2 * reps, 10))
    fed = MicroFederation(n, params)
    assert (fed.params.neighbours, fed.params.threshold) == (k, t)
    plain_rounds = [fed.run_round() for _ in range(rounds)]
    drops = max(1, min(2 if n <= 20 else 3, k - t, n - 2))
    dropped = fed.labs[-drops:]
    drop_round = fed.run_round(drop=dropped)
    del fed
    gc.collect()
    # The floor again after the rounds: on a shared machine the best of both is the floor.
    after = keystream_floor(words, max(2 * reps, 10))
    one = min(floor["aes256ctr_s"]["min"], after["aes256ctr_s"]["min"])
    floor["aes256ctr_after_s"] = after["aes256ctr_s"]
    lab_mask = [s for r in plain_rounds for s in r["lab_mask_s"]]
    lab_unmask = [s for r in plain_rounds for s in r["lab_unmask_s"]]
    server = [r["server_s"] for r in plain_rounds]
    # Floors. The lab's: the best of its paired samples (k+1 keystreams timed right after
    # each lab's masked_update: as many samples, of about the same length, as the lab
    # measurements, so best-vs-best is fair on a shared machine). The server's: its paired
    # samples (one per round) and the best single keystream (before/after) times n.
    lab_floor_samples = [f for r in plain_rounds for f in r["lab_floor_s"]]
    lab_floor = min(lab_floor_samples)
    one = min(one, lab_floor / (k + 1))
    server_floor = min(n * one, *[r["server_floor_s"] for r in plain_rounds])
    drop_keys = drop_round["self_masks"] + drop_round["pair_keys"]
    drop_floor = min(drop_keys * one, drop_round["server_floor_s"])
    pieces = server_pieces(params, n, reps)
    work_floor = (server_floor + pieces["sha256_all_s"]["min"] + pieces["ring_sum_s"]["min"])
    lab_paired = [m / f for r in plain_rounds
                  for m, f in zip(r["lab_mask_s"], r["lab_floor_s"], strict=False)]
    server_paired = [r["server_s"] / r["server_floor_s"] for r in plain_rounds]
    row = {
        "part": "micro", "params": params, "labs": n, "k": k, "t": t,
        "aes256ctr_floor_s": r4(one), "aes256ctr_gb_per_s": round(4 * words / one / 1e9, 2),
        "keystream_floor_one_s": floor,
        "lab_mask_s": stats(lab_mask), "lab_unmask_s": stats(lab_unmask),
        "lab_keystreams": k + 1, "lab_floor_s": r4(lab_floor),
        "lab_pieces": lab_pieces(params, k, reps),
        "server_s": stats(server),
        "collect_masked_s": stats([r["collect_masked_s"] for r in plain_rounds]),
        "collect_unmask_s": stats([r["collect_unmask_s"] for r in plain_rounds]),
        "server_keystreams": n, "server_floor_s": r4(server_floor),
        "server_pieces": pieces,
        "server_work_floor_s": r4(work_floor),
        "dropout": {"dropped": drop_round["dropped"], "self_masks": drop_round["self_masks"],
                    "pair_keys": drop_round["pair_keys"], "keystreams": drop_keys,
                    "server_s": r4(drop_round["server_s"]),
                    "collect_masked_s": r4(drop_round["collect_masked_s"]),
                    "collect_unmask_s": r4(drop_round["collect_unmask_s"]),
                    "floor_s": r4(drop_floor),
                    "ratio_server_to_floor": r3(drop_round["server_s"] / drop_floor),
                    "ratio_server_to_floor_paired": r3(drop_round["server_s"]
                                                       / drop_round["server_floor_s"]),
                    "ratio_unmask_to_floor": r3(drop_round["collect_unmask_s"] / drop_floor),
                    "correct": drop_round["correct"]},
        "correct": all(r["correct"] for r in plain_rounds) and drop_round["correct"],
        "max_abs_error": max(r["max_abs_error"] for r in [*plain_rounds, drop_round]),
        # best measured / best floor; "paired": median of (measured / floor sampled right after)
        "ratio_lab_to_floor": r3(min(lab_mask) / lab_floor),
        "ratio_lab_to_floor_paired": r3(statistics.median(lab_paired)),
        "ratio_server_to_floor": r3(min(server) / server_floor),
        "ratio_server_to_floor_paired": r3(statistics.median(server_paired)),
        "ratio_unmask_to_floor": r3(min(r["collect_unmask_s"] for r in plain_rounds)
                                    / server_floor),
        "ratio_server_to_work_floor": r3(min(server) / work_floor),
        "expand_mask_to_raw": r3(min(floor["expand_mask_s"]["min"], after["expand_mask_s"]["min"])
                                 / one),
    }
    row.update(watch.fields())
    return row


# -- 2. Flower runs -------------------------------------------------------------------------
def fedlab_bytes(run_dir: Path, rounds: int) -> dict[str, Any]:
    per_round: dict[int, list[int]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("kind") == "train" and row.get("bytes_sent") is not None:
            per_round.setdefault(int(row["round"]), []).append(int(row["bytes_sent"]))
    steady_rounds = [r for r in sorted(per_round) if r >= 2] or sorted(per_round)
    vals = [b for r in steady_rounds for b in per_round[r]]
    return {"bytes_per_lab": int(statistics.median(vals)) if vals else None,
            "bytes_per_lab_max": max(vals) if vals else None}


def run_fedlab(params: int, n: int, rounds: int, plain: bool, out: Path,
               timeout: float) -> dict[str, Any]:
    from fedlab.simulate import simulate

    t0 = time.perf_counter()
    with TreeCpu() as cpu:
        run_dir, summary = simulate(None, out, plain=plain, rounds=rounds, progress=False,
                                    timeout=timeout, synthetic_params=params, synthetic_labs=n)
    wall = time.perf_counter() - t0
    res: dict[str, Any] = {"rounds_s": summary["seconds"]["rounds"], "wall_s": r4(wall),
                           "rounds_completed": summary.get("rounds_completed"),
                           "run_dir": str(run_dir)}
    res.update(fedlab_bytes(run_dir, rounds))
    exchanges, windows = [], []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("kind") == "round":
            exchanges.append(row.get("exchanges"))
            windows.append((float(row["time"]) - float(row["seconds"]), float(row["time"])))
    res["exchanges_per_round"] = exchanges
    res["round_cpu_s"] = [cpu.between(a, b) for a, b in windows]
    return res


def run_stock(params: int, n: int, rounds: int, secagg: bool, work: Path,
              timeout: float) -> dict[str, Any]:
    from fedlab.errors import RunError
    from fedlab.launch import run_flwr, simulation_superlink

    k, t = shape_of(n)
    num_shares, threshold = stock_shape(n, k, t)
    name = f"stock-{'secagg' if secagg else 'plain'}-{params}x{n}"
    times = work / f"{name}-times.jsonl"
    lab_times = work / f"{name}-lab.jsonl"
    for p in (times, lab_times):
        p.unlink(missing_ok=True)
    job_path = work / f"{name}-job.json"
    job_path.write_text(json.dumps({
        "params": params, "labs": n, "rounds": rounds, "secagg": secagg,
        "num_shares": num_shares, "threshold": threshold, "timeout": timeout,
        "times": str(times), "lab_times": str(lab_times), "check": params * n <= 100_000_000}))
    sl_dir = work / f"{name}-superlink"
    sl_dir.mkdir(parents=True, exist_ok=True)
    log_path = work / f"{name}-flower.log"
    t0 = time.perf_counter()
    with TreeCpu() as cpu, simulation_superlink(sl_dir) as (conn, env):
        rc = run_flwr(STOCK_APP, conn, env, job_path=job_path,
                      federation_config=f"num-supernodes={n} client-resources-num-cpus=1",
                      log_path=log_path, timeout=timeout)
    wall = time.perf_counter() - t0
    stamps: dict[int, float] = {}
    exchanges: list[dict[str, Any]] = []
    done: dict[str, Any] = {}
    if times.exists():
        for line in times.read_text().splitlines():
            row = json.loads(line)
            if "round" in row:
                stamps[int(row["round"])] = float(row["t"])
            elif "exchange" in row:
                exchanges.append(row)
            elif row.get("done"):
                done = row
    rounds_s = [stamps[r] - stamps[r - 1] for r in range(1, rounds + 1)
                if r in stamps and r - 1 in stamps]
    if len(rounds_s) < rounds or not done:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise RunError(f"the stock app did not finish (flwr run exit code {rc}); {log_path}:\n{tail}")
    # Attribute exchanges to rounds; per steady round: time in exchanges, server time between.
    per_round: dict[int, list[dict[str, Any]]] = {}
    for ex in exchanges:
        for r in range(1, rounds + 1):
            if stamps[r - 1] <= ex["t0"] < stamps[r]:
                per_round.setdefault(r, []).append(ex)
    stage_s: dict[str, list[float]] = {}
    server_s, bytes_lab, failures = [], [], 0
    for r in range(2, rounds + 1):
        exs = per_round.get(r, [])
        in_ex = sum(e["t1"] - e["t0"] for e in exs)
        server_s.append(rounds_s[r - 1] - in_ex)
        for e in exs:
            stage_s.setdefault(e["exchange"], []).append(e["t1"] - e["t0"])
            failures += int(e.get("errors", 0)) + int(e["sent"]) - int(e["replies"])
        per_node: dict[str, int] = {}
        for e in exs:
            for node, b in e["bytes"].items():
                per_node[node] = per_node.get(node, 0) + int(b)
        bytes_lab.extend(per_node.values())
    lab_stage: dict[str, list[float]] = {}
    if lab_times.exists():
        for line in lab_times.read_text().splitlines():
            row = json.loads(line)
            if int(row.get("group", 0) or 0) >= 2:
                lab_stage.setdefault(row["stage"], []).append(float(row["s"]))
    return {"rounds_s": rounds_s, "wall_s": r4(wall), "num_shares": num_shares,
            "round_cpu_s": [cpu.between(stamps[r - 1], stamps[r]) for r in range(1, rounds + 1)],
            "reconstruction_threshold": threshold,
            "exchange_s": {s: r4(statistics.median(v)) for s, v in stage_s.items()},
            "server_between_exchanges_s": r4(statistics.median(server_s)) if server_s else None,
            "lab_stage_s": {s: stats(v) for s, v in lab_stage.items()},
            "bytes_per_lab": int(statistics.median(bytes_lab)) if bytes_lab else None,
            "failures": failures, "max_abs_error": done.get("max_abs_error")}


def run_flower(system: str, params: int, n: int, rounds: int, work: Path,
               timeout: float) -> dict[str, Any]:
    k, t = shape_of(n)
    watch = Watch()
    if system.startswith("fedlab"):
        res = run_fedlab(params, n, rounds, system == "fedlab-plain", work / "runs", timeout)
    else:
        res = run_stock(params, n, rounds, system == "stock-secagg", work, timeout)
    rounds_s = [r4(s) for s in res.pop("rounds_s")]
    cpu_s = [None if c is None else round(c, 3) for c in res.pop("round_cpu_s")]
    steady_cpu = [c for c in cpu_s[1:] if c is not None]
    row = {"part": "flower", "system": system, "params": params, "labs": n, "k": k, "t": t,
           "rounds": rounds, "steady_round_s": r4(steady(rounds_s)), "round_s": rounds_s,
           "steady_round_cpu_s": round(statistics.median(steady_cpu), 3) if steady_cpu else None,
           "round_cpu_s": cpu_s, **res}
    if row.get("bytes_per_lab"):
        row["bytes_per_lab_over_float32"] = round(row["bytes_per_lab"] / (4 * params), 5)
    row.update(watch.fields())
    return row


# -- 3. heart-disease demo ------------------------------------------------------------------
def run_heart(plain: bool, rounds: int, work: Path, timeout: float) -> dict[str, Any]:
    from fedlab.simulate import simulate

    watch = Watch()
    t0 = time.perf_counter()
    run_dir, summary = simulate(None, work / "runs", rounds=rounds, plain=plain, progress=False,
                                timeout=timeout)
    rounds_s = [r4(s) for s in summary["seconds"]["rounds"]]
    row = {"part": "heart", "system": "fedlab-plain" if plain else "fedlab-secure",
           "rounds": rounds, "steady_round_s": r4(steady(rounds_s)), "round_s": rounds_s,
           "wall_s": r4(time.perf_counter() - t0),
           "accuracy": summary["federated"]["pooled_test"]["accuracy"],
           **fedlab_bytes(run_dir, rounds)}
    row.update(watch.fields())
    return row


def run_heart_floor(rounds: int, work: Path, timeout: float) -> dict[str, Any]:
    import re

    from benchmarks.simulation import run_stock as run_stock_tf
    from fedlab.config import DEFAULT_TOML

    watch = Watch()
    cfg_path = work / "heart-floor.toml"
    text, found = re.subn(r"(?m)^rounds = \d+$", f"rounds = {rounds}", DEFAULT_TOML)
    assert found == 1, "the built-in federation sets rounds once"
    cfg_path.write_text(text)
    res = run_stock_tf(cfg_path, work, 4, cache_model=False, timeout=timeout, floor=True)
    rounds_s = [r4(s) for s in res["rounds_s"]]
    row = {"part": "heart", "system": "flower-floor", "rounds": rounds,
           "steady_round_s": r4(steady(rounds_s)), "round_s": rounds_s,
           "wall_s": r4(res["wall_s"])}
    row.update(watch.fields())
    return row


# -- main -----------------------------------------------------------------------------------
def ratios_and_goals(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, bool]]:
    ratios: dict[str, Any] = {}
    goals: dict[str, bool] = {}
    gp, gn = GOAL_CONFIG
    flower: dict[tuple[int, int], dict[str, float]] = {}
    bytes_over: dict[tuple[int, int], float] = {}
    flower_cpu: dict[tuple[int, int], dict[str, float]] = {}
    for row in rows:
        if row.get("part") == "flower" and "steady_round_s" in row:
            flower.setdefault((row["params"], row["labs"]), {})[row["system"]] = row["steady_round_s"]
            if row.get("steady_round_cpu_s"):
                flower_cpu.setdefault((row["params"], row["labs"]), {})[row["system"]] = \
                    row["steady_round_cpu_s"]
            if row["system"] == "fedlab-secure" and row.get("bytes_per_lab_over_float32"):
                bytes_over[(row["params"], row["labs"])] = row["bytes_per_lab_over_float32"]
    for (p, n), s in sorted(flower.items()):
        key = f"{p}x{n}"
        r: dict[str, float] = {}
        for a, b in (("stock-secagg", "fedlab-secure"), ("fedlab-secure", "fedlab-plain"),
                     ("stock-secagg", "stock-plain"), ("stock-plain", "fedlab-plain")):
            if a in s and b in s and s[b] > 0:
                r[f"{a}/{b}"] = r3(s[a] / s[b])
            c = flower_cpu.get((p, n), {})
            if a in c and b in c and c[b] > 0:
                r[f"{a}/{b} (CPU s)"] = r3(c[a] / c[b])
        if (p, n) in bytes_over:
            r["fedlab-secure bytes/lab / float32 model"] = bytes_over[(p, n)]
        ratios[key] = r
        if (p, n) == GOAL_CONFIG and "stock-secagg/fedlab-secure" in r:
            goals["secure round >= 4x faster than stock SecAgg+ (10M, 50 labs)"] = \
                r["stock-secagg/fedlab-secure"] >= 4.0
        if (p, n) == GOAL_CONFIG and (p, n) in bytes_over:
            goals["bytes per lab <= 1.05x float32 model (10M, 50 labs)"] = bytes_over[(p, n)] <= 1.05
    for row in rows:
        if row.get("part") == "micro" and "error" not in row:
            key = f"{row['params']}x{row['labs']}"
            ratios.setdefault(key, {}).update({
                "lab masking / keystream floor": row["ratio_lab_to_floor"],
                "lab masking / keystream floor (paired)": row["ratio_lab_to_floor_paired"],
                "server unmasking (collect_unmask) / keystream floor": row["ratio_unmask_to_floor"],
                "server collect_masked+collect_unmask / keystream floor":
                    row["ratio_server_to_floor"],
                "server / keystream floor (paired)": row["ratio_server_to_floor_paired"],
                "server collect_masked+collect_unmask / (keystreams + SHA-256 + numpy sum)":
                    row["ratio_server_to_work_floor"],
                "server unmasking with dropouts / keystream floor":
                    row["dropout"]["ratio_unmask_to_floor"],
                "server with dropouts / keystream floor": row["dropout"]["ratio_server_to_floor"]})
            if (row["params"], row["labs"]) == (gp, gn):
                goals["lab-side masking <= 2x keystream floor (10M, k=16)"] = \
                    row["ratio_lab_to_floor"] <= 2.0
                # Unmasking is collect_unmask (with and without dropouts); the hashing and
                # summing in collect_masked has no keystream and is reported beside it.
                goals["server-side unmasking <= 2x keystream floor (10M, 50 labs)"] = \
                    max(row["ratio_unmask_to_floor"],
                        row["dropout"]["ratio_unmask_to_floor"]) <= 2.0
    heart = {row["system"]: row["steady_round_s"] for row in rows
             if row.get("part") == "heart" and "error" not in row}
    if "fedlab-secure" in heart and "fedlab-plain" in heart and heart["fedlab-plain"] > 0:
        ratios["heart secure/plain"] = r3(heart["fedlab-secure"] / heart["fedlab-plain"])
        goals["heart-disease steady secure round <= 2x plain"] = ratios["heart secure/plain"] <= 2.0
    if heart.get("flower-floor", 0) > 0:
        floor = heart["flower-floor"]
        for system, exchanges in (("fedlab-plain", 1), ("fedlab-secure", 2)):
            if system in heart:
                ratios[f"heart {system} / ({exchanges} x flower-floor)"] = r3(
                    heart[system] / (exchanges * floor))
    return ratios, goals


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"from: {', '.join(PARTS)}")
    p.add_argument("--params", default="1000000,10000000")
    p.add_argument("--labs", default="10,50")
    p.add_argument("--configs", default="", help="PxN list (e.g. 10000000x50); overrides "
                                                   "--params/--labs")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"from: {', '.join(SYSTEMS)}")
    p.add_argument("--rounds", type=int, default=3, help="Flower rounds per synthetic run")
    p.add_argument("--micro-rounds", type=int, default=2, help="in-process rounds without "
                                                                "dropouts (one more with)")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each piece timing")
    p.add_argument("--heart-rounds", type=int, default=8)
    p.add_argument("--timeout", type=float, default=1800.0, help="per Flower run, seconds")
    p.add_argument("--workdir", default="", help="keep logs and run folders here")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    systems = [x.strip() for x in args.systems.split(",") if x.strip()]
    bad = [x for x in parts if x not in PARTS] + [x for x in systems if x not in SYSTEMS]
    if bad or args.rounds < 2:
        p.error(f"unknown parts/systems {bad}" if bad else "--rounds must be >= 2")
    if args.configs:
        configs = [tuple(int(float(v)) for v in c.split("x")) for c in args.configs.split(",")]
    else:
        configs = [(pp, n) for pp in parse_ints(args.params) for n in parse_ints(args.labs)]
    work = Path(args.workdir).resolve() if args.workdir else Path(
        tempfile.mkdtemp(prefix="fedlab-bench-secagg-"))
    work.mkdir(parents=True, exist_ok=True)
    start = loadavg()
    snap_all = cpu_snapshot()
    shapes = {n: shape_of(n) for _, n in configs}
    emit({"event": "start", "parts": parts, "systems": systems, "configs": configs,
          "rounds": args.rounds, "cpus": os.cpu_count(), "loadavg": start, "workdir": str(work),
          "neighbours_threshold": {
              str(n): {"k": k, "t": t, "stock_num_shares": stock_shape(n, k, t)[0],
                       "stock_reconstruction_threshold": t} for n, (k, t) in shapes.items()},
          "note": "k, t are fedlab's defaults (no config setting); stock uses num_shares = k+1 "
                  "(its neighbourhood includes the node) and the same t"})
    rows: list[dict[str, Any]] = []

    def record(fn: Callable[[], dict[str, Any]], what: dict[str, Any]) -> None:
        try:
            row = fn()
        except Exception as exc:  # noqa: BLE001 (a failure is a result, too)
            row = {**what, "error": f"{type(exc).__name__}: {exc}"[:3000], "loadavg": loadavg()}
        rows.append(row)
        emit(row)
        gc.collect()

    try:
        if "micro" in parts:
            for pp, n in configs:
                record(lambda pp=pp, n=n: run_micro(pp, n, args.reps, args.micro_rounds),
                       {"part": "micro", "params": pp, "labs": n})
        if "flower" in parts:
            for pp, n in configs:  # one heavy run at a time
                for system in systems:
                    record(lambda s=system, pp=pp, n=n: run_flower(s, pp, n, args.rounds, work,
                                                                   args.timeout),
                           {"part": "flower", "system": system, "params": pp, "labs": n})
        if "heart" in parts:
            for plain in (False, True):
                record(lambda plain=plain: run_heart(plain, args.heart_rounds, work, args.timeout),
                       {"part": "heart", "system": "fedlab-plain" if plain else "fedlab-secure"})
            record(lambda: run_heart_floor(args.heart_rounds, work, args.timeout),
                   {"part": "heart", "system": "flower-floor"})
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    ratios, goals = ratios_and_goals(rows)
    others = other_cores(snap_all)
    busy = start[0] > 0.5 * (os.cpu_count() or 1) or others > 0.25
    emit({"event": "ratios", "ratios": ratios, "loadavg_start": start, "loadavg_end": loadavg(),
          "other_users_cores": others})
    emit({"event": "goals", "goals": goals, "all_met": all(goals.values()) if goals else None,
          "note": ("machine was busy (other users' processes ran meanwhile): re-run when idle"
                   if busy else "machine quiet")})
    errors = [r for r in rows if "error" in r]
    return 1 if errors or not all(goals.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
