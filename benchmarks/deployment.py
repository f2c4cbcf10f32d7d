"""Deployment round time: fedlab against stock Flower, on this machine, in one script.

Four hospitals (the bundled heart-disease files, one per node), TLS and SuperNode
authentication on loopback, the same federation.toml and kits for every system:

- ``flower-floor``: Flower's own cost of one exchange: stock ``Grid.send_and_receive``
  to four SuperNodes whose ClientApp sends the model back without work and imports
  nothing heavy (benchmarks/stock_deploy_app, mode "floor");
- ``flower-floor-fastpoll``: the same with Flower's SuperExec task poll shortened
  (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` = ``fedlab.deploy.SUPEREXEC_POLL``, what
  ``fedlab client`` sets), so fedlab's
  own overhead can be read off against a floor with the same knob;
- ``flower-quickstart``: the job written as Flower's TensorFlow quickstart writes it
  (FedAvg strategy, train + evaluate each round, a Keras model built per message);
- ``fedlab-plain`` / ``fedlab-secure``: ``fedlab server`` + four ``fedlab client``.

Seconds per steady round = median of the round durations after the first. One JSON line
per measurement, then the ratios. Usage::

    python benchmarks/deployment.py [--rounds 8] [--only floor,quickstart,plain,secure]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedlab import deploy  # noqa: E402
from fedlab.data import heart_disease as hd  # noqa: E402
from fedlab.launch import (  # noqa: E402
    become_subreaper,
    flower_env,
    free_port,
    stop_all_descendants,
    wait_for_port,
)

STOCK_APP = ROOT / "benchmarks" / "stock_deploy_app"
LABS = hd.HOSPITALS


def emit(**row: Any) -> None:
    print(json.dumps({"bench": "deployment", **row}), flush=True)


def config_text(address: str, rounds: int, secure: bool) -> str:
    return deploy.demo_config(address, rounds=rounds, secure=secure, stage_timeout=120)


def steady(durations: list[float]) -> float:
    return float(statistics.median(durations[1:] if len(durations) > 1 else durations))


# ------------------------------------------------------------------------------ stock Flower


def stock_flower(work: Path, fed: Path, address: str, jobs: list[dict[str, Any]],
                 fast_poll: bool) -> list[list[float]]:
    """SuperLink + four SuperNodes (stock settings unless fast_poll), one ``flwr run`` per
    job; returns each job's round durations."""
    home = work / "flwr-home"
    deploy.write_flwr_config(home, address, fed / "server" / "ca.crt")
    extra = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": deploy.SUPEREXEC_POLL} if fast_poll else {}
    env = flower_env(home, extra)
    if not fast_poll:
        env.pop("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", None)
    host, port = address.rsplit(":", 1)
    procs: list[subprocess.Popen[bytes]] = []
    srv = fed / "server"
    try:
        procs.append(deploy.spawn(
            ["flower-superlink", "--ssl-ca-certfile", str(srv / "ca.crt"),
             "--ssl-certfile", str(srv / "server.pem"), "--ssl-keyfile", str(srv / "server.key"),
             "--host", host, "--port", port, "--enable-supernode-auth",
             "--database", str(work / "state.db"), "--disable-runtime-dependency-installation"],
            env=env, log_path=work / "superlink.log"))
        wait_for_port(host, int(port), 300, procs[0], "the SuperLink")
        regs = [subprocess.Popen(["flwr", "supernode", "register", str(srv / "nodes" / f"{lab}.pub"),
                                  deploy.CONNECTION], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL) for lab in LABS]
        for r in regs:
            r.wait(timeout=300)
        for lab in LABS:
            kit = fed / "labs" / lab
            data = work / "data" / lab / hd.data_file(lab).name
            data.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(hd.data_file(lab), data)
            procs.append(deploy.spawn(
                ["flower-supernode", "--root-certificates", str(kit / "ca.crt"),
                 "--superlink", address, "--auth-supernode-private-key", str(kit / "node.key"),
                 "--port", str(free_port()),
                 "--node-config", f"lab={json.dumps(lab)} data-file={json.dumps(str(data))}"],
                env=env, log_path=work / f"supernode-{lab}.log"))
        out = []
        for i, job in enumerate(jobs):
            times = work / f"times-{i}.jsonl"
            job_path = work / f"job-{i}.json"
            job_path.write_text(json.dumps({**job, "times": str(times), "num_nodes": len(LABS)}))
            with open(work / f"flwr-run-{i}.log", "wb") as log:
                rc = subprocess.run(["flwr", "run", str(STOCK_APP), deploy.CONNECTION, "--stream",
                                     "--run-config", f"job={json.dumps(str(job_path))}"],
                                    env=env, stdout=log, stderr=subprocess.STDOUT,
                                    timeout=3600).returncode
            rows = [json.loads(x) for x in times.read_text().splitlines()] if times.exists() else []
            stamps = [r["t"] for r in rows if "round" in r]
            if rc != 0 or not any(r.get("done") for r in rows):
                raise RuntimeError(f"stock run {job['mode']} failed (rc {rc}); see {work}")
            out.append([b - a for a, b in zip(stamps, stamps[1:], strict=False)])
        return out
    finally:
        deploy.stop_many(procs, grace=5)
        stop_all_descendants(grace=3)


