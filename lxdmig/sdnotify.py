"""sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET.

Does nothing when the daemon was not started by systemd (no NOTIFY_SOCKET).
Abstract socket names start with '@'. The watchdog interval comes from
WATCHDOG_USEC, honoured only when WATCHDOG_PID is unset or names us.

Written here rather than taken from the ``sdnotify`` package: that one
swallows every send error (this one warns once and stops) and knows
nothing of the watchdog, so the same code would be needed around it; and
python3-systemd needs libsystemd's C bindings for one datagram.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = dict(os.environ if environ is None else environ)
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *lines: str) -> None:
        if not self._address:
            return
        message = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError as e:
            # The supervisor going away must not take the daemon down with it;
            # say so once and stop trying.
            log.warning("sd_notify to %r failed: %s; no more notifications", self._address, e)
            self._address = ""

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def reloading(self) -> None:
        self.notify("RELOADING=1")

    def stopping(self, status: str) -> None:
        self.notify("STOPPING=1", f"STATUS={status}")
