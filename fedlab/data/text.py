"""Text at a lab: a strict text-CSV loader, a tokenizer, a federated hashed vocabulary.

Loading
-------
:func:`load_text_csv` reads a lab's own file of labelled texts: UTF-8 CSV (a
leading byte-order mark is allowed; ``.bz2`` and ``.gz`` files are decompressed),
standard double-quote quoting, ``\\n`` or ``\\r\\n`` line ends, the same number of
fields on every line. A quoted text may span lines; a row is named by the line it
starts on. Every problem is a :class:`~fedlab.errors.DataError` naming the file,
the line and the column, what was found and what to do (up to ten problems in one
message, as :func:`fedlab.data.csv.load_csv` does). Rows are never dropped
silently: a row whose label field is empty is left out and counted, with its
line, in the :class:`TextReport`; rows whose label is listed in ``drop_labels``
are left out and counted per label; any other label outside the mapping, and an
empty (blank) text, reject the file.

Tokenizer
---------
:func:`tokenize` (version :data:`TOKENIZER_VERSION`): Unicode NFKC normalisation,
``str.casefold`` (Unicode lower-casing: ``"Straße"`` -> ``"strasse"``), soft
hyphens and zero-width characters removed, typographic apostrophes (U+2018,
U+2019, U+02BC) turned into ``'``, then the words ``\\w+(?:'\\w+)*``: runs of
Unicode letters, digits and ``_``, joined by inner apostrophes (``"it's"`` is one
token, ``"'quoted'"`` gives ``quoted``). Punctuation and spaces separate tokens.
It is deterministic and has no state; it depends only on the Unicode tables of
the Python version (labs should run the same Python minor version so that rare
characters classify alike).

Federated vocabulary: hashed buckets
------------------------------------
No token string ever leaves a lab. A token's *bucket* is the first 8 bytes of
BLAKE2b(token in UTF-8, person ``fedlab-vocab-v1``, optional key), big-endian,
modulo the number of buckets ``B`` (:func:`token_buckets`); the same token gets
the same bucket at every lab and in every process (Python's ``hash()`` is salted
per process and is never used). The vocabulary is a set of buckets, and a
token's id is its bucket's rank, so every lab derives identical ids from the
same public bucket list. The protocol, for the integrator:

1. Each lab, on its *training* texts: ``contribution = vocabulary_contribution(
   texts, B)``: ``int64 [2B]``, the per-bucket token counts
   (:func:`hashed_counts`) followed by the per-bucket presence 0/1
   (:func:`hashed_presence`).
2. The vectors are summed by secure aggregation (:func:`scale_for_aggregation`
   maps them exactly into the fixed-point ring); the server splits the sum with
   :func:`split_contribution` into ``total_counts`` (occurrences in all labs)
   and ``lab_counts`` (how many labs have a token in the bucket);
   :func:`build_vocabulary` does steps 2 and 3 in one call.
3. The server (or every lab, same result) calls :func:`select_buckets`: the
   buckets held by at least ``min_labs`` labs, by total count descending, ties
   by bucket id ascending, the first ``vocab_size`` of them. That int64 list
   (at most ``vocab_size`` numbers) is sent to every lab.
4. Each lab builds ``TextEncoder(selected, B, max_len)`` and encodes its texts:
   id 0 = padding, 1 = out of vocabulary, ``2 + r`` = the bucket of rank ``r``.
   :meth:`TextEncoder.fingerprint` lets labs confirm they hold the same one.

Privacy. No token string leaves a lab, and secure aggregation reveals only the
sums over the labs: per bucket, the total count and the number of labs. A
bucket enters the vocabulary only when at least ``min_labs`` labs have a token
in it, so a word used at fewer labs never gets an id of its own; at most it
shares the id of a selected bucket it collides with, a mapping computed inside
the lab. The selected list names buckets, never words. Caveat: with the
unkeyed hash the buckets are public, so whoever sees the sums (the server) can
test a *guessed* word by hashing it (a dictionary attack: an empty bucket proves
the word absent at every lab; a non-empty one is a false alarm as often as
buckets are occupied, 7.7 % for this corpus at ``B = 2**18``), and can name the
common words behind the selected buckets. A federation that needs more passes
a ``key`` (1 to 64 bytes) known to every lab and not to the server, the same to
:func:`vocabulary_contribution` and :class:`TextEncoder`: bucket ids are then
pseudorandom to the server. The summed counts of frequent words and the
trained embeddings are not protected by this scheme (differential privacy is
the tool for that).

Collisions. With ``B`` buckets and ``N`` distinct tokens in the federation, a
given token shares its bucket with another token with probability about
``N / B``, and about ``V**2 / (2B)`` pairs of the ``V`` most frequent tokens
share an id. Measured for the defaults (``B = 2**18``, ``V = 10,000``) on the
Rotten Tomatoes corpus (20,834 distinct tokens, 7.7 % of the buckets occupied):
7.3 % of the tokens share a bucket, and 183 pairs of the 10,000 most frequent
tokens share an id (363 tokens, 3.6 %). A rare word that collides with a
selected bucket takes that bucket's id rather than the out-of-vocabulary id.
``B = 2**20`` cuts both by four (1.9 %; 46 pairs) for four times the bytes: a
lab's contribution is ``2 * B`` values, 2 MiB at ``2**18`` as 32-bit ring
elements.
"""

from __future__ import annotations

import bz2
import csv
import functools
import gzip
import hashlib
import io
import json
import logging
import math
import os
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedlab.data.csv import _line_and_column, _Problems, _show
from fedlab.data.lab import LabData, split_validation
from fedlab.data.partition import dirichlet
from fedlab.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

TOKENIZER_VERSION = "fedlab-words-1"
HASH_NAME = "blake2b-64/fedlab-vocab-v1"
DEFAULT_BUCKETS = 2**18
DEFAULT_VOCAB_SIZE = 10_000
DEFAULT_MIN_LABS = 2
DEFAULT_MAX_LEN = 40
MAX_BUCKETS = 2**24
PAD = 0
OOV = 1
FIRST_ID = 2

