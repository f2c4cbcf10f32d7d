"""fedlab: federated learning for institutions that cannot share data."""

from __future__ import annotations

__version__ = "0.1.0"
