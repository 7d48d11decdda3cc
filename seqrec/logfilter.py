"""Console logging that shows a user's mistake as one clear line.

A bad input or config raises a `SeqrecError` whose message names the file, the column and the rule.
Prefect logs such an exception several times, each with a traceback, before the command prints the
message once; on the console those records are dropped (the command's own line says it all). The
Prefect UI and API logs keep every record with its traceback, and `SEQREC_DEBUG=1` (`seqrec run
--debug`) shows them on the console too. Installed by `seqrec/logging.yml` (PREFECT_LOGGING_SETTINGS_PATH),
so Dask worker processes, which configure Prefect logging themselves, filter alike.
"""

from __future__ import annotations

import logging
import os

PREFECT_ENGINE_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


def _user_error_names() -> set[str]:
    from seqrec import errors

    found: set[str] = set()
    todo = [errors.SeqrecError]
    while todo:
        cls = todo.pop()
        found.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return found


def is_user_error(exc: BaseException | None) -> bool:
    from seqrec.errors import SeqrecError

    return isinstance(exc, SeqrecError)


class UserErrorsOnce(logging.Filter):
    """Drop the engine's repeats of a user error (tracebacks and 'Finished in state Failed(...)')."""

    def filter(self, record: logging.LogRecord) -> bool:
        if os.environ.get("SEQREC_DEBUG"):
            return True
        if record.exc_info and is_user_error(record.exc_info[1]):
            return False
        if record.name.startswith(PREFECT_ENGINE_LOGGERS) and record.levelno >= logging.INFO:
            message = record.getMessage()
            if "Failed(" in message or "exception" in message:
                return not any(f"{name}:" in message or f"{name}(" in message for name in _user_error_names())
        return True
