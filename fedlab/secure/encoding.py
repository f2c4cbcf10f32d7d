"""Fixed-point encoding of weighted updates into the ring Z/2^32 (uint32 arrays).

A lab with update ``x`` (float32, 1-D) and integer weight ``w`` (its example
count, ``1 <= w <= max_weight``) sends::

    q[j] = rint(clip(x[j], -clip, clip) * w * 2^f)   as two's complement mod 2^32
    q[n] = w                                         (the weight itself, last slot)

Summing the vectors of up to ``max_labs`` labs mod 2^32 gives the weighted sum
scaled by ``2^f`` and the total weight. The encoder picks the largest integer
``f`` (it may be zero or negative when weights are large) such that

    max_labs * (clip * max_weight * 2^f + 1) <= 2^31 - 1            (no wrap)

so the true sum of the value slots always lies in [-(2^31 - 1), 2^31 - 1] and
reads back exactly as a signed 32-bit integer (the ``+ 1`` covers rounding up);
the weight slot needs ``max_labs * max_weight <= 2^32 - 1``.

Precision. The weight multiplies the value inside the ring, so a lab of weight
``w`` is resolved to ``1 / (w * 2^f)``; a lab at full weight to
``2^-(f + log2 max_weight)``. :attr:`FixedPointEncoder.value_bits` is
``f + floor(log2 max_weight)``; the encoder refuses parameters that leave fewer
than :data:`MIN_VALUE_BITS` (8) such bits. For the defaults (clip 8,
max_weight 2^16, max_labs 1000): ``f = 2``, ``value_bits = 18``.

Error of the decoded weighted *average* (for values within the clip): every lab
rounds once, by at most 1/2 unit of ``2^-f`` on the weighted scale, so with total
weight ``W`` over ``n`` labs::

    |decoded average - exact average| <= n / (2^(f+1) * W)  (+ a few float64 ulps)

:meth:`FixedPointEncoder.error_bound` returns this; without ``total_weight`` it
assumes the worst case ``W = n`` (every lab weight 1). With example-count
weights the realised error is far smaller than that worst case (e.g. 50 labs of
10,000 examples each: ``2^-3 / 10^4 ~ 1.3e-5``). The bound is exact arithmetic,
not a heuristic: encoding, ring sum and decoding by a power of two are exact in
float64 apart from the single rounding per lab.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from fedlab.errors import ProtocolError

logger = logging.getLogger(__name__)

RING_BITS = 32
MIN_VALUE_BITS = 8
_MAX_SUM = (1 << 31) - 1
_CHUNK = 1 << 16  # float64 scratch of 512 KiB: stays in L2 while each pass runs


class FixedPointEncoder:
    """Encode clipped, weighted float vectors into Z/2^32 and decode their sum.

    Parameters
    ----------
    clip: every value is clipped to ``[-clip, clip]`` before encoding.
    max_weight: the largest integer weight a lab may use (``<= 2^29``).
    max_labs: the most vectors that may be summed without wrapping.
    """

    def __init__(self, clip: float, max_weight: int, max_labs: int) -> None:
        if not isinstance(clip, int | float) or isinstance(clip, bool):
            raise ProtocolError(f"encoding: clip must be a number, got {clip!r}")
        if not math.isfinite(clip) or clip <= 0:
            raise ProtocolError(f"encoding: clip must be a positive finite number, got {clip!r}")
        for name, value in (("max_weight", max_weight), ("max_labs", max_labs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ProtocolError(f"encoding: {name} must be a positive integer, got {value!r}")
        if max_weight > 1 << 29:
            raise ProtocolError(
                f"encoding: max_weight {max_weight} exceeds 2^29 (float64 products would round); "
                "scale example counts down"
            )
        if max_labs * max_weight > (1 << RING_BITS) - 1:
            raise ProtocolError(
                f"encoding: max_labs * max_weight = {max_labs * max_weight} does not fit the "
                "32-bit weight slot; lower max_labs or max_weight"
            )
        per_lab = _MAX_SUM / max_labs - 1.0
        if per_lab <= 0:
            raise ProtocolError(f"encoding: max_labs {max_labs} leaves no room in 32 bits")
        frac_bits = math.floor(math.log2(per_lab / (float(clip) * max_weight)))
        # Guard against log2 rounding at exact powers of two.
        while max_labs * (clip * max_weight * 2.0**frac_bits + 1) > _MAX_SUM:
            frac_bits -= 1
        while max_labs * (clip * max_weight * 2.0 ** (frac_bits + 1) + 1) <= _MAX_SUM:
            frac_bits += 1
        value_bits = frac_bits + int(math.floor(math.log2(max_weight)))
        if value_bits < MIN_VALUE_BITS:
            raise ProtocolError(
                f"encoding: clip {clip}, max_weight {max_weight} and max_labs {max_labs} leave "
                f"only {value_bits} fractional bits in 32-bit arithmetic (need {MIN_VALUE_BITS}); "
                "lower the clip or max_labs"
            )
        self.clip = float(clip)
        self.max_weight = max_weight
        self.max_labs = max_labs
        self.frac_bits = frac_bits
        self.value_bits = value_bits
        self.scale = 2.0**frac_bits
        self.last_clipped = 0

    def __repr__(self) -> str:
        return (
            f"FixedPointEncoder(clip={self.clip}, max_weight={self.max_weight}, "
            f"max_labs={self.max_labs}; frac_bits={self.frac_bits}, value_bits={self.value_bits})"
        )

    def _check_weight(self, weight: int) -> int:
        if isinstance(weight, bool) or not isinstance(weight, int | np.integer):
            raise ProtocolError(f"encoding: weight must be an integer, got {weight!r}")
        weight = int(weight)
        if not 1 <= weight <= self.max_weight:
            raise ProtocolError(f"encoding: weight {weight} is outside [1, {self.max_weight}] (max_weight)")
        return weight

    def encode(self, values: np.ndarray, weight: int, *, out: np.ndarray | None = None) -> np.ndarray:
        """Encode ``values`` with ``weight``; returns uint32 of ``len(values) + 1``.

        The number of clipped values is stored in :attr:`last_clipped`
        (use :meth:`encode_counting` to get it returned).
        """
        encoded, _ = self.encode_counting(values, weight, out=out)
        return encoded

    def encode_counting(
        self, values: np.ndarray, weight: int, *, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, int]:
        """Like :meth:`encode` but also return how many values were clipped."""
        if not isinstance(values, np.ndarray) or values.ndim != 1:
            raise ProtocolError("encoding: values must be a 1-D numpy array")
        if values.dtype not in (np.float32, np.float64):
            raise ProtocolError(f"encoding: values must be float32 or float64, not {values.dtype}")
        w = self._check_weight(weight)
        n = values.shape[0]
        if out is None:
            out = np.empty(n + 1, dtype=np.uint32)
        elif (
            not isinstance(out, np.ndarray)
            or out.dtype != np.uint32
            or out.shape != (n + 1,)
            or not out.flags.c_contiguous
            or not out.flags.writeable
        ):
            raise ProtocolError(f"encoding: out must be a writeable contiguous uint32[{n + 1}]")
        signed = out[:n].view(np.int32)
        factor = w * self.scale
        clip = self.clip
        buf = np.empty(min(max(n, 1), _CHUNK), dtype=np.float64)
        clipped = 0
        for start in range(0, n, _CHUNK):
            stop = min(n, start + _CHUNK)
            chunk = buf[: stop - start]
            np.copyto(chunk, values[start:stop])
            if not math.isfinite(float(np.add.reduce(chunk))) and not np.isfinite(chunk).all():
                bad = start + int(np.flatnonzero(~np.isfinite(chunk))[0])
                raise ProtocolError(
                    f"encoding: the update holds a non-finite value (index {bad}); refusing to "
                    "encode NaN or infinity"
                )
            clipped += int(np.count_nonzero(chunk > clip)) + int(np.count_nonzero(chunk < -clip))
            np.clip(chunk, -clip, clip, out=chunk)
            np.multiply(chunk, factor, out=chunk)
            np.rint(chunk, out=chunk)
            np.copyto(signed[start:stop], chunk, casting="unsafe")
        out[n] = w
        self.last_clipped = clipped
        if clipped:
            logger.debug("encoding: clipped %d of %d values to +-%g", clipped, n, clip)
        return out, clipped

    def decode_sum(self, total: np.ndarray, n_labs: int) -> tuple[np.ndarray, int]:
        """Decode the ring sum of ``n_labs`` encodings.

        Returns ``(weighted_sum, total_weight)``: the float64 weighted SUM
        (divide by ``total_weight`` for the weighted average) and the summed
        weights. Raises ProtocolError if the weight slot is impossible for
        ``n_labs`` labs (which means the masks were not removed correctly).
        """
        if (
            not isinstance(total, np.ndarray)
            or total.dtype != np.uint32
            or total.ndim != 1
            or total.shape[0] < 1
        ):
            raise ProtocolError("decoding: the sum must be a non-empty 1-D uint32 array")
        if isinstance(n_labs, bool) or not isinstance(n_labs, int) or not 1 <= n_labs <= self.max_labs:
            raise ProtocolError(f"decoding: n_labs must be in [1, {self.max_labs}], got {n_labs!r}")
        total_weight = int(total[-1])
        if not n_labs <= total_weight <= n_labs * self.max_weight:
            raise ProtocolError(
                f"decoding: summed weight {total_weight} is impossible for {n_labs} labs with "
                f"weights in [1, {self.max_weight}]; the masks did not cancel"
            )
        signed = np.ascontiguousarray(total[:-1]).view(np.int32)
        values = np.multiply(signed, 1.0 / self.scale, dtype=np.float64)  # one pass, exact
        return values, total_weight

    def error_bound(self, n_labs: int, total_weight: int | None = None) -> float:
        """Max |decoded weighted average - exact weighted average| for in-clip values.

        ``total_weight`` is the summed weight of the ``n_labs`` labs; when omitted
        the worst case (every weight 1, so ``total_weight = n_labs``) is used.
        """
        if isinstance(n_labs, bool) or not isinstance(n_labs, int) or n_labs < 1:
            raise ProtocolError(f"error bound: n_labs must be a positive integer, got {n_labs!r}")
        weight = n_labs if total_weight is None else int(total_weight)
        if weight < n_labs:
            raise ProtocolError(
                f"error bound: total weight {weight} is below n_labs {n_labs} (weights are >= 1)"
            )
        rounding = n_labs * (0.5 / self.scale + self.clip * self.max_weight * 2.0**-52) / weight
        return rounding + self.clip * 2.0**-50
