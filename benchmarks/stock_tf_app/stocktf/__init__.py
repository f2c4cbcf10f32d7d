"""Stock Flower + TensorFlow app (quickstart style) used as the baseline of
``benchmarks/simulation.py``."""
