"""Logging for `capreg serve`: text for people, or one JSON object per line for log pipelines, carrying the
trace and span ids of the RPC being served, with secrets (API keys, database passwords) masked."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

from registry.domain.auth import KEY_PREFIX

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_SECRETS = (
    (re.compile(rf"{KEY_PREFIX}_[0-9a-f]{{16}}_[A-Za-z0-9_-]+"), f"{KEY_PREFIX}_***"),  # API keys
    (re.compile(r"(?i)(bearer\s+)[^\s\"']+"), r"\1***"),  # authorization headers
    (re.compile(r"(://[^:/@\s]+:)[^@/\s]+@"), r"\1***@"),  # passwords in URLs
)


def redact(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure(level: str, log_format: str) -> None:
    """The root logger: `log_format` "json" or "text", at `level`; chatty libraries at WARNING."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else RedactingFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("alembic", "sentence_transformers", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
