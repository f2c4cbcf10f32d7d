"""Server-side update rules: the aggregate update -> the next global model.

Flower's message strategies aggregate *individual* replies; under secure
aggregation the server never holds one, only the sum. So the server rules live
here and work on the averaged update alone: FedAvg/FedProx apply it (optionally
damped by a server learning rate), FedAdam (Reddi et al., 2021) treats it as a
pseudo-gradient with Adam moments. Their state is checkpointed with the model.
"""

from __future__ import annotations

import numpy as np

from fedlab.config import StrategyConfig


class ServerOptimizer:
    """Applies the weighted-average update of a round to the global weight vector."""

    def __init__(self, cfg: StrategyConfig, size: int) -> None:
        self.cfg = cfg
        self.m = np.zeros(size, dtype=np.float64) if cfg.name == "fedadam" else None
        self.v = np.zeros(size, dtype=np.float64) if cfg.name == "fedadam" else None

    def apply(self, global_vec: np.ndarray, avg_update: np.ndarray) -> np.ndarray:
        d = np.asarray(avg_update, dtype=np.float64)
        if self.cfg.name == "fedadam":
            assert self.m is not None and self.v is not None
            b1, b2 = self.cfg.beta1, self.cfg.beta2
            self.m = b1 * self.m + (1 - b1) * d
            self.v = b2 * self.v + (1 - b2) * d * d
            step = self.cfg.server_learning_rate * self.m / (np.sqrt(self.v) + self.cfg.tau)
        else:
            step = self.cfg.server_learning_rate * d
        return (global_vec.astype(np.float64) + step).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        if self.m is None or self.v is None:
            return {}
        return {"m": self.m, "v": self.v}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if self.m is not None and "m" in state and "v" in state:
            self.m = np.asarray(state["m"], dtype=np.float64)
            self.v = np.asarray(state["v"], dtype=np.float64)