_PERSON = b"fedlab-vocab-v1"
_MAX_KEY_BYTES = 64
_CACHE_LIMIT = 1 << 20
_WORD = re.compile(r"\w+(?:'\w+)*")
_TRANSLATE = {
    **dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u2060\ufeff")),
    **{ord(c): "'" for c in "\u2018\u2019\u02bc"},
}
# A NUL, a byte that is not UTF-8 (a lone surrogate after "surrogateescape"), a stray CR.
_CR_MARK = "\ud800"  # a stray CR, marked (surrogateescape never makes U+D800)
_BAD_CHAR = re.compile("[\x00\ud800\udc80-\udcff]")
_STRAY_CR = re.compile(r"\r(?!\n)")


# ---------------------------------------------------------------- tokenizer
def tokenize(text: str) -> list[str]:
    """The word tokens of ``text``, lower-cased (see the module docstring for the rules)."""
    if not isinstance(text, str):
        raise DataError(f"tokenize: expected a text (str), found {type(text).__name__}")
    if text.isascii():  # NFKC and the translation leave ASCII alone; casefold is lower
        return _WORD.findall(text.lower())
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold().translate(_TRANSLATE))


def _as_texts(texts: Iterable[str], where: str) -> list[str]:
    if isinstance(texts, str | bytes):
        raise DataError(
            f"{where}: expected a list of texts, found a single {type(texts).__name__}; wrap it in a list"
        )
    try:
        out = list(texts)
    except TypeError:
        raise DataError(f"{where}: expected a list of texts, found {type(texts).__name__}") from None
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise DataError(f"{where}: text {i} is a {type(text).__name__}, not a str; pass decoded texts")
    return out


# ---------------------------------------------------------------- hashing
def _check_int(value: object, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{name}: expected an integer >= {low}, found {value!r}")
    if value < low or (high is not None and value > high):
        limit = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"{name}: found {value}, expected an integer {limit}")
    return int(value)


def _check_buckets(buckets: object) -> int:
    return _check_int(buckets, "buckets", 1, MAX_BUCKETS)


def _check_key(key: object) -> bytes:
    if key is None:
        return b""
    if not isinstance(key, bytes) or not 1 <= len(key) <= _MAX_KEY_BYTES:
        raise ConfigError(
            f"vocabulary key: expected None or 1 to {_MAX_KEY_BYTES} bytes, found "
            f"{type(key).__name__}{f' of {len(key)} bytes' if isinstance(key, bytes) else ''}; "
            "use the same secret bytes at every lab"
        )
    return key


def _bucket(token: str, buckets: int, key: bytes) -> int:
    digest = hashlib.blake2b(
        token.encode("utf-8", "surrogatepass"), digest_size=8, key=key, person=_PERSON
    ).digest()
    return int.from_bytes(digest, "big") % buckets


def token_buckets(tokens: Iterable[str], buckets: int, *, key: bytes | None = None) -> np.ndarray:
    """The bucket (``int64``) of each token, in order; same at every lab and process."""
    b = _check_buckets(buckets)
    k = _check_key(key)
    items = _as_texts(tokens, "token_buckets")
    return np.fromiter((_bucket(t, b, k) for t in items), dtype=np.int64, count=len(items))


def _token_counts(texts: Iterable[str], where: str) -> Counter[str]:
    counter: Counter[str] = Counter()
    for text in _as_texts(texts, where):
        counter.update(tokenize(text))
    return counter


def _counts_and_presence(
    texts: Iterable[str], buckets: int, key: bytes | None, where: str
) -> tuple[np.ndarray, np.ndarray]:
    b = _check_buckets(buckets)
    k = _check_key(key)
    counter = _token_counts(texts, where)
    ids = np.fromiter((_bucket(t, b, k) for t in counter), dtype=np.int64, count=len(counter))
    numbers = np.fromiter(counter.values(), dtype=np.int64, count=len(counter))
    counts = np.zeros(b, dtype=np.int64)
    np.add.at(counts, ids, numbers)
    presence = np.zeros(b, dtype=np.int64)
    presence[ids] = 1
    return counts, presence


def hashed_counts(
    texts: Iterable[str], buckets: int = DEFAULT_BUCKETS, *, key: bytes | None = None
) -> np.ndarray:
    """``int64 [buckets]``: how many tokens of ``texts`` fall in each bucket.

    Additive: the sum over labs equals the counts of the pooled texts, exactly.
    """
    return _counts_and_presence(texts, buckets, key, "hashed_counts")[0]


def hashed_presence(
    texts: Iterable[str], buckets: int = DEFAULT_BUCKETS, *, key: bytes | None = None
) -> np.ndarray:
    """``int64 [buckets]`` of 0/1: whether ``texts`` hold any token of each bucket.

    Summed over labs: the number of labs that have a token in each bucket.
    """
    return _counts_and_presence(texts, buckets, key, "hashed_presence")[1]


def vocabulary_contribution(
    texts: Iterable[str], buckets: int = DEFAULT_BUCKETS, *, key: bytes | None = None
) -> np.ndarray:
    """A lab's vector for the vocabulary sum: ``int64 [2 * buckets]``, counts then presence."""
    counts, presence = _counts_and_presence(texts, buckets, key, "vocabulary_contribution")
    return np.concatenate([counts, presence])


