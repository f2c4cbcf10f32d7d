"""fedlab.privacy: DP-SGD step (real TF), accounting against dp_accounting, lab-level noise."""

from __future__ import annotations

import math

import dp_accounting
import keras
import numpy as np
import pytest
import tensorflow as tf

from fedlab import privacy
from fedlab.config import ModelConfig
from fedlab.errors import ConfigError, RunError
from fedlab.models import build_model

F = 13


def _direct_epsilon(nm: float, q: float, steps: int, delta: float, kind: str = "rdp") -> float:
    acc = dp_accounting.rdp.RdpAccountant() if kind == "rdp" else dp_accounting.pld.PLDAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(nm))
    acc.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return acc.get_epsilon(delta)


def _bce(y, p):
    return keras.losses.binary_crossentropy(tf.reshape(y, (-1, 1)), p)


def _zero_loss(y, p):  # every gradient is exactly zero
    return tf.reduce_sum(0.0 * p, axis=-1) + 0.0 * y


def _setup(loss_fn=_bce, hidden=None, **kw):
    cfg = ModelConfig("mlp", hidden=hidden) if hidden else ModelConfig("logistic")
    model = build_model(cfg, F, 2, seed=1)
    opt = keras.optimizers.SGD(learning_rate=1.0)  # w_new = w - g: the step's gradient is readable
    opt.build(model.trainable_variables)
    step = privacy.make_dp_train_step(model, opt, loss_fn, **kw)
    return model, step


def _flat(model) -> np.ndarray:
    return np.concatenate([v.numpy().ravel() for v in model.trainable_variables]).astype(np.float64)


def _applied_gradient(model, step, x, y) -> np.ndarray:
    before = _flat(model)
    step(np.asarray(x, np.float32), np.asarray(y, np.float32))
    return before - _flat(model)


def _wrong_label(model, x) -> np.ndarray:
    p = model(np.asarray(x, np.float32)).numpy().ravel()
    return (p < 0.5).astype(np.float32)


def _example_gradient(model, x, y) -> np.ndarray:
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(_bce(tf.constant([y], tf.float32), model(x[None].astype(np.float32))))
    grads = tape.gradient(loss, model.trainable_variables)
    return np.concatenate([g.numpy().ravel() for g in grads]).astype(np.float64)


# -- accounting ----------------------------------------------------------------


@pytest.mark.parametrize("target,q,steps,kind", [
    (1.0, 16 / 200, 300, "rdp"),
    (0.1, 16 / 200, 300, "rdp"),
    (10.0, 0.05, 1000, "rdp"),
])
def test_calibrated_noise_gives_target_epsilon(target, q, steps, kind):
    nm = privacy.calibrate_noise(target, 1e-5, q, steps, accountant=kind)
    eps = _direct_epsilon(nm, q, steps, 1e-5, kind)
    assert eps <= target
    assert eps == pytest.approx(target, rel=0.01)
    # and it is the smallest such noise to 3 significant digits
    assert _direct_epsilon(nm * 0.995, q, steps, 1e-5, kind) > target


def test_epsilon_spent_matches_dp_accounting():
    assert privacy.epsilon_spent(1.1, 0.05, 400, 1e-5) == pytest.approx(
        _direct_epsilon(1.1, 0.05, 400, 1e-5))
    pld = privacy.epsilon_spent(1.1, 0.05, 400, 1e-5, accountant="pld")
    assert pld == pytest.approx(_direct_epsilon(1.1, 0.05, 400, 1e-5, "pld"))
    assert pld < privacy.epsilon_spent(1.1, 0.05, 400, 1e-5)  # PLD is the tighter bound
    assert privacy.epsilon_spent(1.1, 0.05, 0, 1e-5) == 0.0
    assert privacy.epsilon_spent(0.0, 0.05, 1, 1e-5) == math.inf


def test_epsilon_increases_with_steps_and_decreases_with_noise():
    by_steps = [privacy.epsilon_spent(1.0, 0.08, s, 1e-5) for s in (10, 50, 200, 1000)]
    assert all(a < b for a, b in zip(by_steps, by_steps[1:], strict=False))
    by_noise = [privacy.epsilon_spent(nm, 0.08, 200, 1e-5) for nm in (0.6, 1.0, 2.0, 5.0)]
    assert all(a > b for a, b in zip(by_noise, by_noise[1:], strict=False))
    lab = [privacy.epsilon_spent_lab_level(nm, r, 1e-5) for nm, r in ((1.0, 5), (1.0, 20), (2.0, 20))]
    assert lab[0] < lab[1] and lab[2] < lab[1]


