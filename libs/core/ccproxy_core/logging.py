"""Logging that cannot leak secrets: every record is masked of token-shaped strings and of every
secret registered at run time (:func:`register_secret`)."""

from __future__ import annotations

import logging
import re
import sys

_PATTERNS = [
    re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=\-]{8,}"),
    re.compile(r"(?i)((?:access|refresh)_?token[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9._~+/=\-]{8,}"),
    re.compile(r"(?i)((?:x-api-key|api_key|authorization)[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9._~+/=\-]{8,}"),
]
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it would appear in a log line from now on."""
    if value and len(value) >= 8:
        _secrets.add(value)


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "[REDACTED]")
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[REDACTED]", text)
    return text


#: Longest log message kept (a 50 MB upstream error must not become a 50 MB log line).
MAX_MESSAGE_CHARS = 4096
_TOKENISH = re.compile(r"[A-Za-z0-9._~+/=\-]{8,}")
#: A run sharing this many consecutive characters with a secret is a piece of it.
_FRAGMENT = 8


def scrub_secret(text: str, secret: str) -> str:
    """``text`` without any piece of ``secret`` of 8 characters (an upstream may echo part of one)."""
    if len(secret) < _FRAGMENT:
        return text
    pieces = {secret[i:i + _FRAGMENT] for i in range(len(secret) - _FRAGMENT + 1)}

    def replace(match: re.Match[str]) -> str:
        run = match.group(0)
        if any(run[i:i + _FRAGMENT] in pieces for i in range(len(run) - _FRAGMENT + 1)):
            return "[REDACTED]"
        return run

    return _TOKENISH.sub(replace, text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        # Cut before redacting (cheap), with slack so a secret straddling the limit is still whole.
        clean = redact(message[: MAX_MESSAGE_CHARS + 512])
        if len(message) > MAX_MESSAGE_CHARS:
            clean = f"{clean[:MAX_MESSAGE_CHARS]}… [truncated: {len(message)} characters in all]"
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks are rendered later; keep their text clean too.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def configure(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True  # to the root's handler, whose filter redacts every record
