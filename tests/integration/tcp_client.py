"""Run as a test host: hold one TCP connection to a container's echo service
across a move. Sends a line, waits for GO_FILE to appear, sends another on
the same connection, prints one JSON line with what came back.

usage: python tcp_client.py ADDRESS PORT GO_FILE
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path


def echo(sock: socket.socket, text: str) -> str:
    sock.sendall(text.encode() + b"\n")
    got = b""
    while not got.endswith(b"\n"):
        chunk = sock.recv(100)
        if not chunk:
            break
        got += chunk
    return got.decode().strip()


def main(address: str, port: int, go: Path) -> None:
    sock = socket.create_connection((address, port), timeout=30)
    local = sock.getsockname()
    first = echo(sock, "before the move")
    print(json.dumps({"ready": True}), flush=True)
    deadline = time.monotonic() + 300
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    start = time.monotonic()
    try:
        second = echo(sock, "after the move")
    except OSError as e:
        second = f"error: {e}"
    print(json.dumps({"first": first, "second": second, "local": list(local), "seconds": time.monotonic() - start}),
          flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
