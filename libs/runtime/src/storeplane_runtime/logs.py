"""JSON logs, one object per line, carrying the current trace id. Never log customer PII."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from opentelemetry import trace

_RESERVED = set(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object with time, level, logger, message, trace ids and extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = f"{span.trace_id:032x}"
            entry["span_id"] = f"{span.span_id:016x}"
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = without_row_values(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


# PostgreSQL explains a refused row with its values ("DETAIL:  Key (email)=(anna@example.com) already exists.",
# "Failing row contains (…)"), and psycopg puts that into the error's text: a traceback of a database error would
# carry a customer's data into the logs. SQLAlchemy's "[parameters: …]" part is off already (Database hides them).
_ROW_VALUES = re.compile(r"^(\s*DETAIL:\s*).*$", re.MULTILINE)


def without_row_values(text: str) -> str:
    """`text` with the DETAIL lines of PostgreSQL errors (which quote row values) blanked."""
    return _ROW_VALUES.sub(r"\1(row values not logged)", text)


def configure_logging(level: str = "INFO") -> None:
    """Send every log line of the process to stderr as JSON (idempotent)."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.handlers = [handler]
    root.setLevel(level)
    # pika and alembic are chatty at INFO; their warnings still come through.
    for noisy in ("pika", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
