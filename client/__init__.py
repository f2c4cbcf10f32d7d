"""Flower ClientApp of fedlab: the lab side of every round."""
