"""Real clients of a system container's services, run from a test host across a move.

``python -m testbed.clients redis ADDRESS --until FILE --out FILE``
holds one TCP connection to Redis and sends ``INCR`` every 10 ms until
FILE exists, then writes one JSON summary: how many replies, whether each
was the previous plus one on the same connection (no reconnect, no lost
or doubled write), and the longest wait for a reply (the pause the client
saw). It speaks RESP itself, so the host needs no Redis packages.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field


@dataclass
class RedisSummary:
    replies: int = 0
    first: int | None = None
    last: int | None = None
    out_of_step: list[tuple[int, int]] = field(default_factory=list)  # (expected, got), first few
    error: str = ""
    max_wait_ms: float = 0.0
    max_wait_at: float = 0.0  # unix time the longest wait ended


def _read_line(sock: socket.socket, buf: bytearray) -> bytes:
    while b"\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\r\n")
    buf[:] = rest
    return line


def redis_incr(address: str, port: int, key: str, until: str, interval: float, timeout: float,
               reply_timeout: float = 30.0, ready: str = "") -> RedisSummary:
    summary = RedisSummary()
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((address, port), timeout=reply_timeout)
        buf = bytearray()
        command = f"*2\r\n$4\r\nINCR\r\n${len(key)}\r\n{key}\r\n".encode()
        while not os.path.exists(until) and time.monotonic() < deadline:
            sent = time.monotonic()
            sock.sendall(command)
            line = _read_line(sock, buf)
            wait_ms = (time.monotonic() - sent) * 1000
            if wait_ms > summary.max_wait_ms:
                summary.max_wait_ms, summary.max_wait_at = round(wait_ms, 1), time.time()
            if not line.startswith(b":"):
                raise ConnectionError(f"unexpected reply {line[:80]!r}")
            value = int(line[1:])
            if summary.last is not None and value != summary.last + 1 and len(summary.out_of_step) < 10:
                summary.out_of_step.append((summary.last + 1, value))
            summary.first = value if summary.first is None else summary.first
            summary.last = value
            summary.replies += 1
            if ready and summary.replies == 1:
                open(ready, "w").close()
            time.sleep(interval)
        sock.close()
    except (OSError, ValueError) as e:
        summary.error = f"{type(e).__name__}: {e}"
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.clients")
    sub = p.add_subparsers(dest="client", required=True)
    r = sub.add_parser("redis", help="INCR a key every 10 ms over one connection")
    r.add_argument("address")
    r.add_argument("--port", type=int, default=6379)
    r.add_argument("--key", default="lxdmig-counter")
    r.add_argument("--interval", type=float, default=0.01)
    r.add_argument("--until", required=True, help="stop once this file exists")
    r.add_argument("--out", required=True, help="write the JSON summary here")
    r.add_argument("--timeout", type=float, default=900.0, help="stop after this many seconds anyway")
    r.add_argument("--reply-timeout", type=float, default=30.0,
                   help="give up when a reply takes longer (the VM's emulation is many times slower)")
    r.add_argument("--ready", default="", help="create this file once the first reply came")
    args = p.parse_args(argv)
    summary = redis_incr(args.address, args.port, args.key, args.until, args.interval, args.timeout,
                         args.reply_timeout, args.ready)
    with open(args.out, "w") as fh:
        json.dump(asdict(summary), fh)
    return 0 if not summary.error else 1


if __name__ == "__main__":
    sys.exit(main())
