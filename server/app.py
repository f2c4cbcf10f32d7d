"""fedlab's Flower ServerApp: one federation run, start to finish."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlab import codec
from fedlab.errors import FedlabError, RoundAborted, RunError
from fedlab.job import Job, load_job
from fedlab.report import write_report
from fedlab.runs import RunFolder, list_checkpoints, load_checkpoint
from server.board import RunBoard
from server.federation import FederationServer, RoundOutcome, pooled
from server.strategy import ServerOptimizer
from server.validate import check_vector

log = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    _log_ours()
    job = load_job(str(context.run_config["job"]))
    run_federation(grid, job)


def _log_ours() -> None:
    """INFO logs of fedlab's own modules (not of every library) to the run's log."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in ("fedlab", "server", "client"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        if not logger.handlers:
            logger.addHandler(handler)
        logger.propagate = False


def _initial_weights(job: Job) -> tuple[list[np.ndarray], Any]:
    if job.synthetic_params:  # benchmarks: a flat "model" of that many zeros, no Keras
        return [np.zeros(job.synthetic_params, dtype=np.float32)], None
    from fedlab.models import build_model
    from fedlab.task import task_shape

    cfg = job.config()
    shape = task_shape(cfg)
    model = build_model(cfg.model, shape.num_features, shape.num_classes, seed=cfg.seed)
    return [np.asarray(w, dtype=np.float32) for w in model.get_weights()], model


def _resume(folder: RunFolder, shapes: codec.Shapes
            ) -> tuple[int, list[np.ndarray], dict[str, np.ndarray], str] | None:
    """The newest checkpoint whose hash verifies (older ones if the newest is damaged);
    metrics of rounds after it (a round in progress when the server died) are dropped,
    because that round is redone."""
    for rnd, path in reversed(list_checkpoints(folder.path)):
        try:
            weights, state, sha = load_checkpoint(path)
        except FedlabError as exc:
            folder.audit.record("checkpoint_rejected", round=rnd, reason=str(exc))
            log.warning("%s", exc)
            continue
        if codec.shapes_of(weights) != shapes:
            folder.audit.record("checkpoint_rejected", round=rnd,
                                reason="weights do not fit the federation's model")
            continue
        folder.drop_metrics_after(rnd)
        return rnd, weights, state, sha
    folder.drop_metrics_after(0)
    return None


