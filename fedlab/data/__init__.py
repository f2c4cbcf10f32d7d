"""Data at a lab: schema, loaders, checks, bundled data sets, partitioners."""

from __future__ import annotations

from fedlab.data import heart_disease, partition
from fedlab.data.check import check_file
from fedlab.data.csv import LoadReport, Table, load_csv
from fedlab.data.lab import LabData, split_validation
from fedlab.data.partition import dirichlet, iid, natural
from fedlab.data.schema import Column, Schema
from fedlab.data.stats import FeatureStats, local_moments

__all__ = [
    "Column",
    "FeatureStats",
    "LabData",
    "LoadReport",
    "Schema",
    "Table",
    "check_file",
    "dirichlet",
    "heart_disease",
    "iid",
    "load_csv",
    "local_moments",
    "natural",
    "partition",
    "split_validation",
]
