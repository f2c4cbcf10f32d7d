"""Differential privacy: per-example clipping and noise at a lab, lab-level noise, accounting.

Two guarantees, used separately or together:

**Record-level DP at each lab (DP-SGD).** :func:`make_dp_train_step` builds a train
step with the same shape as :class:`fedlab.training.LocalTrainer`'s (``x: (None, F)``
float32, ``y: (None,)`` float32, returns the mean loss; traced once). Each step
computes every example's gradient at once (``tf.vectorized_map`` over a per-example
loss gradient: no Python loop over examples), clips each to L2 norm ``l2_clip``, sums
them, adds Gaussian noise of std ``noise_multiplier * l2_clip`` to the sum and divides
by the (expected) batch size. The FedProx term ``mu/2 ||w - w_global||^2`` depends on
no training row (``w_global`` is the model the lab received), so its gradient is
added after the noise, unclipped, at no privacy cost.

*Sampling.* The accountant (:func:`epsilon_spent`) models each step as the
**Poisson-subsampled** Gaussian mechanism: every row joins a step's batch
independently with probability ``q = expected_batch_size / n``. Its epsilon is
only a proof when batches really are drawn that way, from randomness the
adversary does not know: use :func:`poisson_batches` (secret randomness, variable
batch size, empty batches still take a noisy step) with
``expected_batch_size=`` given to the step. Shuffled fixed-size batches (the
non-private trainer's loop, seeded from the federation seed) are *not* covered:
the seed is known to the server, and shuffling is not Poisson sampling (accounting
it as Poisson under-states epsilon in some regimes).

**Lab-level DP under secure aggregation.** :func:`clip_update` bounds each lab's
update, :func:`lab_noise_share` gives each of ``n`` labs Gaussian noise of std
``noise_multiplier * clip / sqrt(n)``, so the securely aggregated *sum* carries
std ``noise_multiplier * clip`` and the server never sees a less noisy value;
:func:`epsilon_spent_lab_level` accounts it (Gaussian mechanism, sensitivity
``clip``, once per round, every lab every round).

*Randomness.* Noise and batch selection must be unpredictable to the server and
to the other labs: never derived from the federation seed. NumPy's PCG64 is a
statistical generator, not a cryptographic one (its state can in principle be
recovered from enough outputs), so by default this module draws lab-level noise
and Poisson batches from the operating system's CSPRNG (``os.urandom``, Box-Muller
for Gaussians). In the TensorFlow step, noise comes from a Philox generator whose
full 192-bit state is drawn from ``secrets``; Philox is a counter-based generator
built on a weakened block cipher, with no known state-recovery attack, but not a
proven CSPRNG. Floating-point Gaussian samples also have the known low-order-bit
weakness (Mironov 2012); a discrete Gaussian would close it.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fedlab.errors import ConfigError, RunError

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

ACCOUNTANTS = ("rdp", "pld")
PER_EXAMPLE = ("vmap", "jacobian")  # how DpSgdStep gets per-example gradients
MAX_ROUNDS = 100_000  # the largest federation.rounds the config accepts


# -- parameter checks ----------------------------------------------------------


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if math.isnan(v):
        raise ConfigError(f"{name} must be a number, got NaN")
    return v


def _check_clip(clip: Any, name: str = "clip") -> float:
    v = _number(name, clip)
    if not 0 < v < math.inf:
        raise ConfigError(f"{name} (the L2 clipping norm) must be > 0 and finite, got {clip}; "
                          "e.g. 1.0")
    return v


def _check_noise(noise_multiplier: Any) -> float:
    v = _number("noise_multiplier", noise_multiplier)
    if not 0 <= v < math.inf:
        raise ConfigError(f"noise_multiplier must be >= 0 and finite, got {noise_multiplier}; "
                          "it is the noise std divided by the clipping norm, e.g. 1.1")
    return v


def _check_delta(delta: Any) -> float:
    v = _number("delta", delta)
    if not 0 < v < 1:
        raise ConfigError(f"delta must be in (0, 1), got {delta}; use well below 1/(number of "
                          "rows), e.g. 1e-5")
    return v


def _check_epsilon(epsilon: Any, name: str = "epsilon") -> float:
    v = _number(name, epsilon)
    if not 0 < v < math.inf:
        raise ConfigError(f"{name} must be > 0 and finite, got {epsilon}; e.g. 1.0")
    return v


def _check_rate(sample_rate: Any) -> float:
    v = _number("sample_rate", sample_rate)
    if not 0 < v <= 1:
        raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate}; it is the expected "
                          "batch size divided by the lab's number of training rows")
    return v


def _check_count(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_accountant(accountant: str) -> str:
    if accountant not in ACCOUNTANTS:
        raise ConfigError(f"accountant {accountant!r} is not known; use one of: "
                          f"{', '.join(ACCOUNTANTS)}")
    return accountant


# -- accounting ----------------------------------------------------------------


def _fresh_accountant(accountant: str) -> Any:
    import dp_accounting

    if accountant == "rdp":
        return dp_accounting.rdp.RdpAccountant()
    return dp_accounting.pld.PLDAccountant()


def _epsilon(event: Any, delta: float, accountant: str) -> float:
    acc = _fresh_accountant(accountant)
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def _dp_sgd_event(noise_multiplier: float, sample_rate: float, steps: int) -> Any:
    import dp_accounting

    step = dp_accounting.PoissonSampledDpEvent(sample_rate,
                                               dp_accounting.GaussianDpEvent(noise_multiplier))
    return dp_accounting.SelfComposedDpEvent(step, steps)


def epsilon_spent(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                  accountant: str = "rdp") -> float:
    """Epsilon (at ``delta``) of ``steps`` Poisson-subsampled Gaussian DP-SGD steps.

    Neighbouring data sets differ by adding or removing one row. ``steps = 0`` spends
    nothing (0.0); ``noise_multiplier = 0`` with ``steps > 0`` spends ``inf``.
    """
    nm = _check_noise(noise_multiplier)
    q = _check_rate(sample_rate)
    steps = _check_count("steps", steps)
    d = _check_delta(delta)
    _check_accountant(accountant)
    if steps == 0:
        return 0.0
    if nm == 0:
        return math.inf
    return _epsilon(_dp_sgd_event(nm, q, steps), d, accountant)


def epsilon_spent_lab_level(noise_multiplier: float, rounds: int, delta: float,
                            accountant: str = "rdp") -> float:
    """Epsilon (at ``delta``) w.r.t. one whole lab of ``rounds`` noisy aggregates.

    Each round's aggregate is the sum of every lab's clipped update (sensitivity
    ``clip`` when one lab is added or removed) plus Gaussian noise of std
    ``noise_multiplier * clip`` (the sum of the labs' :func:`lab_noise_share`); every
    lab takes part in every round (sampling rate 1).
    """
    import dp_accounting

    nm = _check_noise(noise_multiplier)
    rounds = _check_count("rounds", rounds)
    d = _check_delta(delta)
    _check_accountant(accountant)
    if rounds == 0:
        return 0.0
    if nm == 0:
        return math.inf
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(nm), rounds)
    return _epsilon(event, d, accountant)


def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                    accountant: str = "rdp") -> float:
    """The smallest noise multiplier (to 3 significant digits) whose epsilon is <= target.

    Bisection on the noise multiplier, each probe a call to the accountant; the
    returned value is the upper end of the final bracket (so its epsilon, verified
    by one more call, is at most ``target_epsilon``) and the bracket is narrower than
    0.1 % of it.
    """
    target = _check_epsilon(target_epsilon, "target_epsilon")
    d = _check_delta(delta)
    q = _check_rate(sample_rate)
    steps = _check_count("steps", steps, minimum=1)
    _check_accountant(accountant)

    def eps(nm: float) -> float:
        return _epsilon(_dp_sgd_event(nm, q, steps), d, accountant)

    lo, hi = 0.0, 1.0
    while eps(hi) > target:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise ConfigError(f"no noise multiplier up to 1e6 reaches epsilon {target} at delta "
                              f"{d} over {steps} steps; raise epsilon or delta, or take fewer steps")
    if lo == 0.0:  # bracket the lower end (epsilon explodes as the noise goes to 0)
        lo = hi / 2
        while eps(lo) <= target:
            if lo < 1e-4:
                return lo  # verified: even this little noise stays within the target
            hi, lo = lo, lo / 2
    while hi - lo > 1e-3 * hi:
        mid = 0.5 * (lo + hi)
        if eps(mid) <= target:
            hi = mid
        else:
            lo = mid
    if eps(hi) > target:  # cannot happen with a monotone accountant; never return an unverified value
        raise RunError(f"calibration failed: noise multiplier {hi} gives epsilon {eps(hi)} > {target}")
    return hi


def rounds_within_budget(budget_epsilon: float, delta: float, noise_multiplier: float,
                         sample_rate: float, steps_per_round: int, accountant: str = "rdp",
                         *, max_rounds: int = MAX_ROUNDS) -> int:
    """How many rounds a lab may take part in before the next would exceed its budget.

    The largest ``r <= max_rounds`` with ``epsilon_spent(..., r * steps_per_round) <=
    budget_epsilon`` (0 if even one round exceeds it).
    """
    budget = _check_epsilon(budget_epsilon, "budget_epsilon")
    d = _check_delta(delta)
    nm = _check_noise(noise_multiplier)
    q = _check_rate(sample_rate)
    spr = _check_count("steps_per_round", steps_per_round, minimum=1)
    max_rounds = _check_count("max_rounds", max_rounds, minimum=1)
    _check_accountant(accountant)
    if nm == 0:
        return 0

    def ok(r: int) -> bool:
        return _epsilon(_dp_sgd_event(nm, q, r * spr), d, accountant) <= budget

    if not ok(1):
        return 0
    good, bad = 1, 2
    while bad <= max_rounds and ok(bad):
        good, bad = bad, bad * 2
    if bad > max_rounds:
        if ok(max_rounds):
            return max_rounds
        bad = max_rounds
    while bad - good > 1:  # ok(good), not ok(bad)
        mid = (good + bad) // 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good


class PrivacyLedger:
    """One lab's record-level privacy spending across rounds, checked before each round.

    ``allows(steps)`` tells whether ``steps`` more DP-SGD steps stay within the budget;
    ``spend(steps)`` records them (and refuses, with :class:`RunError`, steps that
    would exceed it: a run stops *before* it exceeds its budget); ``epsilon`` is
    what has been spent so far, for the round's metrics.
    """

    def __init__(self, *, budget_epsilon: float, delta: float, noise_multiplier: float,
                 sample_rate: float, accountant: str = "rdp") -> None:
        self.budget_epsilon = _check_epsilon(budget_epsilon, "budget_epsilon")
        self.delta = _check_delta(delta)
        self.noise_multiplier = _check_noise(noise_multiplier)
        self.sample_rate = _check_rate(sample_rate)
        self.accountant = _check_accountant(accountant)
        self.steps = 0
        self.epsilon = 0.0

    def epsilon_after(self, more_steps: int) -> float:
        """Epsilon that would be spent after ``more_steps`` further steps."""
        more = _check_count("steps", more_steps)
        return epsilon_spent(self.noise_multiplier, self.sample_rate, self.steps + more,
                             self.delta, self.accountant)

    def allows(self, more_steps: int) -> bool:
        return self.epsilon_after(more_steps) <= self.budget_epsilon

    def spend(self, steps: int) -> float:
        """Record ``steps`` DP-SGD steps; returns the epsilon spent so far."""
        eps = self.epsilon_after(steps)
        if eps > self.budget_epsilon:
            raise RunError(f"{steps} more steps would spend epsilon {eps:.4g} > the budget "
                           f"{self.budget_epsilon:g} (delta {self.delta:g}); the lab takes no "
                           "further part in training")
        self.steps += steps
        self.epsilon = eps
        return eps


# -- randomness ----------------------------------------------------------------


def _os_uniform(size: int) -> np.ndarray:
    """``size`` uniforms in [0, 1) with 53 random bits each, from the OS CSPRNG."""
    raw = np.frombuffer(os.urandom(8 * size), dtype=np.uint64)
    return (raw >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _os_normal(size: int) -> np.ndarray:
    """``size`` standard normals from the OS CSPRNG (Box-Muller, float64)."""
    half = (size + 1) // 2
    u = _os_uniform(2 * half)
    r = np.sqrt(-2.0 * np.log1p(-u[:half]))  # 1 - u in (0, 1]: log is finite
    theta = (2.0 * np.pi) * u[half:]
    return np.concatenate([r * np.cos(theta), r * np.sin(theta)])[:size]


def secure_generator() -> np.random.Generator:
    """A NumPy generator seeded with 128 bits from ``secrets`` (never from the config seed).

    Statistically sound and unpredictable without its seed, but PCG64 is not a
    cryptographic generator; the functions here prefer the OS CSPRNG (``rng=None``).
    """
    return np.random.Generator(np.random.PCG64(secrets.randbits(128)))


# -- lab-level DP (under secure aggregation) -----------------------------------


def clip_update(update: np.ndarray, clip: float) -> np.ndarray:
    """``update`` scaled down to L2 norm ``clip`` if it is longer (a copy; float32 kept)."""
    c = _check_clip(clip)
    u = np.asarray(update)
    if not np.issubdtype(u.dtype, np.floating):
        raise ConfigError(f"an update must be a float array, got dtype {u.dtype}")
    norm = float(np.linalg.norm(u.astype(np.float64, copy=False).ravel()))
    if not math.isfinite(norm):
        raise ConfigError("the update has NaN or infinite values; it cannot be clipped")
    scale = min(1.0, c / norm) if norm > 0 else 1.0
    return (u * scale).astype(u.dtype, copy=False)


def lab_noise_share(size: int, clip: float, noise_multiplier: float, n_labs: int,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """One lab's Gaussian noise share (float32, ``size`` values) for the aggregated sum.

    Std ``noise_multiplier * clip / sqrt(n_labs)``: the sum of ``n_labs`` shares has
    std ``noise_multiplier * clip``. ``n_labs`` must be the number of shares that are
    *guaranteed* to be in the sum: with dropouts tolerated down to ``t`` labs, pass
    ``t``; to keep the guarantee against ``k`` colluding labs (who know and can
    subtract their own shares), pass ``labs - k``. ``rng=None`` (production) draws
    from the OS CSPRNG; pass a generator only for tests.
    """
    size = _check_count("size", size)
    c = _check_clip(clip)
    nm = _check_noise(noise_multiplier)
    n = _check_count("n_labs", n_labs, minimum=1)
    std = nm * c / math.sqrt(n)
    z = _os_normal(size) if rng is None else rng.standard_normal(size)
    return (z * std).astype(np.float32)


# -- record-level DP (DP-SGD) --------------------------------------------------


def steps_per_epoch(sample_rate: float) -> int:
    """Poisson steps that visit ``n`` rows in expectation: ``round(1 / sample_rate)``."""
    return max(1, round(1.0 / _check_rate(sample_rate)))


def poisson_batches(n: int, sample_rate: float, steps: int | None = None,
                    rng: np.random.Generator | None = None) -> Iterator[np.ndarray]:
    """Index arrays of ``steps`` Poisson-sampled batches of ``n`` rows.

    Each row joins each batch independently with probability ``sample_rate``; batch
    sizes vary and may be 0 (the step must still run: it adds the noise). Default
    ``steps`` is one epoch (:func:`steps_per_epoch`). ``rng=None`` (production)
    uses the OS CSPRNG: which rows were sampled must stay secret for the
    subsampling amplification the accountant assumes.
    """
    n = _check_count("n", n, minimum=1)
    q = _check_rate(sample_rate)
    steps = steps_per_epoch(q) if steps is None else _check_count("steps", steps)
    for _ in range(steps):
        u = _os_uniform(n) if rng is None else rng.random(n)
        yield np.flatnonzero(u < q)


def _philox_state() -> np.ndarray:
    """A Philox state (128-bit counter, 64-bit key) drawn entirely from ``secrets``."""
    return np.frombuffer(secrets.token_bytes(24), dtype=np.int64).copy()


def _check_model(model: keras.Model) -> None:
    import keras

    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            raise ConfigError(f"layer {layer.name!r} is BatchNormalization, which mixes examples "
                              "of a batch; per-example DP clipping cannot bound it. Use "
                              "LayerNormalization or GroupNormalization instead")


class DpSgdStep:
    """A DP-SGD train step for one Keras model, built (traced) once.

    ``step(x, y)`` (a ``tf.function``, input signature ``x: (None, F) float32``,
    ``y: (None,) float32``) takes one noisy optimizer step and returns the mean
    per-example loss of the batch (computed before the update; it is *not*
    differentially private: do not publish it without care). ``loss_fn(y, p)`` must
    return one loss per example (shape ``(batch,)``), like LocalTrainer's.
    ``expected_batch_size`` (Poisson sampling): the denominator of the noisy mean;
    ``None`` divides by the actual batch size (fixed-size batches).
    ``reseed()`` draws a fresh secret noise state (e.g. each round).
    ``per_example``: ``"vmap"`` (``tf.vectorized_map`` of a one-example gradient; the
    default, faster on CPU for small dense models, see benchmarks/privacy_calibration.py)
    or ``"jacobian"`` (``GradientTape.jacobian`` of the per-example loss vector, pfor).
    """

    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                 loss_fn: Callable[[Any, Any], Any], *, l2_clip: float, noise_multiplier: float,
                 anchor: Sequence[tf.Variable] | None = None, mu: float | tf.Variable | None = None,
                 expected_batch_size: int | None = None, per_example: str = "vmap") -> None:
        import tensorflow as tf

        # Graph inputs as variables: configure() changes them without a retrace.
        self._clip = tf.Variable(1.0, dtype=tf.float32, trainable=False)
        self._noise_std = tf.Variable(0.0, dtype=tf.float32, trainable=False)
        self._fixed_denom = tf.Variable(0.0, dtype=tf.float32, trainable=False)  # 0: actual size
        self.configure(l2_clip=l2_clip, noise_multiplier=noise_multiplier,
                       expected_batch_size=expected_batch_size)
        if per_example not in PER_EXAMPLE:
            raise ConfigError(f"per_example {per_example!r} is not known; use one of: "
                              f"{', '.join(PER_EXAMPLE)}")
        _check_model(model)
        variables = list(model.trainable_variables)
        if not variables:
            raise ConfigError("the model has no trainable variables")
        if (anchor is None) != (mu is None):
            raise ConfigError("FedProx needs both anchor (the global weights) and mu, or neither")
        if anchor is not None:
            anchor = list(anchor)
            if [tuple(a.shape) for a in anchor] != [tuple(v.shape) for v in variables]:
                raise ConfigError("anchor must hold one variable per trainable variable of the "
                                  "model, with the same shapes")
        if mu is not None and not isinstance(mu, tf.Variable) and _number("mu", mu) < 0:
            raise ConfigError(f"mu (the FedProx weight) must be >= 0, got {mu}")
        self.generator = tf.random.Generator.from_state(_philox_state(), alg="philox")
        num_features = model.inputs[0].shape[-1] if getattr(model, "inputs", None) else None
        if num_features is None:
            raise ConfigError("the model needs a known input shape (None, features), e.g. "
                              "keras.Input(shape=(features,))")
        clip, noise_std, fixed_denom = self._clip, self._noise_std, self._fixed_denom
        gen = self.generator

        def one_example(xy: Any) -> Any:
            xi, yi = xy
            with tf.GradientTape() as tape:
                li = tf.reduce_sum(loss_fn(yi[None], model(xi[None], training=True)))
            grads = tape.gradient(li, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return grads, li

        def jacobian(x: Any, y: Any) -> Any:
            with tf.GradientTape() as tape:
                losses = tf.reshape(loss_fn(y, model(x, training=True)), (-1,))
            grads = tape.jacobian(losses, variables, experimental_use_pfor=True,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return grads, losses

        def clipped_sum(x: Any, y: Any) -> Any:
            if per_example == "vmap":
                grads, losses = tf.vectorized_map(one_example, (x, y))
            else:
                grads, losses = jacobian(x, y)
            sq = tf.add_n([tf.reduce_sum(tf.reshape(tf.square(g), (tf.shape(g)[0], -1)), axis=1)
                           for g in grads])
            scale = 1.0 / tf.maximum(1.0, tf.sqrt(sq) / clip)  # each example's norm -> <= clip
            summed = [tf.tensordot(scale, g, axes=1) for g in grads]
            return summed, tf.reduce_mean(losses)

        def empty() -> Any:
            return [tf.zeros_like(v) for v in variables], tf.constant(0.0, tf.float32)

        spec_x = tf.TensorSpec((None, num_features), tf.float32)
        spec_y = tf.TensorSpec((None,), tf.float32)

        @tf.function(input_signature=[spec_x, spec_y], reduce_retracing=True)
        def step(x: Any, y: Any) -> Any:
            n = tf.shape(x)[0]
            summed, loss = tf.cond(n > 0, lambda: clipped_sum(x, y), empty)
            denom = tf.where(fixed_denom > 0, fixed_denom, tf.cast(tf.maximum(n, 1), tf.float32))
            grads = [(s + gen.normal(tf.shape(v), stddev=noise_std)) / denom
                     for s, v in zip(summed, variables, strict=True)]
            if anchor is not None:
                grads = [g + mu * (v - a) for g, v, a in zip(grads, variables, anchor, strict=True)]
            optimizer.apply_gradients(zip(grads, variables, strict=True))
            return loss

        self.step = step

    def configure(self, *, l2_clip: float, noise_multiplier: float,
                  expected_batch_size: int | None = None) -> None:
        """Set the clipping norm, noise multiplier and denominator (no retrace).

        A lab learns its number of rows, hence its sampling rate and calibrated noise,
        only after the trainer (and this step) is built: call this before each run.
        """
        clip = _check_clip(l2_clip, "l2_clip")
        nm = _check_noise(noise_multiplier)
        if expected_batch_size is not None:
            _check_count("expected_batch_size", expected_batch_size, minimum=1)
        self.l2_clip, self.noise_multiplier = clip, nm
        self.expected_batch_size = expected_batch_size
        self._clip.assign(clip)
        self._noise_std.assign(nm * clip)
        self._fixed_denom.assign(float(expected_batch_size or 0))

    def reseed(self) -> None:
        """Replace the noise generator's state with a fresh secret one."""
        self.generator.reset(_philox_state())


def make_dp_train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                       loss_fn: Callable[[Any, Any], Any], *, l2_clip: float,
                       noise_multiplier: float, anchor: Sequence[tf.Variable] | None = None,
                       mu: float | tf.Variable | None = None,
                       expected_batch_size: int | None = None, per_example: str = "vmap") -> Any:
    """The DP-SGD ``tf.function`` step ``(x, y) -> mean loss`` (see :class:`DpSgdStep`)."""
    return DpSgdStep(model, optimizer, loss_fn, l2_clip=l2_clip, noise_multiplier=noise_multiplier,
                     anchor=anchor, mu=mu, expected_batch_size=expected_batch_size,
                     per_example=per_example).step