def _integral(values: object, name: str) -> np.ndarray:
    """A 1-D non-negative whole-number array as int64, or a DataError."""
    array = np.asarray(values)
    if array.ndim != 1 or array.dtype.kind not in "iuf":
        raise DataError(
            f"{name}: expected a 1-D array of counts, found shape {array.shape} of "
            f"{array.dtype}; pass the aggregated vocabulary vector"
        )
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or (array != np.rint(array)).any():
            raise DataError(
                f"{name}: the counts are not whole numbers; decode the aggregate with the "
                "same CountScaling the labs encoded with"
            )
        if array.size and np.abs(array).max() > 2.0**62:
            raise DataError(f"{name}: counts beyond 2^62 are not plausible; check the decoding")
    out = array.astype(np.int64)
    if (out < 0).any():
        raise DataError(
            f"{name}: negative count at bucket {int(np.flatnonzero(out < 0)[0])}; the masks "
            "did not cancel or the sum wrapped, check the aggregation parameters"
        )
    return out


def split_contribution(total: np.ndarray, buckets: int = DEFAULT_BUCKETS) -> tuple[np.ndarray, np.ndarray]:
    """Split the summed contributions into ``(total_counts, lab_counts)``, ``int64 [buckets]`` each."""
    b = _check_buckets(buckets)
    whole = _integral(total, "vocabulary sum")
    if whole.shape != (2 * b,):
        raise DataError(
            f"vocabulary sum: expected {2 * b} values (counts and presence of {b} buckets), "
            f"found {whole.shape[0]}; every lab must use the same number of buckets"
        )
    return whole[:b].copy(), whole[b:].copy()


def select_buckets(
    total_counts: np.ndarray,
    lab_counts: np.ndarray,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    min_labs: int = DEFAULT_MIN_LABS,
) -> np.ndarray:
    """The vocabulary: ``int64`` bucket ids in rank order (id of rank ``r`` is ``2 + r``).

    Only buckets with ``lab_counts >= min_labs`` are eligible; they are ranked by
    ``total_counts`` descending, ties by bucket id ascending, and the first
    ``vocab_size`` kept (fewer when fewer are eligible). Deterministic: every
    party computing it from the same sums gets the same list.
    """
    vocab_size = _check_int(vocab_size, "vocab_size", 1)
    min_labs = _check_int(min_labs, "min_labs", 1)
    totals = _integral(total_counts, "total_counts")
    labs = _integral(lab_counts, "lab_counts")
    if totals.shape != labs.shape:
        raise DataError(
            f"select_buckets: {totals.shape[0]} total counts but {labs.shape[0]} lab counts; "
            "both come from the same number of buckets"
        )
    inconsistent = np.flatnonzero(labs > totals)
    if inconsistent.size:
        i = int(inconsistent[0])
        raise DataError(
            f"select_buckets: bucket {i} is held by {int(labs[i])} labs but has only "
            f"{int(totals[i])} tokens; the counts and presence sums do not belong together"
        )
    if min_labs < 2:
        logger.warning("vocabulary: min_labs = %d lets a word of a single lab into the vocabulary", min_labs)
    eligible = np.flatnonzero(labs >= min_labs)
    if eligible.size == 0:
        raise ConfigError(
            f"vocabulary: no bucket is held by {min_labs} or more labs (the most labs sharing "
            f"a bucket: {int(labs.max(initial=0))}); lower min_labs or check that the labs "
            "sent their token counts"
        )
    order = np.lexsort((eligible, -totals[eligible]))
    selected = eligible[order[:vocab_size]].astype(np.int64)
    logger.info(
        "vocabulary: %d buckets selected of %d held by >= %d labs", len(selected), eligible.size, min_labs
    )
    return selected


def build_vocabulary(
    total: np.ndarray,
    buckets: int = DEFAULT_BUCKETS,
    *,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    min_labs: int = DEFAULT_MIN_LABS,
) -> np.ndarray:
    """Server side in one call: the summed contributions to the selected buckets.

    ``select_buckets(*split_contribution(total, buckets), vocab_size, min_labs)``.
    """
    return select_buckets(*split_contribution(total, buckets), vocab_size, min_labs)


# ---------------------------------------------------------------- secure aggregation
@dataclass(frozen=True)
class CountScaling:
    """Exact transport of whole counts through the fixed-point secure sum.

    The encoder of :mod:`fedlab.secure.encoding` sends ``rint(clip(x) * w * 2^f)``.
    A lab sends ``values = to_values(counts)`` with weight ``weight``
    (= ``max_weight``), so each count arrives as itself; the decoded weighted
    *sum* ``s`` gives the summed counts as ``from_sum(s)`` (``s * 2^f``). A lab's
    count above ``capacity`` (``floor(clip * max_weight * 2^f)``, 2^21 for the
    defaults clip 8, max_weight 2^16, max_labs 1000) is clamped to it and logged:
    such a bucket ranks first anyway unless ``vocab_size`` buckets are clamped.
    """

    weight: int
    step: float
    frac_bits: int
    capacity: int

    def to_values(self, counts: np.ndarray) -> np.ndarray:
        """``float64`` values to encode with weight :attr:`weight`."""
        whole = _integral(counts, "counts to aggregate")
        over = whole > self.capacity
        if over.any():
            logger.warning(
                "vocabulary: %d bucket count(s) above %d clamped for the secure sum",
                int(over.sum()),
                self.capacity,
            )
            whole = np.minimum(whole, self.capacity)
        return whole.astype(np.float64) * self.step

    def from_sum(self, weighted_sum: np.ndarray) -> np.ndarray:
        """``int64`` summed counts from the decoded weighted sum (not the average)."""
        scaled = np.asarray(weighted_sum, dtype=np.float64) * 2.0**self.frac_bits
        rounded = np.rint(scaled)
        if scaled.size and np.abs(scaled - rounded).max() > 1e-6:
            raise DataError(
                "vocabulary sum: the decoded values are not whole counts; decode with the "
                "encoding parameters (clip, max_weight, frac_bits) the labs used"
            )
        return _integral(rounded, "vocabulary sum")