# ------------------------------------------------------------------------------ fedlab


def fedlab_run(work: Path, rounds: int, secure: bool) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    address = f"127.0.0.1:{free_port()}"
    cfg = work / "federation.toml"
    cfg.write_text(config_text(address, rounds, secure))
    res = deploy.provision(cfg, work / "federation")
    env = dict(os.environ)
    fedlab = [sys.executable, "-m", "fedlab.cli"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        server = deploy.spawn([*fedlab, "server", str(res.server_kit), "--out", str(work / "runs")],
                              env=env, log_path=work / "server.log")
        procs.append(server)
        for lab in LABS:
            data = work / "data" / lab / hd.data_file(lab).name
            data.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(hd.data_file(lab), data)
            procs.append(deploy.spawn([*fedlab, "client", str(res.lab_kits[lab]), "--data",
                                       str(data), "--runs", "1"], env=env,
                                      log_path=work / f"lab-{lab}.log"))
        rc = server.wait(timeout=3600)
        if rc != 0:
            raise RuntimeError(f"fedlab server failed (rc {rc}); see {work / 'server.log'}")
        run_dir = Path((work / "server.log").read_text().strip().splitlines()[-1])
        return dict(json.loads((run_dir / "summary.json").read_text()))
    finally:
        deploy.stop_many(procs, grace=8)
        stop_all_descendants(grace=3)


# ------------------------------------------------------------------------------ main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--only", default="floor,fastfloor,quickstart,plain,secure")
    p.add_argument("--workdir", help="keep logs here (default: a temporary folder, removed)")
    args = p.parse_args()
    only = set(args.only.split(","))
    become_subreaper()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fedlab-bench-dep-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, float] = {}
    try:
        if only & {"floor", "quickstart", "fastfloor"}:
            stock = work / "stock"
            stock.mkdir(exist_ok=True)
            address = f"127.0.0.1:{free_port()}"
            (stock / "federation.toml").write_text(config_text(address, args.rounds, False))
            deploy.provision(stock / "federation.toml", stock / "federation")
            jobs = [{"mode": m, "rounds": args.rounds, "config": str(stock / "federation.toml")}
                    for m in ("floor", "quickstart") if m in only]
            if jobs:
                t0 = time.time()
                for job, d in zip(jobs, stock_flower(stock / "stock-run", stock / "federation",
                                                     address, jobs, fast_poll=False), strict=True):
                    name = f"flower-{job['mode']}"
                    results[name] = steady(d)
                    emit(system=name, seconds_per_round=results[name], rounds=d,
                         exchanges_per_round=1 if job["mode"] == "floor" else 2,
                         superexec_poll="1 s (default)")
                emit(system="flower-stock-total", wall_seconds=time.time() - t0)
            if "fastfloor" in only:
                (d,) = stock_flower(stock / "fast-run", stock / "federation", address,
                                    [{"mode": "floor", "rounds": args.rounds,
                                      "config": str(stock / "federation.toml")}], fast_poll=True)
                results["flower-floor-fastpoll"] = steady(d)
                emit(system="flower-floor-fastpoll", seconds_per_round=steady(d), rounds=d,
                     exchanges_per_round=1, superexec_poll=f"{deploy.SUPEREXEC_POLL} s")
        for mode in ("plain", "secure"):
            if mode not in only:
                continue
            t0 = time.time()
            summary = fedlab_run(work / f"fedlab-{mode}", args.rounds, mode == "secure")
            d = list(summary["seconds"]["rounds"])
            results[f"fedlab-{mode}"] = steady(d)
            emit(system=f"fedlab-{mode}", seconds_per_round=steady(d), rounds=d,
                 exchanges_per_round=1 if mode == "plain" else 2,
                 accuracy=summary["federated"]["pooled_test"]["accuracy"],
                 rounds_completed=summary["rounds_completed"], wall_seconds=time.time() - t0)
        for a, b in (("fedlab-plain", "flower-floor"), ("fedlab-plain", "flower-floor-fastpoll"),
                     ("flower-quickstart", "fedlab-plain"), ("fedlab-secure", "fedlab-plain"),
                     ("fedlab-secure", "flower-floor"), ("flower-quickstart", "fedlab-secure")):
            if a in results and b in results:
                emit(ratio=f"{a} / {b}", value=results[a] / results[b])
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