def test_rounds_within_budget_brute_force():
    nm, q, spr, budget, delta = 1.0, 0.08, 13, 5.0, 1e-5
    r = privacy.rounds_within_budget(budget, delta, nm, q, spr)
    brute = 0
    while _direct_epsilon(nm, q, (brute + 1) * spr, delta) <= budget:
        brute += 1
    assert r == brute > 0
    assert privacy.rounds_within_budget(0.01, delta, nm, q, spr) == 0
    assert privacy.rounds_within_budget(budget, delta, 200.0, q, spr, max_rounds=50) == 50


def test_lab_level_accounting_is_the_gaussian_mechanism():
    # One round: the PLD accountant agrees with the exact (analytic) Gaussian mechanism.
    eps1 = privacy.epsilon_spent_lab_level(2.0, 1, 1e-5, accountant="pld")
    assert eps1 == pytest.approx(dp_accounting.get_epsilon_gaussian(2.0, 1e-5), rel=0.01)
    # Many rounds: the same as DP-SGD with every lab sampled every round.
    assert privacy.epsilon_spent_lab_level(5.0, 30, 1e-5) == pytest.approx(
        _direct_epsilon(5.0, 1.0, 30, 1e-5), rel=1e-6)


def test_ledger_stops_before_the_budget():
    ledger = privacy.PrivacyLedger(budget_epsilon=1.0, delta=1e-5, noise_multiplier=1.0,
                                   sample_rate=0.08)
    allowed = privacy.rounds_within_budget(1.0, 1e-5, 1.0, 0.08, 13)
    for _ in range(allowed):
        assert ledger.allows(13)
        ledger.spend(13)
    assert ledger.epsilon <= 1.0
    assert not ledger.allows(13)
    with pytest.raises(RunError, match="budget"):
        ledger.spend(13)
    assert ledger.steps == 13 * allowed


@pytest.mark.parametrize("call", [
    lambda: privacy.clip_update(np.ones(3, np.float32), -1.0),
    lambda: privacy.clip_update(np.ones(3, np.float32), 0.0),
    lambda: privacy.calibrate_noise(0.0, 1e-5, 0.1, 10),
    lambda: privacy.calibrate_noise(-1.0, 1e-5, 0.1, 10),
    lambda: privacy.calibrate_noise(1.0, 1.0, 0.1, 10),
    lambda: privacy.calibrate_noise(1.0, 0.0, 0.1, 10),
    lambda: privacy.calibrate_noise(1.0, 1e-5, 1.5, 10),
    lambda: privacy.calibrate_noise(1.0, 1e-5, 0.1, 0),
    lambda: privacy.epsilon_spent(-1.0, 0.1, 10, 1e-5),
    lambda: privacy.epsilon_spent(1.0, 0.1, 10, 2.0),
    lambda: privacy.epsilon_spent(1.0, 0.1, 10, 1e-5, accountant="moments"),
    lambda: privacy.rounds_within_budget(0.0, 1e-5, 1.0, 0.1, 10),
    lambda: privacy.epsilon_spent_lab_level(1.0, 10, 1.0),
    lambda: privacy.lab_noise_share(10, -1.0, 1.0, 4),
    lambda: privacy.lab_noise_share(10, 1.0, 1.0, 0),
    lambda: privacy.PrivacyLedger(budget_epsilon=-1, delta=1e-5, noise_multiplier=1, sample_rate=0.1),
    lambda: _setup(l2_clip=-1.0, noise_multiplier=1.0),
    lambda: _setup(l2_clip=1.0, noise_multiplier=-0.5),
    lambda: _setup(l2_clip=1.0, noise_multiplier=1.0, expected_batch_size=0),
    lambda: _setup(l2_clip=1.0, noise_multiplier=1.0, per_example="loop"),
])
def test_bad_parameters_raise_config_error(call):
    with pytest.raises(ConfigError):
        call()


def test_batch_normalization_is_refused():
    inputs = keras.Input(shape=(F,))
    h = keras.layers.BatchNormalization()(keras.layers.Dense(4)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))
    with pytest.raises(ConfigError, match="BatchNormalization"):
        privacy.make_dp_train_step(model, keras.optimizers.SGD(), _bce, l2_clip=1.0,
                                   noise_multiplier=1.0)