def scale_for_aggregation(*, clip: float, max_weight: int, frac_bits: int) -> CountScaling:
    """The :class:`CountScaling` for a fixed-point encoder's ``clip``, ``max_weight``, ``frac_bits``."""
    if isinstance(clip, bool) or not isinstance(clip, int | float) or not math.isfinite(clip) or clip <= 0:
        raise ConfigError(f"clip: expected a positive finite number, found {clip!r}")
    max_weight = _check_int(max_weight, "max_weight", 1)
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, int | np.integer):
        raise ConfigError(f"frac_bits: expected an integer, found {frac_bits!r}")
    capacity = math.floor(clip * max_weight * 2.0**frac_bits)
    if capacity < 1:
        raise ConfigError(
            f"vocabulary aggregation: clip {clip}, max_weight {max_weight} and frac_bits "
            f"{frac_bits} cannot carry a count of 1; raise the clip or max_weight"
        )
    step = 1.0 / (max_weight * 2.0 ** int(frac_bits))
    return CountScaling(weight=max_weight, step=step, frac_bits=int(frac_bits), capacity=capacity)


# ---------------------------------------------------------------- encoder
class TextEncoder:
    """Texts to ``int32 [n, max_len]`` ids: 0 padding, 1 out of vocabulary, 2.. vocabulary.

    ``selected_buckets``: the list from :func:`select_buckets` (rank order).
    The first ``max_len`` tokens of a text are kept, padding follows them; a text
    without any token encodes as a single out-of-vocabulary id (so no row is all
    padding, which would make a masked average divide by zero). The embedding
    layer needs :attr:`input_dim` rows (``vocab_size + 2``).
    """

    def __init__(
        self,
        selected_buckets: Sequence[int] | np.ndarray,
        buckets: int = DEFAULT_BUCKETS,
        max_len: int = DEFAULT_MAX_LEN,
        *,
        key: bytes | None = None,
    ) -> None:
        self.buckets = _check_buckets(buckets)
        self.max_len = _check_int(max_len, "max_len", 1)
        self._key = _check_key(key)
        selected = np.asarray(selected_buckets)
        if selected.ndim != 1 or (selected.size and selected.dtype.kind not in "iu"):
            raise ConfigError(
                f"vocabulary: expected a 1-D list of integer bucket ids, found shape "
                f"{selected.shape} of {selected.dtype}; pass the output of select_buckets"
            )
        if selected.size == 0:
            raise ConfigError("vocabulary: the list of buckets is empty; run select_buckets first")
        selected = selected.astype(np.int64)
        if selected.min() < 0 or selected.max() >= self.buckets:
            raise ConfigError(
                f"vocabulary: bucket ids must lie in [0, {self.buckets}); found "
                f"{int(selected.min())}..{int(selected.max())}; use the number of buckets the "
                "vocabulary was selected with"
            )
        if np.unique(selected).size != selected.size:
            raise ConfigError("vocabulary: a bucket id is listed twice; pass select_buckets' output")
        self._selected = selected
        self._selected.flags.writeable = False
        self._lookup = np.full(self.buckets, OOV, dtype=np.int32)
        self._lookup[selected] = np.arange(FIRST_ID, FIRST_ID + selected.size, dtype=np.int32)
        self._ids: dict[str, int] = {}

    @property
    def selected_buckets(self) -> np.ndarray:
        """The vocabulary's bucket ids in rank order (read-only)."""
        return self._selected

    @property
    def vocab_size(self) -> int:
        """Number of vocabulary ids (buckets)."""
        return int(self._selected.size)

    @property
    def input_dim(self) -> int:
        """Rows of the embedding table: vocabulary plus padding and out-of-vocabulary."""
        return self.vocab_size + FIRST_ID

    def fingerprint(self) -> str:
        """SHA-256 (hex) of everything that decides the ids; equal at labs that agree.

        Covers the tokenizer and hash versions, the number of buckets, ``max_len``,
        whether a key is used (not the key), and the selected buckets.
        """
        head = json.dumps(
            {
                "tokenizer": TOKENIZER_VERSION,
                "hash": HASH_NAME,
                "buckets": self.buckets,
                "max_len": self.max_len,
                "keyed": bool(self._key),
            },
            sort_keys=True,
        ).encode()
        return hashlib.sha256(head + b"\n" + self._selected.astype("<i8").tobytes()).hexdigest()

    def token_ids(self, tokens: Iterable[str]) -> np.ndarray:
        """``int32`` id of each token (1 when its bucket is not in the vocabulary)."""
        items = _as_texts(tokens, "token_ids")
        self._learn(items)
        return np.fromiter(map(self._ids.__getitem__, items), dtype=np.int32, count=len(items))

    def _learn(self, tokens: Iterable[str]) -> None:
        ids = self._ids
        new = {t for t in tokens if t not in ids}
        if not new:
            return
        if len(ids) + len(new) > _CACHE_LIMIT:
            ids.clear()
        lookup, b, k = self._lookup, self.buckets, self._key
        for token in new:
            ids[token] = int(lookup[_bucket(token, b, k)])

    def encode(self, texts: Iterable[str]) -> np.ndarray:
        """``int32 [len(texts), max_len]``: ids of the first ``max_len`` tokens, 0-padded."""
        items = _as_texts(texts, "encode")
        n = len(items)
        limit = self.max_len
        lengths = np.empty(n, dtype=np.int64)
        flat: list[str] = []
        for i, text in enumerate(items):
            tokens = tokenize(text)[:limit]
            lengths[i] = len(tokens)
            flat.extend(tokens)
        self._learn(flat)
        ids = np.fromiter(map(self._ids.__getitem__, flat), dtype=np.int32, count=len(flat))
        out = np.zeros((n, limit), dtype=np.int32)
        rows = np.repeat(np.arange(n), lengths)
        starts = np.cumsum(lengths) - lengths
        cols = np.arange(len(flat)) - np.repeat(starts, lengths)
        out[rows, cols] = ids
        out[lengths == 0, 0] = OOV
        return out

    def __repr__(self) -> str:
        return (
            f"TextEncoder(vocab_size={self.vocab_size}, buckets={self.buckets}, "
            f"max_len={self.max_len}, keyed={bool(self._key)})"
        )