def run_federation(grid: Grid, job: Job) -> dict[str, Any]:
    t_start = time.time()
    srv = FederationServer(grid, job)
    cfg = srv.cfg
    folder = srv.folder
    folder.write_config(cfg.to_toml())
    folder.audit.record("run_started", run=srv.run_id, federation=cfg.name, mode=job.mode,
                        secure=cfg.secure, rounds=cfg.rounds, labs=list(job.labs))
    weights, model = _initial_weights(job)
    shapes = codec.shapes_of(weights)
    global_vec = codec.flatten(weights)
    optimizer = ServerOptimizer(cfg.strategy, global_vec.size)
    folder.audit.record("initial_model", sha256=codec.weights_hash(weights),
                        params=int(global_vec.size))

    start_round, completed = 1, 0
    if job.resume:
        resumed = _resume(folder, shapes)
        if resumed is not None:
            last, weights, state, sha = resumed
            global_vec = codec.flatten(weights)
            optimizer.load_state(state)
            start_round = last + 1
            completed = len([r for r, _ in list_checkpoints(folder.path) if r <= last])
            folder.audit.record("resumed", from_round=last, model_sha256=sha)
            log.info("resuming after round %d (model %s...)", last, sha[:12])
        else:
            folder.audit.record("resumed", from_round=0, reason="no usable checkpoint")
    # TensorBoard event files (server.board); a resumed run drops what redone rounds wrote.
    board = RunBoard(folder.path, resume_after=start_round - 1 if job.resume else None,
                     enabled=not job.synthetic_params)

    # Simulation: every virtual lab exists, a slow one is only slow to start (TensorFlow,
    # privacy calibration on a loaded machine): wait for all of them.
    srv.discover(wait=900.0 if job.mode == "simulation" else 3600.0)
    # Statistics of every lab's data (feature means, a vocabulary), before round 1;
    # a resumed run reuses the ones it recorded (server.prep).
    from server.prep import Preprocessing

    srv.prep = Preprocessing.start(srv, resume=job.resume)
    secure = None
    if cfg.secure:
        from server.secure import SecureRounds

        secure = SecureRounds(srv, global_vec.size)

    round_seconds: list[float] = []
    for rnd in range(start_round, cfg.rounds + 1):
        t0 = time.time()
        folder.audit.record("round_started", round=rnd)
        try:
            outcome: RoundOutcome = (secure.run_round(rnd, global_vec) if secure is not None
                                     else srv.plain_round(rnd, global_vec))
        except RoundAborted as exc:
            outcome = RoundOutcome(None, sorted(srv.labs.node_of), [], [], {}, {}, {},
                                   secure=secure is not None, reason=str(exc))
        _log_lab_metrics(folder, rnd, outcome)
        if srv.prep is not None:
            srv.prep.after_round(set(outcome.lab_metrics))
        ok = outcome.avg_update is not None
        if ok:
            assert outcome.avg_update is not None
            reason = check_vector(outcome.avg_update.astype(np.float32), length=global_vec.size,
                                  max_norm=cfg.robustness.max_update_norm)
            if reason is not None:
                ok = False
                outcome.reason = f"aggregate rejected: {reason}"
                folder.audit.record("aggregate_rejected", round=rnd, reason=reason)
        if ok:
            assert outcome.avg_update is not None
            global_vec = optimizer.apply(global_vec, outcome.avg_update)
            completed += 1
            new_weights = codec.unflatten(global_vec, shapes)
            sha = codec.weights_hash(new_weights)
            folder.checkpoint(rnd, new_weights, {"round": np.asarray(rnd), **optimizer.state()},
                              sha)
            folder.audit.record("round_completed", round=rnd, participants=outcome.participants,
                                contributors=outcome.contributors, dropped=outcome.dropped,
                                rejected=outcome.rejected, secure=outcome.secure,
                                model_sha256=sha)
        else:
            log.warning("round %d failed: %s (previous global model kept)", rnd, outcome.reason)
            folder.audit.record("round_failed", round=rnd, reason=outcome.reason,
                                participants=outcome.participants, dropped=outcome.dropped)
        secs = time.time() - t0
        round_seconds.append(secs)
        folder.metric(kind="round", round=rnd, seconds=secs, aggregated=ok,
                      secure=outcome.secure, participants=outcome.participants,
                      contributors=outcome.contributors, dropped=outcome.dropped,
                      rejected=outcome.rejected, exchanges=outcome.exchanges,
                      reason=outcome.reason)
        board.log_round(rnd, outcome.lab_metrics, seconds=secs,
                        contributors=len(outcome.contributors), dropped=len(outcome.dropped),
                        aggregated=ok)

    final = srv.final_evaluation(global_vec)
    if job.mode == "deployment":
        srv.say_done()
    for lab, m in sorted(final.items()):
        folder.metric(kind="eval", round=cfg.rounds, lab=lab, loss=m.get("test-loss"),
                      accuracy=m.get("test-accuracy"), examples=m.get("test-examples"))
    fed_pooled = pooled(final.values())
    folder.metric(kind="eval", round=cfg.rounds, lab="pooled", **fed_pooled)
    board.log_final(cfg.rounds, final)
    board.close()

    final_weights = codec.unflatten(global_vec, shapes)
    if model is not None:
        model.set_weights(final_weights)
        model.save(folder.path / "model.keras")
    sha = codec.weights_hash(final_weights)
    (folder.path / "model.sha256").write_text(sha + "\n")

    summary: dict[str, Any] = {
        "federation": cfg.name,
        "run": srv.run_id,
        "mode": job.mode,
        "secure": cfg.secure,
        "strategy": cfg.strategy.name,
        "model": cfg.model.name,
        "rounds": cfg.rounds,
        "rounds_completed": completed,
        "labs": sorted(srv.labs.node_of),
        "model_sha256": sha,
        "federated": {
            "pooled_test": fed_pooled,
            "labs": {lab: {"accuracy": m.get("test-accuracy"), "loss": m.get("test-loss"),
                           "examples": m.get("test-examples")} for lab, m in sorted(final.items())},
        },
        "seconds": {
            "total": time.time() - t_start,
            "rounds": round_seconds,
            "steady_round": float(np.median(round_seconds[1:])) if len(round_seconds) > 1
            else (round_seconds[0] if round_seconds else float("nan")),
        },
    }
    runtime = _ray_info()
    if runtime:
        summary["runtime"] = runtime
    if cfg.privacy.mode != "off":
        spent: dict[str, float] = {}
        for row in folder.metrics():
            if row.get("kind") == "train" and row.get("epsilon") is not None:
                spent[row["lab"]] = max(spent.get(row["lab"], 0.0), float(row["epsilon"]))
        summary["privacy"] = {"mode": cfg.privacy.mode, "delta": cfg.privacy.delta,
                              "target_epsilon": cfg.privacy.epsilon, "epsilon_spent": spent}
    if job.mode == "simulation" and cfg.simulation.baselines and not job.synthetic_params:
        from fedlab.baselines import run_baselines

        summary["baselines"] = run_baselines(cfg, list(job.labs))
    folder.write_json("summary.json", summary)
    try:
        write_report(folder.path)
    except FedlabError as exc:  # the run itself succeeded; say why the report is missing
        log.warning("report not written: %s", exc)
    folder.audit.record("run_finished", rounds_completed=completed, model_sha256=sha)
    if completed == 0:
        raise RunError(f"no round of {cfg.rounds} completed; see {folder.path / 'audit.jsonl'}")
    return summary