# -- DP-SGD step ---------------------------------------------------------------


def test_one_example_is_clipped_to_the_bound():
    model, step = _setup(l2_clip=0.5, noise_multiplier=0.0)
    x = np.full(F, 50.0, np.float32)  # huge features and the wrong label: huge gradient
    y = _wrong_label(model, x[None])[0]
    raw = _example_gradient(model, x, y)
    assert np.linalg.norm(raw) > 100
    applied = _applied_gradient(model, step, x[None], [y])
    assert np.linalg.norm(applied) == pytest.approx(0.5, rel=1e-4)
    np.testing.assert_allclose(applied, raw * 0.5 / np.linalg.norm(raw), rtol=1e-4, atol=1e-7)


def test_small_gradient_is_not_clipped():
    model, step = _setup(l2_clip=100.0, noise_multiplier=0.0)
    x = np.linspace(-0.1, 0.1, F).astype(np.float32)
    raw = _example_gradient(model, x, 1.0)
    applied = _applied_gradient(model, step, x[None], [1.0])
    np.testing.assert_allclose(applied, raw, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("hidden,per_example", [(None, "vmap"), ((16, 8), "vmap"),
                                                ((16, 8), "jacobian")])
def test_crafted_batch_every_contribution_bounded(hidden, per_example):
    clip = 1.0
    model, step = _setup(hidden=hidden, l2_clip=clip, noise_multiplier=0.0, per_example=per_example)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, F)).astype(np.float32) * 0.05
    x[[1, 4, 6]] *= 2000.0  # three examples with enormous gradients (confidently wrong)
    y = np.array([0, 1, 0, 1, 1, 0, 1, 0], np.float32)
    y[[1, 4, 6]] = _wrong_label(model, x[[1, 4, 6]])
    per_example = [_example_gradient(model, x[i], y[i]) for i in range(8)]  # reference loop
    norms = np.array([np.linalg.norm(g) for g in per_example])
    assert norms[[1, 4, 6]].min() > 10 * clip and (norms < clip).any()
    expected = sum(g / max(1.0, np.linalg.norm(g) / clip) for g in per_example) / 8
    initial = model.get_weights()
    applied = _applied_gradient(model, step, x, y)
    np.testing.assert_allclose(applied, expected, rtol=1e-4, atol=1e-6)
    # no example moves the summed gradient by more than clip: drop any one, the change is bounded
    for i in range(8):
        model.set_weights(initial)
        keep = np.arange(8) != i
        other = _applied_gradient(model, step, x[keep], y[keep]) * 7  # summed, not mean
        assert np.linalg.norm(applied * 8 - other) <= clip * (1 + 1e-4)
    assert step.experimental_get_tracing_count() == 1


def test_noise_has_the_right_scale():
    nm, clip, batch = 1.3, 0.7, 8
    model = build_model(ModelConfig("logistic"), F, 2, seed=1)
    dp = privacy.DpSgdStep(model, keras.optimizers.SGD(learning_rate=1.0), _zero_loss, l2_clip=clip,
                           noise_multiplier=nm)
    x = np.ones((batch, F), np.float32)
    y = np.zeros(batch, np.float32)
    samples = np.concatenate([_applied_gradient(model, dp.step, x, y) for _ in range(300)])
    assert abs(samples.mean()) < 0.05 * nm * clip / batch
    assert samples.std() == pytest.approx(nm * clip / batch, rel=0.05)
    # reconfigured (as a lab does once it knows its data): new scale, same trace
    dp.configure(l2_clip=2.0, noise_multiplier=3.0, expected_batch_size=4)
    dp.reseed()
    samples = np.concatenate([_applied_gradient(model, dp.step, x, y) for _ in range(300)])
    assert samples.std() == pytest.approx(3.0 * 2.0 / 4, rel=0.05)
    assert dp.step.experimental_get_tracing_count() == 1


def test_poisson_empty_batch_still_adds_noise_over_expected_batch_size():
    nm, clip, ebs = 2.0, 1.0, 4
    model, step = _setup(l2_clip=clip, noise_multiplier=nm, expected_batch_size=ebs)
    empty_x, empty_y = np.zeros((0, F), np.float32), np.zeros(0, np.float32)
    samples = np.concatenate([_applied_gradient(model, step, empty_x, empty_y) for _ in range(300)])
    assert samples.std() == pytest.approx(nm * clip / ebs, rel=0.05)


