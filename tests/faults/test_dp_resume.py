"""Fault R3: the server dies after the labs trained a round with differential privacy on;
the resumed run continues every lab's spent epsilon from its own ledger (not from 0),
stops at the budget across the resume, and its TensorBoard curves continue."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from fedlab.errors import RunError

pytestmark = pytest.mark.slow

CRASH_APP = Path(__file__).parent / "crash_app"
LABS = ("cleveland", "hungary")
NOISE = 2.0


def _config(tmp_path: Path, budget: float) -> Path:
    text = ('[federation]\nname = "dp-resume"\nrounds = 3\nmin_labs = 2\nsecure = false\n'
            'stage_timeout = 120\n'
            '[training]\nlocal_epochs = 1\nbatch_size = 32\nlearning_rate = 0.1\n'
            '[data]\ndataset = "heart-disease"\n[simulation]\nbaselines = false\n'
            f'[privacy]\nmode = "record"\nepsilon = {budget!r}\nnoise_multiplier = {NOISE}\n')
    for lab in LABS:
        text += f'[[labs]]\nname = "{lab}"\ndata = "builtin:{lab}"\n'
    path = tmp_path / "dp-resume.toml"
    path.write_text(text)
    return path


def _epsilons(tmp_path: Path) -> dict[str, list[float]]:
    """Each lab's epsilon after 1, 2, 3 and 4 rounds of training."""
    from fedlab import privacy as dp
    from fedlab.config import load_config
    from fedlab.task import load_simulation_lab
    from fedlab.training import dp_steps

    cfg = load_config(_config(tmp_path, 1.0))
    out = {}
    for i, lab in enumerate(LABS):
        n = len(load_simulation_lab(cfg, i).y_train)
        spr = dp_steps(n, 32, 1)
        out[lab] = [dp.epsilon_spent(NOISE, min(1.0, 32 / n), k * spr, 1e-5) for k in (1, 2, 3, 4)]
    return out


def _rows(run_dir: Path, kind: str) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def test_spent_epsilon_survives_a_resume_and_the_budget_still_stops(tmp_path):
    from fedlab.simulate import simulate

    eps = _epsilons(tmp_path)
    # A budget of exactly three rounds of training for both labs.
    budget = max(e[2] for e in eps.values()) * (1 + 1e-6)
    assert budget < min(e[3] for e in eps.values())
    config = _config(tmp_path, round(budget, 6))
    out = tmp_path / "runs"

    os.environ["FEDLAB_TEST_CRASH_ROUND"] = "2"
    try:
        with pytest.raises(RunError, match="without results"):
            simulate(str(config), out, progress=False, app_dir=CRASH_APP, timeout=1500)
    finally:
        os.environ.pop("FEDLAB_TEST_CRASH_ROUND", None)
    (run_dir,) = out.iterdir()
    # The labs trained rounds 1 and 2; the server kept round 1 only.
    for lab in LABS:
        ledger = json.loads((run_dir / "privacy" / f"{lab}.json").read_text())
        assert ledger["epsilon"] == pytest.approx(eps[lab][1], rel=1e-6)
        assert stat.S_IMODE((run_dir / "privacy" / f"{lab}.json").stat().st_mode) == 0o600
    assert [p.name for p in sorted((run_dir / "checkpoints").glob("*.npz"))] == ["round-0001.npz"]

    run_dir2, summary = simulate(None, progress=False, resume=run_dir, timeout=1500)
    assert run_dir2 == run_dir
    train = _rows(run_dir, "train")
    for lab in LABS:
        got = {r["round"]: r["epsilon"] for r in train if r["lab"] == lab}
        # round 2 was trained twice: the redone round reports three rounds' spending
        assert got == {1: pytest.approx(eps[lab][0], rel=1e-6),
                       2: pytest.approx(eps[lab][2], rel=1e-6)}, lab
        assert summary["privacy"]["epsilon_spent"][lab] == pytest.approx(eps[lab][2], rel=1e-6)
        assert summary["privacy"]["epsilon_spent"][lab] <= budget
    # Round 3 would be each lab's fourth round of training: over budget, refused by both.
    rounds = {r["round"]: r for r in _rows(run_dir, "round")}
    assert rounds[2]["aggregated"] and not rounds[3]["aggregated"]
    assert summary["rounds_completed"] == 2
    audit = [json.loads(x) for x in (run_dir / "audit.jsonl").read_text().splitlines()]
    refusals = [e for e in audit if e["event"] == "lab_error" and e["round"] == 3]
    assert {e["lab"] for e in refusals} == set(LABS)
    assert all("would spend epsilon" in e["reason"] for e in refusals), refusals

    # TensorBoard: the curves go on across the resume, without duplicate points.
    import tensorflow as tf

    seen: dict[tuple[str, int], list[float]] = {}
    files = sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 2  # the first run's (trimmed) and the resumed run's
    for path in files:
        for ev in tf.compat.v1.train.summary_iterator(str(path)):
            for v in ev.summary.value:
                seen.setdefault((v.tag, ev.step), []).append(float(tf.make_ndarray(v.tensor)))
    assert all(len(v) == 1 for v in seen.values()), {k: v for k, v in seen.items() if len(v) > 1}
    tags = {t for t, _ in seen}
    for lab in LABS:
        assert {f"accuracy/{lab}", f"loss/{lab}", f"epsilon/{lab}"} <= tags
        # under DP the lab keeps its exact training loss to itself (the accountant
        # covers the noisy gradients, not that number), so no curve of it exists
        assert f"train_loss/{lab}" not in tags
        assert seen[(f"epsilon/{lab}", 2)] == [pytest.approx(eps[lab][2], rel=1e-5)]
    # step 2 (the model after round 2) would be measured by round 3's replies, which the
    # labs refused; the final evaluation (step 3) measures that same model
    assert {s for t, s in seen if t == "accuracy/pooled"} == {0, 1, 3}
    assert {s for t, s in seen if t == "round/seconds"} == {1, 2, 3}
    assert seen[("round/contributors", 3)] == [0.0]
