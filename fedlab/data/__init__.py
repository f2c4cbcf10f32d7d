"""Data at a lab: schema, loaders, checks, bundled data sets, partitioners."""
