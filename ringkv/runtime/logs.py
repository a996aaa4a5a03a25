"""A node's log: text for people, JSON lines for log pipelines (`--log-format`).

The core hands the runtime Notices (membership changes, pauses, what the node
holds after a change); each becomes one line, its fields kept as fields in
JSON. Nothing is logged per request; warnings that could repeat are limited
where they are raised (at most once a second).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from ringkv.wire import Addr

FIELDS = "ringkv_fields"  # the LogRecord attribute that carries a notice's fields


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, node, logger, message, and fields."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "node": self.node,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS, None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(listen: Addr, level: str, form: str) -> None:
    """Log to stderr at `level`, as `form` ("text" or "json")."""
    node = f"{listen[0]}:{listen[1]}"
    handler = logging.StreamHandler(sys.stderr)
    if form == "json":
        handler.setFormatter(JsonFormatter(node))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s node {node} %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
