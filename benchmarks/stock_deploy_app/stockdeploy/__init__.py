"""Stock Flower deployment baselines of ``benchmarks/deployment.py``."""
