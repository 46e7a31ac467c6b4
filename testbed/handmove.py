"""Migrations done by hand, the baselines lxdmig is benchmarked against.

Each step runs *as a test host* (``python -m testbed exec HOST --
python -m testbed.handmove STEP ...``), with the plain tools and
nothing of lxdmig's protocol: a directory streamed as tar over one TCP
connection, ``lxc-checkpoint`` for dump and restore, ``criu lazy-pages``
for post-copy. No TLS, no helper, no rollback: the floor lxdmig's own
overhead is measured against.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tarfile
import time
from pathlib import Path

from lxdmig import criu, proc
from lxdmig.backends.lxc import LxcBackend

_TIMEOUT = 600.0


def send_dir(directory: Path, host: str, port: int, timeout: float = _TIMEOUT) -> int:
    """Stream ``directory`` as tar to ``host:port``; returns bytes sent."""
    deadline = time.monotonic() + 30
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # the receiver is still starting
    with sock, sock.makefile("wb") as out:
        with tarfile.open(fileobj=out, mode="w|") as tar:
            tar.add(directory, arcname=".")
        return tar.offset


def receive_dir(directory: Path, port: int, address: str, timeout: float = _TIMEOUT) -> None:
    """Accept one connection on ``address:port`` and unpack the tar stream into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    with socket.create_server((address, port), reuse_port=True) as server:
        server.settimeout(timeout)
        print("LISTENING", flush=True)
        conn, _ = server.accept()
        conn.settimeout(timeout)
        with conn, conn.makefile("rb") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            # Our own test files: extracted as they are (the filter argument is newer than some 3.11s).
            if hasattr(tarfile, "fully_trusted_filter"):
                tar.extractall(directory, filter="fully_trusted")
            else:
                tar.extractall(directory)


def sink(address: str, port: int, timeout: float = _TIMEOUT) -> int:
    """Accept one connection and read it to the end; returns the bytes read."""
    with socket.create_server((address, port), reuse_port=True) as server:
        server.settimeout(timeout)
        print("LISTENING", flush=True)
        conn, _ = server.accept()
        total = 0
        with conn:
            while chunk := conn.recv(1 << 20):
                total += len(chunk)
        return total


def source(host: str, port: int, mib: int) -> float:
    """Send ``mib`` MiB of zeros to ``host:port`` as fast as TCP goes; returns MB/s."""
    block = bytes(1 << 20)
    with socket.create_connection((host, port), timeout=_TIMEOUT) as sock:
        start = time.monotonic()
        for _ in range(mib):
            sock.sendall(block)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # the sink has read everything when it closes
        return mib * (1 << 20) / (time.monotonic() - start) / 1e6


def lazy_dump(lxcpath: Path, name: str, directory: Path, address: str, port: int) -> int:
    """Dump for post-copy; print READY once the images are written, serve pages until all are fetched."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "hand.conf"
    config.write_text(criu.config_file_text(["--lazy-pages", "--address", address, "--port", str(port)]))
    child = LxcBackend(lxcpath).dump_lazy(name, directory, config_file=config, ready_timeout=_TIMEOUT)
    print("READY", flush=True)
    return child.wait(_TIMEOUT)


def lazy_restore(lxcpath: Path, name: str, directory: Path, address: str, port: int) -> None:
    """Restore with memory from the source's page server (criu lazy-pages beside the restore)."""
    daemon = proc.Child(["criu", "lazy-pages", "--page-server", "--address", address, "--port", str(port),
                         "-D", str(directory), "-o", "lazy-pages.log"], log_file=directory / "lazy-pages.out")
    try:
        deadline = time.monotonic() + 30
        while not (directory / "lazy-pages.socket").exists():  # restore connects to it
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"criu lazy-pages did not start: {daemon.log_tail()}")
            time.sleep(0.01)
        config = directory / "restore.conf"
        config.write_text("lazy-pages\n")
        LxcBackend(lxcpath).restore(name, directory, config_file=config, timeout=_TIMEOUT)
        daemon.wait(_TIMEOUT)  # every page is in
    finally:
        daemon.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.handmove")
    sub = p.add_subparsers(dest="step", required=True)
    s = sub.add_parser("send")
    s.add_argument("directory", type=Path)
    s.add_argument("host")
    s.add_argument("port", type=int)
    r = sub.add_parser("receive")
    r.add_argument("directory", type=Path)
    r.add_argument("address")
    r.add_argument("port", type=int)
    k = sub.add_parser("sink")
    k.add_argument("address")
    k.add_argument("port", type=int)
    o = sub.add_parser("source")
    o.add_argument("host")
    o.add_argument("port", type=int)
    o.add_argument("mib", type=int)
    for step in ("lazy-dump", "lazy-restore"):
        x = sub.add_parser(step)
        x.add_argument("lxcpath", type=Path)
        x.add_argument("name")
        x.add_argument("directory", type=Path)
        x.add_argument("address")
        x.add_argument("port", type=int)
    args = p.parse_args(argv)
    if args.step == "send":
        print(send_dir(args.directory, args.host, args.port))
    elif args.step == "receive":
        receive_dir(args.directory, args.port, args.address)
    elif args.step == "sink":
        print(sink(args.address, args.port))
    elif args.step == "source":
        print(f"{source(args.host, args.port, args.mib):.1f}")
    elif args.step == "lazy-dump":
        return lazy_dump(args.lxcpath, args.name, args.directory, args.address, args.port)
    else:
        lazy_restore(args.lxcpath, args.name, args.directory, args.address, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
