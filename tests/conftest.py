"""Test-run layout for `make test` (pytest-xdist, two workers, ``--dist loadgroup``).

The slow end-to-end tests come in two kinds: real deployments (a SuperLink, SuperNodes
and labs over TLS), which spend most of their time waiting on Flower's polling, and
simulations on Ray, which keep the CPU busy. Each kind is one xdist group, so a worker
runs it in file order (the deployment tests of a module share one federation, and the
Ray-cluster test's ``ray stop`` must not meet a concurrent simulation) while the other
worker runs the other kind and the fast tests beside it. Without ``-n`` nothing changes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") is None:
            continue
        deploy = (_HERE / "deploy") in Path(str(item.path)).resolve().parents
        item.add_marker(pytest.mark.xdist_group("deployment" if deploy else "simulation"))
