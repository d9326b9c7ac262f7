"""Error hierarchy: setup errors a user can fix, runtime failures, infrastructure trouble.

Scientific failures of a single calculation are *not* exceptions that escape an oracle: they
become `Evaluation(status="failed", failure=...)` records (failures are data).
"""


class DiscoveryError(Exception):
    """Base class of every error this package raises on purpose."""

    retryable = False


class ConfigError(DiscoveryError):
    """A campaign file, override or path is wrong; the message names file, key and expectation."""


class DataError(DiscoveryError):
    """A dataset, CIF or checkpoint cannot be read."""


class OracleSetupError(DiscoveryError):
    """An oracle cannot be built (missing code, missing pseudopotentials)."""


class EvaluationFailed(DiscoveryError):
    """One calculation failed; carries a short error class used in failure records."""

    def __init__(self, error_class: str, message: str, retryable: bool = False):
        super().__init__(f"{error_class}: {message}")
        self.error_class = error_class
        self.message = message
        self.retryable = retryable


class NotFittedError(DiscoveryError):
    """A model was asked to predict, embed or save before any `fit` or `load`."""


class InfrastructureError(DiscoveryError):
    """Ray, a worker process or the file system misbehaved; usually worth a retry."""

    retryable = True


class LedgerError(DiscoveryError):
    """The ledger is missing, locked by another driver, or inconsistent."""
