"""The project's own error types.

Every error a user can cause (a bad file, a bad config, a refused message) is a
:class:`FedlabError` whose message says what is wrong *and what to do*. The CLI
prints it on one line without a traceback (``--debug`` shows the traceback).
"""

from __future__ import annotations


class FedlabError(Exception):
    """Base class of every error fedlab raises on purpose."""


class ConfigError(FedlabError):
    """A federation.toml (or lab settings) value is missing, unknown or invalid."""


class DataError(FedlabError):
    """A lab's data file does not match the federation's data schema."""


class ProtocolError(FedlabError):
    """A secure-aggregation message or stage was refused (bad order, bad content)."""


class SignatureError(ProtocolError):
    """A message's signature is missing, invalid, or from a lab outside the roster."""


class RoundAborted(FedlabError):
    """A round could not be aggregated; the previous global model is kept."""


class KitError(FedlabError):
    """A provisioned kit is missing files or holds keys that do not fit."""


class RunError(FedlabError):
    """A run failed as a whole (no successful round, processes that died, ...)."""
