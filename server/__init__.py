"""Flower ServerApp of fedlab: round loop, aggregation, secure aggregation server side."""
