"""``fedlab check-data``: check a lab's file against the schema, without training.

It runs exactly the loading code a lab's training uses (:func:`load_csv`), so a
file that passes here loads there, and a file that fails fails with the same
message (file, line, column, what to do).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from fedlab.data.csv import LoadReport, load_csv
from fedlab.data.schema import Schema

logger = logging.getLogger(__name__)


def check_file(path: str | os.PathLike[str], schema: Schema | Mapping[str, Any]) -> LoadReport:
    """Load ``path`` against ``schema`` (a ``Schema`` or the ``[data]`` table dict).

    Returns the load report; raises ``DataError`` (bad file) or ``ConfigError``
    (bad schema) exactly as loading for training would.
    """
    if not isinstance(schema, Schema):
        schema = Schema.from_dict(schema)
    return load_csv(path, schema).report
