"""File descriptors: use what the system allows, and say so before running out.

Each ingress connection, subscriber connection and the RabbitMQ link is a file descriptor. When
the process runs out, the event loop cannot accept: on uvloop the connection is dropped with no
trace. So the daemon raises its soft limit to the hard one at start, and a watch counts the open
descriptors every second: from `PRESSURE` of the limit on, it logs a warning and the daemon
reports not ready (a load balancer sends traffic elsewhere) until the count falls back.
"""

from __future__ import annotations

import logging
import os
import resource

from bridge.telemetry.logging import Throttle

log = logging.getLogger("bridge")

PRESSURE = 0.9
# Below this the watch says it is fine again (hysteresis, so readiness does not flap).
RELIEF = 0.8
LOG_EVERY = 10.0
_FD_DIR = "/proc/self/fd"


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def open_file_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class DescriptorWatch:
    """`check()` once a second: None while there is room, else why the daemon is not ready."""

    def __init__(self) -> None:
        self.available = os.path.isdir(_FD_DIR)
        self.problem: str | None = None
        self._warn = Throttle(LOG_EVERY)

    def check(self) -> str | None:
        if not self.available:
            return None
        limit = open_file_limit()
        if limit == resource.RLIM_INFINITY or limit <= 0:
            return None
        in_use = len(os.listdir(_FD_DIR))
        if in_use >= limit * PRESSURE or (self.problem is not None and in_use > limit * RELIEF):
            self.problem = f"{in_use} of {limit} file descriptors are in use."
            if self._warn.ready():
                log.warning(
                    "%d of %d file descriptors in use: new connections may fail; reporting "
                    "not ready until fewer than %d are open",
                    in_use,
                    limit,
                    int(limit * RELIEF),
                )
        elif self.problem is not None:
            log.warning("file descriptors back to %d of %d: ready again", in_use, limit)
            self.problem = None
        return self.problem
