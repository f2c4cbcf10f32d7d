"""A lab's differential privacy: calibrated to the target, budget stops at the right round,
counted once per lab whichever process trains it, lab-level noise on clipped updates."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from client.lab import LabPrivacy, pack_state, unpack_state
from fedlab import privacy as dp
from fedlab.config import PrivacyConfig, default_config
from fedlab.errors import ProtocolError
from fedlab.training import dp_steps


def _cfg(**privacy):
    cfg = default_config()
    return dataclasses.replace(cfg, rounds=10, privacy=PrivacyConfig(**privacy))


def test_calibrated_noise_spends_the_target_over_the_run():
    cfg = _cfg(mode="record", epsilon=1.0, delta=1e-5, clip=1.0)
    lab = LabPrivacy(cfg, num_train=199, n_labs=4)
    q = cfg.training.batch_size / 199
    steps = dp_steps(199, cfg.training.batch_size, cfg.training.local_epochs) * cfg.rounds
    eps = dp.epsilon_spent(lab.noise_multiplier, q, steps, 1e-5)
    assert 0.97 <= eps <= 1.0


def test_budget_stop_triggers_at_the_right_round():
    cfg = _cfg(mode="record", epsilon=2.0, delta=1e-5, clip=1.0, noise_multiplier=2.5)
    lab = LabPrivacy(cfg, num_train=199, n_labs=4)
    q = cfg.training.batch_size / 199
    allowed = dp.rounds_within_budget(2.0, 1e-5, 2.5, q, lab.steps_per_round)
    assert 0 < allowed < cfg.rounds
    for rnd in range(1, allowed + 1):
        lab.before_round("cleveland", rnd)
        lab.after_round(np.zeros(3, np.float32), {})
    with pytest.raises(ProtocolError, match=f"round {allowed + 1} would spend epsilon"):
        lab.before_round("cleveland", allowed + 1)
    assert lab.epsilon <= 2.0


def test_budget_is_counted_once_per_lab_across_processes():
    cfg = _cfg(mode="record", epsilon=1.0, delta=1e-5, clip=1.0)
    a = LabPrivacy(cfg, num_train=199, n_labs=4)
    a.after_round(np.zeros(3, np.float32), {})
    a.after_round(np.zeros(3, np.float32), {})
    state = pack_state(b"secret-session", a.counters())
    b = LabPrivacy(cfg, num_train=199, n_labs=4)  # another Ray actor, same lab
    secagg, counters = unpack_state(state)
    b.load(counters)
    assert secagg == b"secret-session"
    assert b.ledger.steps == 2 * a.steps_per_round
    assert b.epsilon == pytest.approx(a.epsilon)


def test_lab_level_clips_and_noises_each_update():
    cfg = _cfg(mode="lab", epsilon=5.0, delta=1e-5, clip=0.5)
    lab = LabPrivacy(cfg, num_train=100, n_labs=4)
    assert dp.epsilon_spent_lab_level(lab.noise_multiplier, cfg.rounds, 1e-5) <= 5.0
    metrics: dict = {}
    big = np.full(10_000, 3.0, np.float32)
    out = lab.after_round(big, metrics)
    assert metrics["weight"] == 1 and metrics["epsilon"] > 0
    noise = out - dp.clip_update(big, 0.5)
    expected = lab.noise_multiplier * 0.5 / np.sqrt(cfg.min_labs)
    assert abs(np.std(noise) - expected) < 0.05 * expected


def test_lab_level_shares_that_secure_aggregation_would_cut_are_refused():
    """Shares of std noise x clip / sqrt(labs) beyond the encoder's +-8 would be clipped
    there and the sum would carry less noise than accounted: refused before training."""
    from fedlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"do not fit secure aggregation's range of \+-8"):
        LabPrivacy(_cfg(mode="lab", epsilon=1.0, delta=1e-5, clip=1.0), num_train=100,
                   n_labs=4)
    ok = LabPrivacy(_cfg(mode="lab", epsilon=1.0, delta=1e-5, clip=0.1), num_train=100,
                    n_labs=4)
    assert 0.1 + 5 * ok.noise_multiplier * 0.1 / np.sqrt(default_config().min_labs) <= 8.0


def test_state_blobs_are_checked():
    assert unpack_state(None) == (None, {})
    with pytest.raises(ProtocolError):
        unpack_state(b"garbage-state")


@pytest.mark.parametrize("mode", ["off", "record"])
def test_training_loss_stays_at_the_lab_under_dp(mode):
    """The accountant covers the noisy gradients, not the exact loss on the training rows:
    under DP that number is not sent."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from client.lab import LabWorker
    from fedlab import codec
    from fedlab.task import load_lab

    base = _cfg(mode=mode, epsilon=5.0, delta=1e-5, clip=1.0)
    cfg = dataclasses.replace(base, rounds=2,
                              data=dataclasses.replace(base.data, standardize="range"))
    key = Ed25519PrivateKey.generate()
    worker = LabWorker(cfg, "cleveland", load_lab(cfg, "cleveland"), key,
                       {"cleveland": key.public_key()})
    vec = codec.flatten(worker.trainer.get_weights())
    update, metrics = worker.train(1, vec)
    assert update.shape == vec.shape and metrics["num-examples"] > 0
    assert ("train-loss" in metrics) == (mode == "off")


def test_labs_sharing_one_model_in_a_process_do_not_influence_each_other():
    """Virtual labs in one simulation actor share a compiled model (client.lab._TRAINERS):
    a lab's update must be the same whether or not another lab trained on it just before."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    import client.lab as lab_mod
    from client.lab import LabWorker
    from fedlab import codec
    from fedlab.task import load_lab

    base = _cfg(mode="off")
    # Adam: optimizer state (moments) that would carry over if it were not reset per call
    cfg = dataclasses.replace(base, strategy=dataclasses.replace(base.strategy, name="fedavg"),
                              training=dataclasses.replace(base.training, optimizer="adam"),
                              data=dataclasses.replace(base.data, standardize="range"))
    key = Ed25519PrivateKey.generate()
    roster = {"cleveland": key.public_key(), "hungary": key.public_key()}

    lab_mod._TRAINERS.clear()
    alone = LabWorker(cfg, "cleveland", load_lab(cfg, "cleveland"), key, roster)
    vec = codec.flatten(alone.trainer.get_weights())
    expected, _ = alone.train(1, vec)

    lab_mod._TRAINERS.clear()
    other = LabWorker(cfg, "hungary", load_lab(cfg, "hungary"), key, roster)
    shared = LabWorker(cfg, "cleveland", load_lab(cfg, "cleveland"), key, roster)
    assert shared.trainer is other.trainer  # one model for both labs
    other.train(1, vec + 0.5)  # moves the shared model's weights and optimizer state
    got, _ = shared.train(1, vec)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    lab_mod._TRAINERS.clear()