# ---------------------------------------------------------------- loader
@dataclass
class TextReport:
    """What happened to a text file's rows.

    ``lines``: ``int64`` 1-based start line of each kept row; ``missing_label_lines``:
    the rows left out because their label field was empty; ``dropped_labels``: rows
    left out per label listed in ``drop_labels``; ``no_tokens``: kept rows whose
    text has no word token (they encode as one out-of-vocabulary id).
    """

    file: str
    rows_read: int
    rows_kept: int
    lines: np.ndarray
    missing_label_lines: list[int] = field(default_factory=list)
    dropped_labels: dict[str, int] = field(default_factory=dict)
    class_counts: dict[int, int] = field(default_factory=dict)
    no_tokens: int = 0

    @property
    def missing_label(self) -> int:
        """Rows left out for an empty label field."""
        return len(self.missing_label_lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (without the per-row lines)."""
        return {
            "file": self.file,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "missing_label": self.missing_label,
            "missing_label_lines": list(self.missing_label_lines),
            "dropped_labels": dict(self.dropped_labels),
            "class_counts": {str(k): v for k, v in self.class_counts.items()},
            "no_tokens": self.no_tokens,
        }

    def format(self) -> str:
        """A short human summary, e.g. for ``fedlab check-data``."""
        text = f"{Path(self.file).name}: {self.rows_read} rows read, {self.rows_kept} kept"
        classes = ", ".join(f"class {k}: {v}" for k, v in sorted(self.class_counts.items()))
        if classes:
            text += f" ({classes})"
        if self.dropped_labels:
            text += "; left out by label: " + ", ".join(f"{k!r} {v}" for k, v in self.dropped_labels.items())
        if self.missing_label_lines:
            shown = ", ".join(map(str, self.missing_label_lines[:10]))
            more = ", ..." if self.missing_label > 10 else ""
            text += f"; {self.missing_label} left out for an empty label (lines {shown}{more})"
        if self.no_tokens:
            text += f"; {self.no_tokens} text(s) without a word token"
        return text


def _read_bytes(path: Path) -> bytes:
    file = str(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise DataError(f"{file}: is a directory, not a file; pass the path of the lab's text file") from None
    except FileNotFoundError:
        raise DataError(f"{file}: no such file; check the path of the lab's text file") from None
    except PermissionError:
        raise DataError(
            f"{file}: permission denied; make the file readable by the user running fedlab"
        ) from None
    except OSError as exc:
        raise DataError(f"{file}: cannot read the file ({exc.strerror or exc})") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".bz2":
            data = bz2.decompress(data)
        elif suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        kind = "bzip2" if suffix == ".bz2" else "gzip"
        raise DataError(
            f"{file}: not a valid {kind} file ({exc}); re-compress the CSV file, or drop the "
            f"{suffix} ending if it is not compressed"
        ) from None
    return data


def _column_label(names: Sequence[str] | None, index: int) -> str:
    if names is not None and index < len(names) and names[index]:
        return names[index]
    return f"field {index + 1}"


def _bad_char_error(value: str, start_line: int, column: str, file: str) -> DataError:
    """The DataError for the first NUL, non-UTF-8 byte or stray carriage return in a field."""
    match = _BAD_CHAR.search(value)
    assert match is not None
    line = start_line + value.count("\n", 0, match.start())
    char = match.group()
    if char == "\x00":
        what = "binary content (a NUL byte)"
        action = "expected a UTF-8 CSV text file; export the data as CSV text"
    elif char == _CR_MARK:
        what = "a carriage return (\\r) that does not end a line"
        action = "expected \\n or \\r\\n line ends; re-save the file with standard line ends"
    else:
        what = f"byte 0x{ord(char) - 0xDC00:02x} is not UTF-8"
        action = "expected UTF-8 text; re-save the file as UTF-8"
    return DataError(f"{file}, line {line}, column {column!r}: {what}; {action}")


def _resolve_column(spec: str | int, what: str, names: list[str] | None, n_fields: int, file: str) -> int:
    if isinstance(spec, str):
        assert names is not None
        hits = [i for i, name in enumerate(names) if name == spec]
        if not hits:
            shown = ", ".join(repr(n) for n in names[:20])
            raise DataError(
                f"{file}, line 1, column {spec!r}: the header has no column {spec!r} (the "
                f"{what}); found {shown}; name an existing column or fix the header"
            )
        if len(hits) > 1:
            raise DataError(
                f"{file}, line 1, column {spec!r}: the header names {spec!r} {len(hits)} times "
                f"(fields {', '.join(str(i + 1) for i in hits)}); give the columns distinct names"
            )
        return hits[0]
    if spec >= n_fields:
        raise DataError(
            f"{file}, line 1, column {_column_label(names, min(spec, n_fields - 1))!r}: the "
            f"{what} is field {spec + 1} but the lines have {n_fields} field(s); choose an "
            "existing column (0-based index)"
        )
    return spec


def _check_arguments(
    text_column: object,
    label_column: object,
    mapping: object,
    header: object,
    drop_labels: object,
) -> tuple[dict[str, int], frozenset[str]]:
    if not isinstance(header, bool):
        raise ConfigError(f"header: expected true or false, found {header!r}")
    for name, spec in (("text_column", text_column), ("label_column", label_column)):
        if isinstance(spec, bool) or not isinstance(spec, str | int):
            raise ConfigError(f"{name}: expected a column name or a 0-based index, found {spec!r}")
        if isinstance(spec, int) and spec < 0:
            raise ConfigError(f"{name}: found {spec}, expected a 0-based index >= 0")
        if isinstance(spec, str) and not header:
            raise ConfigError(
                f"{name}: the file has no header (header = false), so name the column by its "
                f"0-based index, not {spec!r}"
            )
    if text_column == label_column:
        raise ConfigError(
            f"text_column and label_column are both {text_column!r}; they must be different columns"
        )
    if not isinstance(mapping, Mapping) or not mapping:
        raise ConfigError(
            "mapping: expected a non-empty table from label text to class index, e.g. "
            "{'fresh': 1, 'rotten': 0}"
        )
    checked: dict[str, int] = {}
    for k, v in mapping.items():
        if not isinstance(k, str) or not k:
            raise ConfigError(f"mapping: label {k!r} is not a non-empty string; quote the label")
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
            raise ConfigError(f"mapping: label {k!r} maps to {v!r}; expected a class index >= 0")
        checked[k] = int(v)
    if isinstance(drop_labels, str) or not isinstance(drop_labels, Iterable):
        raise ConfigError(f"drop_labels: expected a list of label values, found {drop_labels!r}")
    drop = frozenset(drop_labels)
    if not all(isinstance(d, str) for d in drop):
        raise ConfigError(f"drop_labels: expected strings, found {sorted(map(repr, drop))}")
    both = sorted(drop & set(checked))
    if both:
        raise ConfigError(f"drop_labels: {both} are also in the mapping; a label is either kept or left out")
    return checked, drop


def _wrong_count(
    fields: list[str], line: int, n_fields: int, names: list[str] | None, problems: _Problems
) -> None:
    if not fields:
        problems.add(
            line,
            0,
            _column_label(names, 0),
            f"the line is empty, expected {n_fields} fields",
            "remove the empty line",
        )
    elif len(fields) < n_fields:
        column = _column_label(names, len(fields))
        problems.add(
            line,
            len(fields),
            column,
            f"found {len(fields)} fields, expected {n_fields}: the line ends before column {column!r}",
            "write every column (a text containing a comma must be quoted)",
        )
    else:
        column = _column_label(names, n_fields - 1)
        problems.add(
            line,
            n_fields - 1,
            column,
            f"found {len(fields)} fields, expected {n_fields}: extra field(s) after column {column!r}",
            "remove the extra fields (a text containing a comma must be quoted)",
        )


def _decode(data: bytes, file: str) -> str:
    """The file's text; NUL, bad bytes and stray CRs are kept as markers for _BAD_CHAR."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.strip():
        raise DataError(
            f"{file}, line 1: the file is empty; expected comma-separated lines with a text "
            "and a label column"
        )
    return _STRAY_CR.sub(_CR_MARK, data.decode("utf-8", "surrogateescape"))


def _load(
    path: str | os.PathLike[str],
    *,
    text_column: str | int,
    label_column: str | int,
    mapping: Mapping[str, int],
    header: bool,
    drop_labels: Iterable[str],
    extra_columns: Sequence[str | int] = (),
) -> tuple[list[str], np.ndarray, TextReport, list[list[str]]]:
    classes, drop = _check_arguments(text_column, label_column, mapping, header, drop_labels)
    path = Path(path)
    file = str(path)
    text = _decode(_read_bytes(path), file)
    first_bad = _BAD_CHAR.search(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=",", quotechar='"', strict=True)
    problems = _Problems(file)
    names: list[str] | None = None
    n_fields = -1
    text_index = label_index = -1
    extra_index: list[int] = []
    texts: list[str] = []
    labels: list[int] = []
    kept_lines: list[int] = []
    extras: list[list[str]] = []
    missing_lines: list[int] = []
    dropped: Counter[str] = Counter()
    rows_read = 0
    previous = 0  # last line of the previous record
    allowed = ", ".join(repr(k) for k in classes)
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if first_bad is not None:  # the bytes are what is wrong, not the quoting
                line, index = _line_and_column(text, first_bad.start())
                start = text.rfind("\n", 0, first_bad.start()) + 1
                raise _bad_char_error(text[start:], line, _column_label(names, index), file) from None
            if "field larger than field limit" in str(exc):
                what = f"a field longer than {csv.field_size_limit():,} characters"
                action = "shorten or split the text"
            else:
                what = f"malformed quoting ({exc})"
                action = 'enclose a whole field in double quotes, a quote inside it written as ""'
            problems.add(previous + 1, 0, _column_label(names, 0), what, action)
            problems.raise_if_any()
            raise AssertionError("unreachable") from None
        start = previous + 1
        previous = reader.line_num
        if first_bad is not None:
            for i, value in enumerate(fields):
                if _BAD_CHAR.search(value):
                    raise _bad_char_error(value, start, _column_label(names, i), file)
        if n_fields < 0:
            n_fields = max(len(fields), 1)
            if header:
                names = list(fields)
            text_index = _resolve_column(text_column, "text column", names, n_fields, file)
            label_index = _resolve_column(label_column, "label column", names, n_fields, file)
            extra_index = [_resolve_column(c, "extra column", names, n_fields, file) for c in extra_columns]
            if header:
                continue
        if len(fields) != n_fields:
            _wrong_count(fields, start, n_fields, names, problems)
            continue
        rows_read += 1
        label = fields[label_index]
        if label == "":
            missing_lines.append(start)
            continue
        if label in drop:
            dropped[label] += 1
            continue
        cls = classes.get(label)
        if cls is None:
            hint = (
                "remove the spaces around the label"
                if label.strip() in classes or label.strip() in drop
                else f"use one of {allowed}, or add the value to the mapping (or to drop_labels)"
            )
            problems.add(
                start,
                label_index,
                _column_label(names, label_index),
                f"label value not in the mapping: found {_show(label)}",
                hint,
            )
            continue
        value = fields[text_index]
        if not value.strip():
            problems.add(
                start,
                text_index,
                _column_label(names, text_index),
                f"the text is empty (found {_show(value)})",
                "fill in the text, or remove the row",
            )
            continue
        texts.append(value)
        labels.append(cls)
        kept_lines.append(start)
        if extra_index:
            extras.append([fields[i] for i in extra_index])
    problems.raise_if_any()
    if not texts:
        label_name = _column_label(names, label_index)
        if rows_read == 0:
            raise DataError(
                f"{file}, line {previous + 1}, column {_column_label(names, text_index)!r}: no "
                f"data rows{' after the header' if header else ''}; add the lab's rows"
            )
        raise DataError(
            f"{file}, lines 1-{previous}, column {label_name!r}: none of the {rows_read} rows "
            f"has a label to train on ({len(missing_lines)} empty, "
            f"{sum(dropped.values())} left out by drop_labels); expected labels {allowed}; "
            "check label_column and the mapping"
        )
    y = np.asarray(labels, dtype=np.int64)
    classes_found, class_sizes = np.unique(y, return_counts=True)
    report = TextReport(
        file=file,
        rows_read=rows_read,
        rows_kept=len(texts),
        lines=np.asarray(kept_lines, dtype=np.int64),
        missing_label_lines=missing_lines,
        dropped_labels=dict(sorted(dropped.items())),
        class_counts={int(c): int(n) for c, n in zip(classes_found, class_sizes, strict=True)},
        no_tokens=sum(1 for t in texts if not tokenize(t)),
    )
    logger.log(logging.WARNING if missing_lines else logging.INFO, "%s", report.format())
    return texts, y, report, extras


def load_text_csv(
    path: str | os.PathLike[str],
    *,
    text_column: str | int,
    label_column: str | int,
    mapping: Mapping[str, int],
    header: bool = True,
    drop_labels: Iterable[str] = (),
) -> tuple[list[str], np.ndarray, TextReport]:
    """Read a lab's labelled texts: ``(texts, labels int64 [n], report)``.

    Columns are named by header name, or by 0-based index (required when
    ``header`` is false). ``mapping`` turns label values into class indices;
    rows whose label is in ``drop_labels`` are left out and counted; rows with an
    empty label are left out and listed in the report. See the module docstring
    for the format; errors are ``DataError`` (the file) or ``ConfigError`` (the
    arguments).
    """
    texts, y, report, _ = _load(
        path,
        text_column=text_column,
        label_column=label_column,
        mapping=mapping,
        header=header,
        drop_labels=drop_labels,
    )
    return texts, y, report


# ---------------------------------------------------------------- bundled corpus
DATA_DIR: Path = Path(__file__).resolve().parent / "builtin" / "text"
CORPUS_FILE: Path = DATA_DIR / "rotten_tomatoes_corpus_full.csv.bz2"
CORPUS_SHA256 = "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"
LABELS: dict[str, int] = {"fresh": 1, "rotten": 0}


@functools.cache
def _corpus() -> tuple[tuple[str, ...], np.ndarray, tuple[str, ...], TextReport]:
    texts, labels, report, extras = _load(
        CORPUS_FILE,
        text_column="text",
        label_column="category",
        mapping=LABELS,
        header=True,
        drop_labels=("plot",),
        extra_columns=("movie_name",),
    )
    labels.flags.writeable = False
    return tuple(texts), labels, tuple(e[0] for e in extras), report


def load_rotten_tomatoes() -> tuple[list[str], np.ndarray]:
    """The bundled Rotten Tomatoes snippets: ``(texts, labels int64)``, fresh = 1, rotten = 0.

    12,808 rows (7,403 fresh, 5,405 rotten) in file order; the 1,097 ``plot`` rows
    are left out. Licence and citation: ``builtin/text/ATTRIBUTION.md``.
    """
    texts, labels, _, _ = _corpus()
    return list(texts), labels.copy()


def rotten_tomatoes_movies() -> np.ndarray:
    """The movie of each row of :func:`load_rotten_tomatoes` (for a by-movie partition)."""
    return np.array(_corpus()[2], dtype=object)


def rotten_tomatoes_report() -> TextReport:
    """The load report of the bundled corpus (rows read, left out, per class)."""
    return _corpus()[3]


def _check_fraction(value: object, name: str, low_open: bool) -> float:
    low_ok = (lambda v: v > 0) if low_open else (lambda v: v >= 0)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low_ok(value)
        or value >= 1
    ):
        interval = "(0, 1)" if low_open else "[0, 1)"
        raise ConfigError(f"{name}: found {value!r}; expected a number in {interval}")
    return float(value)


