"""One federated job, three ways: stock Flower simulation, `fedlab simulate`, sequential Keras.

The job: the bundled heart-disease data, every hospital's rows pooled and spread IID
over N virtual labs (each lab then keeps 25 % of its rows as test rows), an MLP,
SGD, batch 16, a few local epochs, R rounds of FedAvg over all labs. It runs as

1. ``stock``: Flower 1.42's simulation runtime with the app in
   ``benchmarks/stock_tf_app`` (written the way Flower's TensorFlow quickstart writes
   it: Message API, ``flwr.serverapp.strategy.FedAvg``, ``@app.train()`` /
   ``@app.evaluate()``, a Keras model built and compiled inside every call,
   ``model.fit(verbose=0)``), submitted with ``flwr run`` through fedlab's own launcher
   (private SuperLink, offline settings, same ``--federation-config``, same cleanup);
2. ``fedlab``: ``fedlab.simulate.simulate(..., plain=True)`` on the same federation.toml
   (and ``fedlab-secure``, the default secure aggregation, if it runs);
3. ``sequential``: ``benchmarks.sequential.run_sequential`` in this process, no Flower,
   no Ray: the training work a simulation cannot avoid;
4. ``flower-floor``: the stock app in floor mode: the same N nodes, the same model
   arrays sent and returned once per round, no training and no TensorFlow in the
   ClientApp: Flower's own per-round cost for one exchange, which comes on top of the
   training work in any Flower simulation. ``fedlab/(sequential+floor)`` says how much
   fedlab adds beyond the two.

Every round of every system does the same work per lab: evaluate the model it
receives on the lab's test rows and train ``local_epochs`` epochs on its training
rows. (fedlab evaluates the received model inside its one round exchange; stock
FedAvg evaluates the new global model in a second exchange of the same round; the
sequential run evaluates the received model right before each lab's training.)
A steady round is the median of rounds 2..R (round 1 starts Ray, the actors and
TensorFlow, and traces the Keras functions).

Output: one JSON line per measurement and a last line with the ratios
(stock/fedlab, fedlab/sequential) and the machine load. Usage::

    .venv/bin/python -m benchmarks.simulation            # N=10, 8 rounds, 5 epochs
    .venv/bin/python -m benchmarks.simulation --labs 10 --rounds 8 --epochs 5 \
        --systems sequential,fedlab,stock,stock-cached,fedlab-secure
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.cputime import TreeCpu

STOCK_APP = Path(__file__).resolve().parent / "stock_tf_app"
SYSTEMS = ("sequential", "fedlab", "stock", "stock-cached", "fedlab-secure", "flower-floor")
DEFAULT_SYSTEMS = ("sequential", "flower-floor", "fedlab", "stock", "fedlab-secure")

log = logging.getLogger("benchmarks.simulation")


def federation_toml(labs: int, rounds: int, epochs: int, hidden: list[int], batch: int,
                    lr: float, seed: int) -> str:
    return f"""\
[federation]
name = "bench-heart-iid{labs}"
rounds = {rounds}
min_labs = {labs}
seed = {seed}
secure = true

[training]
local_epochs = {epochs}
batch_size = {batch}
learning_rate = {lr}
optimizer = "sgd"

[strategy]
name = "fedavg"

[model]
name = "mlp"
hidden = {json.dumps(hidden)}

[data]
dataset = "heart-disease"

