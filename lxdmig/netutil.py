"""Small network helpers."""

from __future__ import annotations

import socket


def free_port(address: str, low: int, high: int) -> int | None:
    """The first port in low..high that ``address`` can bind now, or None."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    for port in range(low, high + 1):
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((address, port))
            except OSError:
                continue
            return port
    return None
