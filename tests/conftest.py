"""Markers for `make test` (tests/parallel.py): every slow test under tests/deploy/ is
also marked ``deployment``, so the suite can run as two processes, the deployment tests
in one (file order: a module's tests share one federation) and the rest in the other.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_DEPLOY = Path(__file__).resolve().parent / "deploy"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") is not None and _DEPLOY in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.deployment)