def _ray_info() -> dict[str, Any]:
    """Which Ray cluster ran the virtual labs (simulation), for the record."""
    import sys

    ray = sys.modules.get("ray")
    try:
        if ray is None or not ray.is_initialized():
            return {}
        return {"ray_gcs_address": ray.get_runtime_context().gcs_address,
                "ray_nodes": len([n for n in ray.nodes() if n.get("Alive")])}
    except Exception as exc:  # noqa: BLE001 - informational only; never fail a run for it
        log.debug("no Ray information: %s", exc)
        return {}


def _log_lab_metrics(folder: Any, rnd: int, outcome: RoundOutcome) -> None:
    for lab, m in sorted(outcome.lab_metrics.items()):
        folder.metric(kind="train", round=rnd, lab=lab, loss=m.get("train-loss"),
                      examples=m.get("num-examples"), seconds=m.get("seconds"),
                      bytes_sent=outcome.bytes_sent.get(lab), secure=outcome.secure,
                      epsilon=m.get("epsilon"), noise_multiplier=m.get("noise-multiplier"))
        # The evaluation in a round's reply is of the model the lab received: the global
        # model after the previous round.
        folder.metric(kind="eval", round=rnd - 1, lab=lab, loss=m.get("test-loss"),
                      accuracy=m.get("test-accuracy"), examples=m.get("test-examples"),
                      val_accuracy=m.get("val-accuracy"), val_loss=m.get("val-loss"))
    rows = [m for m in outcome.lab_metrics.values()]
    if rows:
        folder.metric(kind="eval", round=rnd - 1, lab="pooled", **pooled(rows))
        val = pooled(rows, prefix="val")
        if val["examples"]:
            folder.metric(kind="eval", round=rnd - 1, lab="pooled-val", **val)
