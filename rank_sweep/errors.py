"""One exception type for every user-facing error.

The CLI prints ``str(error)`` on one line and exits with status 2, before any
training starts. Messages name the bad value and what would be valid.
"""

import re
from urllib.parse import urlsplit, urlunsplit


class RankSweepError(Exception):
    """An input problem the user can fix; printed without a traceback."""


class ConfigError(RankSweepError, ValueError):
    """A config value is invalid (raised while configs are built)."""


class DataError(RankSweepError):
    """A data file or data set is missing, malformed or has wrong labels."""


class TrialsFailed(RankSweepError):
    """The study stopped because its trials keep failing (search.max_consecutive_failures): exit status 1."""


class TrackingError(RankSweepError):
    """The MLflow tracking store or Optuna storage cannot be used."""


# Credentials never reach a message: the redaction rules live here, beside the errors that
# print URLs, so light modules (records, cli) need not import tracking (and Lightning) for them.
def redact(uri: str | None) -> str | None:
    """Hide credentials in a URL: ``postgresql://user:pw@host/db`` -> ``postgresql://***@host/db``."""
    if not uri or "://" not in uri:
        return uri
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def redact_text(text: str) -> str:
    """``text`` with the user:password part of any URL in it replaced by ``***``."""
    return re.sub(r"(\w[\w+.-]*://)[^/@\s]+@", r"\1***@", text)


def first_line(e: BaseException) -> str:
    """An exception's first line, credentials redacted: the tail of a one-line error."""
    return redact_text(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)


# SQLite's result codes (Python's sqlite3 ``sqlite_errorname``) of an error that another process caused by
# writing the same file at the same moment: busy, locked, or the generic error of "table ... already exists" /
# "no such table" while another worker is creating the tables.
SQLITE_RACES = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_ERROR")


def is_creation_race(e: BaseException) -> bool:
    """True when ``e`` (or an error it was raised from) is another worker creating the same store at the same
    moment: a unique key or a table another transaction just created (SQLAlchemy's ``IntegrityError`` and
    ``ProgrammingError``, e.g. psycopg's ``UniqueViolation`` / ``DuplicateTable``), a busy or half-made SQLite
    file (``OperationalError`` with one of :data:`SQLITE_RACES`), or MLflow's ``RESOURCE_ALREADY_EXISTS``.
    Told by the exception's type and the driver's error code, never its text; a store that cannot be opened at
    all (no such folder, no server) is not a race."""
    from sqlalchemy import exc

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (exc.IntegrityError, exc.ProgrammingError)):
            return True
        if isinstance(e, exc.OperationalError) and getattr(e.orig, "sqlite_errorname", None) in SQLITE_RACES:
            return True
        if getattr(e, "error_code", None) == "RESOURCE_ALREADY_EXISTS":  # mlflow.exceptions.MlflowException
            return True
        e = e.__cause__ or e.__context__
    return False