def _seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed: expected an integer >= 0, found {seed!r}")
    return int(seed)


def _sub_seed(seed: int, *path: int) -> int:
    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0])


def rotten_tomatoes_split(seed: int = 0, test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Central baseline: sorted ``int64`` row indices ``(train, test)``, stratified by label."""
    labels = _corpus()[1]
    return split_validation(labels, _check_fraction(test_fraction, "test_fraction", True), _seed(seed))


@dataclass(frozen=True, eq=False)
class TextLabSplit:
    """One virtual lab's rows of the corpus: sorted ``int64`` indices into its texts."""

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_labs(
    labels: np.ndarray,
    parts: Sequence[np.ndarray],
    *,
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> list[TextLabSplit]:
    """Per lab, a stratified train / validation / test split of its rows ``parts[i]``.

    Test rows are ``test_fraction`` of the lab's rows, validation rows
    ``val_fraction`` of the rest (carved out of training rows only). The pooled
    test set (the union of the labs' test rows) is the federation's held-out set;
    a central baseline trains on the union of the training rows.
    """
    y = np.asarray(labels)
    test_fraction = _check_fraction(test_fraction, "test_fraction", True)
    val_fraction = _check_fraction(val_fraction, "val_fraction", False)
    seed = _seed(seed)
    out = []
    for lab, rows in enumerate(parts):
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        if rows.size and (rows[0] < 0 or rows[-1] >= y.shape[0]):
            raise ConfigError(
                f"lab {lab}: row indices must lie in [0, {y.shape[0]}), found {int(rows[0])}.."
                f"{int(rows[-1])}; partition the same labels you pass"
            )
        if rows.size < 2:
            raise ConfigError(
                f"lab {lab} has {rows.size} row(s); a lab needs at least 2 rows for a train and "
                "a test row, use fewer labs or a larger alpha"
            )
        train, test = split_validation(y[rows], test_fraction, _sub_seed(seed, lab, 0))
        keep, val = split_validation(y[rows[train]], val_fraction, _sub_seed(seed, lab, 1))
        out.append(
            TextLabSplit(
                name=f"lab{lab + 1}",
                train=rows[train][keep],
                val=rows[train][val],
                test=rows[test],
            )
        )
    return out


def rotten_tomatoes_labs(
    n_labs: int = 5,
    *,
    alpha: float = 1.0,
    seed: int = 0,
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
) -> list[TextLabSplit]:
    """The corpus over ``n_labs`` label-skewed labs (Dirichlet ``alpha``), each split.

    ``partition.dirichlet(labels, n_labs, alpha, seed, min_size=10)``, then
    :func:`split_labs` per lab (stratified, seeded from ``seed``).
    """
    labels = _corpus()[1]
    parts = dirichlet(labels, n_labs, alpha, _seed(seed), min_size=10)
    return split_labs(labels, parts, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed)


def text_lab_data(
    split: TextLabSplit,
    texts: Sequence[str],
    labels: np.ndarray,
    encoder: TextEncoder,
    *,
    report: TextReport | None = None,
) -> LabData:
    """A lab's :class:`LabData` with ``x_*`` the encoded texts (``int32 [n, max_len]``).

    ``TextLab.from_split(split, texts, labels, report=report).encode(encoder)``.
    """
    return TextLab.from_split(split, texts, labels, report=report).encode(encoder)


# ---------------------------------------------------------------- a lab's texts
@dataclass(frozen=True, eq=False)
class TextLab:
    """One lab's labelled texts, kept raw until the federation's vocabulary is known.

    The texts never leave the lab. Before training the lab sends
    :meth:`vocabulary_contribution` (hashed token counts and presence of its
    *training* texts, never of its validation or test texts) to the secure sum; once
    the selected buckets come back it calls :meth:`encode` with the federation's
    :class:`TextEncoder` and trains on the resulting :class:`LabData`. ``y_*`` are
    ``int64`` labels; ``lines_*`` the 1-based start lines of the rows in the source
    file (empty when unknown).
    """

    name: str
    train_texts: tuple[str, ...]
    y_train: np.ndarray
    val_texts: tuple[str, ...]
    y_val: np.ndarray
    test_texts: tuple[str, ...]
    y_test: np.ndarray
    report: TextReport | None = None
    lines_train: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    lines_val: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    lines_test: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        for part in ("train", "val", "test"):
            texts, y = getattr(self, f"{part}_texts"), getattr(self, f"y_{part}")
            if len(texts) != len(y):
                raise DataError(f"lab {self.name}: {len(texts)} {part} texts but {len(y)} labels")

    @classmethod
    def from_split(
        cls,
        split: TextLabSplit,
        texts: Sequence[str],
        labels: np.ndarray,
        *,
        report: TextReport | None = None,
    ) -> TextLab:
        """The rows ``split`` names (indices into ``texts`` / ``labels``) as a lab's texts."""
        y = np.asarray(labels, dtype=np.int64)
        lines = report.lines if report is not None else None
        empty = np.zeros(0, np.int64)

        def pick(rows: np.ndarray) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
            return (
                tuple(texts[int(i)] for i in rows),
                y[rows],
                lines[rows] if lines is not None else empty,
            )

        train, val, test = pick(split.train), pick(split.val), pick(split.test)
        return cls(
            name=split.name,
            train_texts=train[0],
            y_train=train[1],
            val_texts=val[0],
            y_val=val[1],
            test_texts=test[0],
            y_test=test[1],
            report=report,
            lines_train=train[2],
            lines_val=val[2],
            lines_test=test[2],
        )

    @property
    def num_train(self) -> int:
        """Number of training rows (the weight of this lab's update)."""
        return len(self.train_texts)

    @property
    def num_val(self) -> int:
        """Number of validation rows."""
        return len(self.val_texts)

    @property
    def num_test(self) -> int:
        """Number of test rows."""
        return len(self.test_texts)

    def vocabulary_contribution(
        self, buckets: int = DEFAULT_BUCKETS, *, key: bytes | None = None
    ) -> np.ndarray:
        """This lab's vector for the vocabulary sum (training texts only): ``int64 [2B]``."""
        return vocabulary_contribution(self.train_texts, buckets, key=key)

    def encode(self, encoder: TextEncoder) -> LabData:
        """The lab's rows as token ids (``int32 [n, max_len]``) for training and evaluation."""
        return LabData(
            name=self.name,
            x_train=encoder.encode(self.train_texts),
            y_train=self.y_train,
            x_val=encoder.encode(self.val_texts),
            y_val=self.y_val,
            x_test=encoder.encode(self.test_texts),
            y_test=self.y_test,
            lines_train=self.lines_train,
            lines_val=self.lines_val,
            lines_test=self.lines_test,
        )


def central_vocabulary(
    texts: Iterable[str],
    buckets: int = DEFAULT_BUCKETS,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    *,
    key: bytes | None = None,
) -> np.ndarray:
    """The vocabulary one party selects from texts it holds itself (baselines).

    The ``vocab_size`` buckets with the most tokens, ties by bucket id: the same rule
    as :func:`select_buckets` with every held bucket eligible (nobody else's words
    are involved, so there is no ``min_labs``).
    """
    vocab_size = _check_int(vocab_size, "vocab_size", 1)
    counts = hashed_counts(texts, buckets, key=key)
    held = np.flatnonzero(counts > 0)
    if held.size == 0:
        raise DataError("vocabulary: the texts hold no word token; check the data")
    order = np.lexsort((held, -counts[held]))
    return held[order[:vocab_size]].astype(np.int64)
