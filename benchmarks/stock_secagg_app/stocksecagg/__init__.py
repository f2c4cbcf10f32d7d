"""Stock Flower SecAgg+ baseline (legacy API) for fedlab's secure-aggregation benchmark."""
