"""Markers for `make test` (tests/parallel.py): every slow test under tests/deploy/, and
the DP resume test (which balances the two halves), is also marked ``deployment``, so
the suite runs as two processes: those tests in one (file order: a module's tests share
one federation) and the rest in the other. Simulations in both halves each start a
private Ray; no test stops Ray processes it did not start.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
_DEPLOY = _HERE / "deploy"
_ALSO = {_HERE / "faults" / "test_dp_resume.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path))
        if item.get_closest_marker("slow") is not None and (_DEPLOY in path.parents
                                                             or path in _ALSO):
            item.add_marker(pytest.mark.deployment)
