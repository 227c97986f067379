"""One exception type for every user-facing error.

The CLI prints ``str(error)`` on one line and exits with status 2, before any
training starts. Messages name the bad value and what would be valid.
"""


class RankSweepError(Exception):
    """An input problem the user can fix; printed without a traceback."""


class ConfigError(RankSweepError, ValueError):
    """A config value is invalid (raised while configs are built)."""


class DataError(RankSweepError):
    """A data file or data set is missing, malformed or has wrong labels."""


class TrackingError(RankSweepError):
    """The MLflow tracking store or Optuna storage cannot be used."""