def test_two_steps_draw_different_noise_and_two_builds_differ():
    model, step = _setup(loss_fn=_zero_loss, l2_clip=1.0, noise_multiplier=1.0)
    x, y = np.ones((2, F), np.float32), np.zeros(2, np.float32)
    a, b = _applied_gradient(model, step, x, y), _applied_gradient(model, step, x, y)
    model2, step2 = _setup(loss_fn=_zero_loss, l2_clip=1.0, noise_multiplier=1.0)
    c = _applied_gradient(model2, step2, x, y)
    assert not np.allclose(a, b) and not np.allclose(a, c)  # the noise is not the config seed's


def test_step_traces_once_across_batch_sizes():
    model, step = _setup(hidden=(8,), l2_clip=1.0, noise_multiplier=1.0)
    rng = np.random.default_rng(1)
    for n in (1, 5, 16, 0, 64, 3):
        loss = step(rng.normal(size=(n, F)).astype(np.float32), (rng.random(n) > 0.5).astype(np.float32))
        assert np.isfinite(float(loss))
    assert step.experimental_get_tracing_count() == 1


def test_fedprox_term_is_added_unclipped_after_the_noise():
    model = build_model(ModelConfig("logistic"), F, 2, seed=1)
    opt = keras.optimizers.SGD(learning_rate=1.0)
    anchor = [tf.Variable(v + 3.0, trainable=False) for v in model.trainable_variables]
    mu = tf.Variable(0.5, trainable=False)
    step = privacy.make_dp_train_step(model, opt, _zero_loss, l2_clip=0.01, noise_multiplier=0.0,
                                      anchor=anchor, mu=mu)
    applied = _applied_gradient(model, step, np.ones((4, F)), np.zeros(4))
    np.testing.assert_allclose(applied, np.full_like(applied, 0.5 * -3.0), rtol=1e-5)


# -- batches and lab-level noise ---------------------------------------------------


def test_poisson_batches():
    batches = list(privacy.poisson_batches(1000, 0.05))
    assert len(batches) == privacy.steps_per_epoch(0.05) == 20
    sizes = np.array([len(b) for b in batches])
    assert 30 < sizes.mean() < 70
    assert all(np.all(np.diff(b) > 0) and (b.size == 0 or b.max() < 1000) for b in batches)
    seeded = list(privacy.poisson_batches(50, 0.5, steps=3, rng=np.random.default_rng(0)))
    assert len(seeded) == 3


def test_clip_update():
    u = np.arange(10, dtype=np.float32)
    c = privacy.clip_update(u, 2.0)
    assert c.dtype == np.float32
    assert np.linalg.norm(c) == pytest.approx(2.0, rel=1e-6)
    np.testing.assert_allclose(c / np.linalg.norm(c), u / np.linalg.norm(u), rtol=1e-6)
    np.testing.assert_array_equal(privacy.clip_update(u, 1e6), u)
    np.testing.assert_array_equal(privacy.clip_update(np.zeros(3, np.float32), 1.0), np.zeros(3))
    with pytest.raises(ConfigError):
        privacy.clip_update(np.array([1.0, np.nan]), 1.0)


@pytest.mark.parametrize("rng", [None, np.random.default_rng(7)], ids=["os-csprng", "seeded"])
def test_lab_noise_shares_sum_to_the_right_std(rng):
    nm, clip, n_labs, size = 1.1, 2.0, 5, 40_000
    shares = [privacy.lab_noise_share(size, clip, nm, n_labs, rng) for _ in range(n_labs)]
    assert all(s.dtype == np.float32 and s.shape == (size,) for s in shares)
    assert shares[0].std() == pytest.approx(nm * clip / math.sqrt(n_labs), rel=0.03)
    total = np.sum(shares, axis=0, dtype=np.float64)
    assert abs(total.mean()) < 0.03 * nm * clip
    assert total.std() == pytest.approx(nm * clip, rel=0.03)
    # Gaussian shape, not just the right std: ~4.55 % beyond 2 sigma
    assert np.mean(np.abs(total) > 2 * nm * clip) == pytest.approx(0.0455, abs=0.005)
    assert np.corrcoef(shares[0], shares[1])[0, 1] == pytest.approx(0.0, abs=0.03)


def test_secure_generator_is_not_reproducible():
    assert privacy.secure_generator().random() != privacy.secure_generator().random()
