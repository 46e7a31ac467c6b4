"""Small network helpers."""

from __future__ import annotations

import socket


def bound_socket(address: str, low: int, high: int) -> socket.socket | None:
    """A TCP socket bound to the first port in low..high that ``address`` can bind now, or None."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    for port in range(low, high + 1):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.bind((address, port))
        except OSError:
            sock.close()
            continue
        return sock
    return None


def free_port(address: str, low: int, high: int) -> int | None:
    """The first port in low..high that ``address`` can bind now, or None (for a program that binds it
    itself; this process keeping the socket is bound_socket)."""
    sock = bound_socket(address, low, high)
    if sock is None:
        return None
    with sock:
        return int(sock.getsockname()[1])
