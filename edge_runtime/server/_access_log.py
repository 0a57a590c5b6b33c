"""The access log (``--access-log PATH|-``): one JSON object per inference request, one line each.

Off by default. Each line (UTF-8, ``\\n``-terminated; keys always present, ``null`` where unknown)::

    {"time": "2026-11-29T21:04:05.123Z", "model": "demo", "request_id": "r-17", "status": 200,
     "budget_ms": 1.0, "members_used": 3, "exit_reason": "budget", "batch": 1, "queue_ms": 0.02,
     "elapsed_ms": 0.61, "shed": null}

* ``time``: when the answer was built (UTC, milliseconds); ``elapsed_ms``: from the request's arrival (its
  first byte, as the budget counts) to then.
* ``request_id``: the request's ``"id"``, else the one the server generated for its answer; ``null`` when the
  body was never decoded (a request shed before reading it, a malformed body).
* ``members_used`` / ``exit_reason``: as the answer's ``anytime_members_used`` / ``anytime_exit_reason`` (the
  most members any sample used; ``"mixed"`` when a batch's samples exited for different reasons).
* ``shed``: for a 503 under overload, why (see ``anytime_shed_total`` in :mod:`._metrics`).

No tensor data, probabilities, labels or headers are ever written: a line holds the fields above only.
Lines are written on the event loop, each with one ``write`` (the file is line-buffered), so a ``tail -f``
sees every request as it is answered.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO

from edge_runtime.server._errors import ServerConfigError
from edge_runtime.server._metrics import Outcome

__all__ = ["AccessLog"]


class AccessLog:
    """Writes the access log's lines to a file (appended to) or, for ``"-"``, to standard output.

    Args:
        target: a file path, or ``"-"`` for standard output.
        model: the served model's name, written on every line.

    Raises:
        ServerConfigError: the file cannot be opened for appending.
    """

    def __init__(self, target: str, model: str) -> None:
        self.target = target
        self.model = model
        self._own = target != "-"
        if self._own:
            try:
                self._file: IO[str] = open(target, "a", buffering=1, encoding="utf-8")
            except OSError as exc:
                raise ServerConfigError(
                    f"cannot open the access log {target!r} ({exc.strerror}); "
                    "give a writable --access-log path, or '-' for standard output"
                ) from None
        else:
            self._file = sys.stdout

    def write(
        self, status: int, elapsed_ms: float, outcome: Outcome | None, shed: str | None = None, budget_ms: float | None = None
    ) -> None:
        """Write one request's line; ``outcome`` (when its body was decoded) gives the id, budget and exits."""
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        record = {
            "time": stamp,
            "model": self.model,
            "request_id": None if outcome is None else outcome.request_id,
            "status": status,
            "budget_ms": budget_ms if outcome is None else outcome.budget_ms,
            "members_used": None if outcome is None else outcome.members_used,
            "exit_reason": None if outcome is None else outcome.exit_reason,
            "batch": None if outcome is None else outcome.batch,
            "queue_ms": None if outcome is None else round(outcome.queue_ms, 3),
            "elapsed_ms": round(elapsed_ms, 3),
            "shed": shed,
        }
        try:
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
            if not self._own:
                self._file.flush()
        except (OSError, ValueError):  # a full disk or a closed stdout must not fail the request
            pass

    def close(self) -> None:
        """Close the file (standard output stays open); idempotent."""
        if self._own and not self._file.closed:
            self._file.close()