[simulation]
partition = "iid"
num_labs = {labs}
cpus_per_lab = 1
baselines = false
"""


def steady(rounds: list[float]) -> float:
    """Median of rounds 2..R (round 1 is warm-up)."""
    return float(statistics.median(rounds[1:])) if len(rounds) > 1 else float("nan")


def steady_cpu(rounds: list[float | None]) -> float | None:
    """Median CPU seconds of rounds 2..R that fell within the sampled window."""
    known = [c for c in rounds[1:] if c is not None]
    return float(statistics.median(known)) if known else None


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall, CPU seconds busy on the whole machine, CPU seconds of this process and its
    reaped descendants). fedlab's launcher reaps every process Flower and Ray start, so
    machine busy minus our own is what *other* users ran meanwhile."""
    with open("/proc/stat") as f:
        fields = [float(v) for v in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / hz  # minus idle and iowait
    t = os.times()
    return time.monotonic(), busy, t.user + t.system + t.children_user + t.children_system


def other_load(before: tuple[float, float, float]) -> float:
    """Mean number of cores other users' processes kept busy since ``before``."""
    after = cpu_snapshot()
    wall = after[0] - before[0]
    return round(max(0.0, (after[1] - before[1]) - (after[2] - before[2])) / wall, 2) \
        if wall > 0 else 0.0


def emit(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


# -- 3. sequential ------------------------------------------------------------------------
def run_sequential_job(config_path: Path) -> dict[str, Any]:
    from benchmarks.sequential import run_sequential
    from fedlab.config import load_config
    from fedlab.task import load_simulation_lab, simulation_labs, task_shape
    from fedlab.training import LocalTrainer

    cfg = load_config(config_path)
    labs = [load_simulation_lab(cfg, i) for i in range(len(simulation_labs(cfg)))]
    by_rows = {id(lab.x_train): lab for lab in labs}
    first, last = id(labs[0].x_train), id(labs[-1].x_train)
    cpu_start: list[float] = []
    cpu_end: list[float] = []

    class EvaluateThenFit(LocalTrainer):
        """What a fedlab lab does per round (client/lab.py LabWorker.train): evaluate the
        received model on its test (and validation) rows, then train from it."""

        def fit(self, weights: Any, x: Any, y: Any, **kw: Any) -> Any:  # type: ignore[override]
            if id(x) == first:
                cpu_start.append(time.process_time())
            lab = by_rows[id(x)]
            self.evaluate(weights, lab.x_test, lab.y_test)
            if len(lab.y_val):
                self.evaluate(None, lab.x_val, lab.y_val)
            out = super().fit(weights, x, y, **kw)
            if id(x) == last:
                cpu_end.append(time.process_time())
            return out

    shape = task_shape(cfg)
    trainer = EvaluateThenFit(cfg.model, shape.num_features, shape.num_classes, cfg.training,
                              cfg.strategy, seed=cfg.seed)
    t0 = time.perf_counter()
    hist = run_sequential(cfg, labs, evaluate=True, trainer=trainer)
    cpu = [round(b - a, 3) for a, b in zip(cpu_start, cpu_end, strict=True)]
    return {"rounds_s": hist.round_seconds, "wall_s": time.perf_counter() - t0,
            "accuracy": hist.test_accuracy[-1] if hist.test_accuracy else None,
            "cpu_s": cpu, "steady_cpu_s": steady(cpu)}


# -- 2. fedlab ----------------------------------------------------------------------------
def run_fedlab(config_path: Path, out: Path, *, plain: bool, timeout: float) -> dict[str, Any]:
    from fedlab.simulate import simulate

    t0 = time.perf_counter()
    with TreeCpu() as cpu:
        run_dir, summary = simulate(str(config_path), out, plain=plain, progress=False,
                                    timeout=timeout)
    wall = time.perf_counter() - t0
    bounds: list[tuple[float, float]] = []
    # Per round: the slowest lab's and the summed local fit seconds (from metrics.jsonl).
    fit: dict[int, list[float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("kind") == "train" and row.get("seconds") is not None:
            fit.setdefault(int(row["round"]), []).append(float(row["seconds"]))
        if row.get("kind") == "round":
            bounds.append((float(row["time"]) - float(row["seconds"]), float(row["time"])))
    per_round_cpu = [cpu.between(a, b) for a, b in bounds]
    return {"rounds_s": summary["seconds"]["rounds"], "wall_s": wall,
            "accuracy": summary["federated"]["pooled_test"]["accuracy"],
            "fit_s_sum": [round(sum(fit.get(r, [])), 4) for r in sorted(fit)],
            "cpu_s": per_round_cpu, "steady_cpu_s": steady_cpu(per_round_cpu),
            "run_dir": str(run_dir)}


# -- 1. stock Flower ----------------------------------------------------------------------
def run_stock(config_path: Path, work: Path, labs: int, *, cache_model: bool,
              timeout: float, floor: bool = False) -> dict[str, Any]:
    from fedlab.errors import RunError
    from fedlab.launch import run_flwr, simulation_superlink

    name = "flower-floor" if floor else "stock-cached" if cache_model else "stock"
    times_path = work / f"{name}-times.jsonl"
    times_path.unlink(missing_ok=True)
    job_path = work / f"{name}-job.json"
    job_path.write_text(json.dumps({"config": str(config_path), "times": str(times_path),
                                    "num_labs": labs, "cache_model": cache_model,
                                    "floor": floor}))
    sl_dir = work / f"{name}-superlink"
    sl_dir.mkdir(parents=True, exist_ok=True)
    log_path = work / f"{name}-flower.log"
    t0 = time.perf_counter()
    with TreeCpu() as cpu, simulation_superlink(sl_dir) as (conn, env):
        rc = run_flwr(STOCK_APP, conn, env, job_path=job_path,
                      federation_config=f"num-supernodes={labs} client-resources-num-cpus=1",
                      log_path=log_path, timeout=timeout)
    wall = time.perf_counter() - t0
    stamps: dict[int, float] = {}
    acc: dict[str, float] = {}
    if times_path.exists():
        for line in times_path.read_text().splitlines():
            row = json.loads(line)
            if "round" in row:
                stamps[int(row["round"])] = float(row["t"])
            elif row.get("done"):
                acc = row["eval_acc"]
    rounds = [stamps[r] - stamps[r - 1] for r in range(1, len(stamps)) if r - 1 in stamps]
    if not rounds or not acc:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise RunError(f"the stock app did not finish (flwr run exit code {rc}); {log_path}:\n"
                       + tail)
    per_round_cpu = [cpu.between(stamps[r - 1], stamps[r]) for r in range(1, len(stamps))
                     if r - 1 in stamps]
    return {"rounds_s": rounds, "wall_s": wall,
            "accuracy": acc.get(str(len(rounds)), acc.get(len(rounds))),  # type: ignore[call-overload]
            "cpu_s": per_round_cpu, "steady_cpu_s": steady_cpu(per_round_cpu)}


def run_system(system: str, config_path: Path, work: Path, args: argparse.Namespace
               ) -> dict[str, Any]:
    if system == "sequential":
        return run_sequential_job(config_path)
    if system in ("fedlab", "fedlab-secure"):
        return run_fedlab(config_path, work / "runs", plain=system == "fedlab",
                          timeout=args.timeout)
    return run_stock(config_path, work, args.labs, cache_model=system == "stock-cached",
                     timeout=args.timeout, floor=system == "flower-floor")


def _stop(signum: int, frame: object) -> None:
    # Unwind (so the launcher stops every Flower and Ray process it started) on SIGTERM,
    # and on SIGINT even when the shell started us with SIGINT ignored (background job).
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--labs", type=int, default=10)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--hidden", default="64,64")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                   help=f"comma-separated, in run order, from: {', '.join(SYSTEMS)}")
    p.add_argument("--repeat", type=int, default=1,
                   help="run the whole sequence this many times; ratios use the median")
    p.add_argument("--timeout", type=float, default=900.0, help="per Flower run, seconds")
    p.add_argument("--workdir", default="", help="keep configs, logs and run folders here")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or args.rounds < 3:
        p.error(f"unknown systems {unknown}" if unknown else "--rounds must be >= 3")

    work = Path(args.workdir).resolve() if args.workdir else Path(
        tempfile.mkdtemp(prefix="fedlab-bench-sim-"))
    work.mkdir(parents=True, exist_ok=True)
    hidden = [int(h) for h in args.hidden.split(",")]
    config_path = work / "federation.toml"
    config_path.write_text(federation_toml(args.labs, args.rounds, args.epochs, hidden,
                                           args.batch, args.lr, args.seed))
    job = {"labs": args.labs, "rounds": args.rounds, "epochs": args.epochs, "hidden": hidden,
           "batch": args.batch, "lr": args.lr, "data": "heart-disease iid"}
    load_start = load()
    snap_all = cpu_snapshot()
    emit({"event": "start", **job, "cpus": os.cpu_count(), "loadavg": load_start,
          "workdir": str(work)})
    steadies: dict[str, list[float]] = {}
    cpu_steadies: dict[str, list[float]] = {}
    try:
        for rep in range(1, args.repeat + 1):
            for system in systems:
                before = load()
                snap = cpu_snapshot()
                try:
                    res = run_system(system, config_path, work, args)
                except Exception as exc:  # noqa: BLE001 (a failed system is a result, too)
                    emit({"system": system, "rep": rep, **job,
                          "error": f"{type(exc).__name__}: {exc}"[:2000]})
                    continue
                rounds = [round(s, 4) for s in res.pop("rounds_s")]
                steadies.setdefault(system, []).append(steady(rounds))
                if res.get("steady_cpu_s") is not None:
                    cpu_steadies.setdefault(system, []).append(res["steady_cpu_s"])
                emit({"system": system, "rep": rep, **job,
                      "steady_round_s": round(steadies[system][-1], 4), "round_s": rounds,
                      **{k: (round(v, 4) if isinstance(v, float) else v)
                         for k, v in res.items()},
                      "loadavg_before": before, "loadavg_after": load(),
                      "other_users_cores": other_load(snap)})
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    # Over repetitions: the median of each system's steady round.
    steady_of = {k: float(statistics.median(v)) for k, v in steadies.items()}
    cpu_of = {k: float(statistics.median(v)) for k, v in cpu_steadies.items()}

    def ratio(a: str, b: str, of: dict[str, float] = steady_of) -> float | None:
        if a in of and b in of and of[b] > 0:
            return round(of[a] / of[b], 3)
        return None

    ratios = {"stock/fedlab": ratio("stock", "fedlab"),
              "fedlab/sequential": ratio("fedlab", "sequential"),
              "stock-cached/fedlab": ratio("stock-cached", "fedlab"),
              "fedlab-secure/fedlab": ratio("fedlab-secure", "fedlab")}
    if "flower-floor" in steady_of and "sequential" in steady_of and "fedlab" in steady_of:
        ratios["flower-floor/sequential"] = ratio("flower-floor", "sequential")
        ratios["fedlab/(sequential+flower-floor)"] = round(
            steady_of["fedlab"] / (steady_of["sequential"] + steady_of["flower-floor"]), 3)
        ratios["(sequential+flower-floor)/sequential (best fedlab/sequential possible)"] = round(
            (steady_of["sequential"] + steady_of["flower-floor"]) / steady_of["sequential"], 3)
    ratios = {k: v for k, v in ratios.items() if v is not None}
    cpu_ratios = {"stock/fedlab": ratio("stock", "fedlab", cpu_of),
                  "fedlab/sequential": ratio("fedlab", "sequential", cpu_of)}
    cpu_ratios = {k: v for k, v in cpu_ratios.items() if v is not None}
    goals = {}
    if "stock/fedlab" in ratios:
        goals["stock/fedlab >= 5"] = ratios["stock/fedlab"] >= 5.0
    if "fedlab/sequential" in ratios:
        goals["fedlab/sequential <= 1.2"] = ratios["fedlab/sequential"] <= 1.2
    load_end = load()
    others = other_load(snap_all)
    # Our own runs keep both cores busy, so the end load says little; what other users ran
    # meanwhile (machine CPU minus ours) does.
    busy = load_start[0] > 0.5 * (os.cpu_count() or 1) or others > 0.25
    emit({"event": "ratios", **job, "repeat": args.repeat,
          "steady_round_s": {k: round(v, 4) for k, v in steady_of.items()},
          "ratios": ratios, "goals": goals,
          "steady_cpu_s": {k: round(v, 4) for k, v in cpu_of.items()}, "cpu_ratios": cpu_ratios,
          "loadavg_start": load_start,
          "loadavg_end": load_end, "other_users_cores": others,
          "note": ("machine was busy (other users' processes ran meanwhile): re-run when idle"
                   if busy else "machine quiet")})
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
