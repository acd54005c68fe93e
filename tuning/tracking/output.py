"""What the driver tells the user: one `themetune` logger, every line prefixed
`[themetune]`, information to stdout and warnings to stderr.

The handler looks up sys.stdout and sys.stderr when it writes, not when it is made, so
that a redirected stream (pytest's capture, a Ray job's log) gets the lines.
"""

from __future__ import annotations

import logging
import sys

from tuning.redact import redact_text

log = logging.getLogger("themetune")


class _StdStreams(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except (OSError, ValueError):
            self.handleError(record)


def _configure() -> None:
    if any(isinstance(h, _StdStreams) for h in log.handlers):
        return
    handler = _StdStreams()
    handler.setFormatter(logging.Formatter("[themetune] %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    # Ours alone: a root handler (Ray's, MLflow's) must not print each line twice.
    log.propagate = False


_configure()


def say(message: str) -> None:
    log.info(redact_text(message))   # lines name storage URLs and tracking URIs


def warn(message: str) -> None:
    log.warning(redact_text(message))
