"""systemd's notify protocol (sd_notify), in the standard library: READY, STOPPING, WATCHDOG.

Does nothing when NOTIFY_SOCKET is unset, so the same binary runs under systemd, in a
container or in a terminal.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        if address:
            # An abstract socket is written with a leading '@'.
            self._address = "\0" + address[1:] if address.startswith("@") else address
        self._watchdog_usec = 0
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and (not pid or pid == str(os.getpid())):
            self._watchdog_usec = int(usec)
        self._ready_sent = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, state: str) -> bool:
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self._address)
                sock.sendall(state.encode("utf-8"))
        except OSError:
            return False
        return True

    def ready(self) -> None:
        if not self._ready_sent:
            self._ready_sent = self.send(f"READY=1\nSTATUS=ready\nMAINPID={os.getpid()}")

    def stopping(self) -> None:
        self.send("STOPPING=1\nSTATUS=draining")

    def watchdog(self) -> None:
        if self._watchdog_usec:
            self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Ping at half the watchdog timeout, as sd_watchdog_enabled(3) advises."""
        if not self._watchdog_usec:
            return None
        return self._watchdog_usec / 2_000_000
